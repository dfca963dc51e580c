"""The sidecar's HTTP port: metrics, health, and the documents it publishes."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from authz.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)


async def healthz(request: web.Request) -> web.Response:
    # Liveness: the event loop answered. Dependencies belong to readiness, not liveness, or a
    # Redis outage would make Kubernetes restart every replica at once.
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    ready, components = request.app[RUNTIME].readiness()
    return web.json_response({"ready": ready, "components": components},
                             status=200 if ready else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
