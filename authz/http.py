"""The sidecar's HTTP port: metrics, health, and the documents it publishes."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from authz.audit.heads import heads_document
from authz.identity.metadata import protected_resource_metadata
from authz.runtime import Runtime
from authz.signin.server import SigninServer

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


async def resource_metadata(request: web.Request) -> web.Response:
    """RFC 9728 protected-resource metadata (Envoy routes the well-known path here)."""
    doc = protected_resource_metadata(request.app[RUNTIME].config.identity, request.path)
    if doc is None:
        return web.json_response({"error": "not_found", "message": "no protected resource is "
                                  "configured for this path (identity.resource)"}, status=404)
    return web.json_response(doc, headers={"cache-control": "public, max-age=300"})


async def jwks(request: web.Request) -> web.Response:
    """Public keys of the gateway-signed identity assertions (and of audit checkpoints)."""
    keyring = request.app[RUNTIME].shared.keyring
    logs = request.app[RUNTIME].shared.audit_logs
    keys = list(keyring.jwks().get("keys", [])) + [k for log in logs for k in log.jwks()]
    for extra in request.app[EXTRA_JWKS]:
        keys.extend(extra().get("keys", []))
    return web.json_response({"keys": keys}, headers={"cache-control": "public, max-age=60"})


async def audit_head(request: web.Request) -> web.Response:
    """The latest signed checkpoint of each audit chain this process writes (``verify --head``)."""
    logs = request.app[RUNTIME].shared.audit_logs
    return web.json_response(heads_document(log.head for log in logs), headers={"cache-control": "no-store"})


EXTRA_JWKS = web.AppKey("extra_jwks", list)


def build_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/.well-known/oauth-protected-resource", resource_metadata)
    app.router.add_get("/.well-known/oauth-protected-resource/{tail:.*}", resource_metadata)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/audit/head", audit_head)
    app[EXTRA_JWKS] = []
    SigninServer(lambda: (runtime.config, runtime.current.store),  # type: ignore[union-attr]
                 keys=runtime.shared.signin_keys, audit_logs=runtime.shared.audit_logs).install(app)
    return app
