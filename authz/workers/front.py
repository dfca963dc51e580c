"""The supervisor's HTTP port: one readiness, one ``/metrics``, every worker's keys and audit
heads; anything else (metadata documents, sign-in pages) is answered by a live worker."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from authz.workers import merge
from authz.workers.plan import socket_session

HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "host",
                         "content-length", "proxy-connection", "te", "trailer"})
# The address the front accepted the request from, for the worker to use as the request's
# peer (sign-in reads it). Set by the front on every request, a client's own value replaced; the
# worker's socket is reachable only by the supervisor and the other workers.
PEER_HEADER = "x-authz-front-peer"


@web.middleware
async def trust_front_peer(request: web.Request, handler: Any) -> web.StreamResponse:
    """In a worker: the request's peer is the one the front saw."""
    peer = request.headers.get(PEER_HEADER)
    if peer is not None:
        request = request.clone(remote=peer)
    response: web.StreamResponse = await handler(request)
    return response


class Front:
    def __init__(self, sockets: dict[int, Path], alive: Callable[[int], bool],
                 pid: Callable[[int], int | None]) -> None:
        self.sockets = sockets
        self.alive = alive
        self.pid = pid
        self.registry = CollectorRegistry()
        self.restarts = Counter("authz_worker_restarts_total", "Workers that died and were started "
                                "again, per worker.", ["worker"], registry=self.registry)
        self.workers_up = Gauge("authz_workers_up", "Workers running (of server.workers).",
                                registry=self.registry)
        self.workers_up.set_function(lambda: sum(1 for i in self.sockets if self.alive(i)))
        for i in sockets:
            self.restarts.labels(worker=str(i))
        self._last: dict[int, dict[str, merge.Family]] = {}
        self._retired: dict[str, merge.Family] = {}
        self._sessions: dict[int, aiohttp.ClientSession] = {}
        self._turn = itertools.cycle(sorted(sockets))

    def retire(self, index: int) -> None:
        """Worker ``index`` died: keep what it had counted (its last scrape) in the sums."""
        self.restarts.labels(worker=str(index)).inc()
        last = self._last.pop(index, None)
        if last is not None:
            self._retired = merge.merge([self._retired, merge.counting_only(last)])

    def _session(self, index: int) -> aiohttp.ClientSession:
        s = self._sessions.get(index)
        if s is None or s.closed:
            s = self._sessions[index] = socket_session(self.sockets[index], timeout=5, decompress=False)
        return s

    async def _get(self, index: int, path: str) -> tuple[int, bytes] | None:
        if not self.alive(index):
            return None
        try:
            async with self._session(index).get(f"http://worker{path}") as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def _all(self, path: str) -> dict[int, tuple[int, bytes] | None]:
        indexes = sorted(self.sockets)
        answers = await asyncio.gather(*(self._get(i, path) for i in indexes))
        return dict(zip(indexes, answers, strict=True))

    # --- routes -------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        answers = await self._all("/readyz")
        workers: list[dict[str, Any]] = []
        components: dict[str, dict[str, Any]] = {}
        ready = True
        for i, answer in answers.items():
            doc: dict[str, Any] = {}
            if answer is not None:
                try:
                    doc = json.loads(answer[1])
                except ValueError:
                    doc = {}
            ok = bool(doc.get("ready"))
            ready = ready and ok
            workers.append({"worker": i, "pid": self.pid(i), "ready": ok, "alive": answer is not None})
            for name, state in (doc.get("components") or {}).items():
                # One view of each component: a worker that finds it unhealthy speaks for all.
                if name not in components or (components[name].get("ok") and not state.get("ok")):
                    components[name] = state
        components["workers"] = {"ok": ready, "workers": workers}
        return web.json_response({"ready": ready, "components": components}, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        answers = await self._all("/metrics")
        parts = [self._retired]
        for i, answer in answers.items():
            if answer is not None and answer[0] == 200:
                self._last[i] = merge.parse(answer[1].decode())
                parts.append(self._last[i])
        text = merge.render(merge.merge(parts)) + generate_latest(self.registry).decode()
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def jwks(self, request: web.Request) -> web.Response:
        keys: dict[str, Any] = {}
        for answer in (await self._all("/.well-known/jwks.json")).values():
            if answer is not None and answer[0] == 200:
                for key in json.loads(answer[1]).get("keys", []):
                    keys.setdefault(key.get("kid") or json.dumps(key, sort_keys=True), key)
        return web.json_response({"keys": list(keys.values())}, headers={"cache-control": "public, max-age=60"})

    async def audit_head(self, request: web.Request) -> web.Response:
        heads: list[Any] = []
        for answer in (await self._all("/audit/head")).values():
            if answer is not None and answer[0] == 200:
                heads.extend(json.loads(answer[1]).get("heads", []))
        return web.json_response({"heads": heads}, headers={"cache-control": "no-store"})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        """Anything else, answered by one live worker (in turn)."""
        if request.path.startswith("/internal/"):  # workers hand entries to each other there only
            raise web.HTTPNotFound()
        body = await request.read()
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in HOP_HEADERS and k.lower() != PEER_HEADER)
        headers["host"] = request.host
        headers[PEER_HEADER] = request.remote or ""
        for _ in range(len(self.sockets)):
            index = next(self._turn)
            if not self.alive(index):
                continue
            try:
                async with self._session(index).request(request.method, f"http://worker{request.path_qs}",
                                                        headers=headers, data=body,
                                                        allow_redirects=False) as resp:
                    data = await resp.read()
                    out = [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS]
                    response = web.Response(status=resp.status, body=data)
                    for k, v in out:
                        response.headers.add(k, v)
                    return response
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
        return web.json_response({"error": "unavailable", "message": "no worker is running"}, status=503)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/.well-known/jwks.json", self.jwks)
        app.router.add_get("/audit/head", self.audit_head)
        app.router.add_route("*", "/{tail:.*}", self.proxy)
        return app

    async def close(self) -> None:
        for s in self._sessions.values():
            await s.close()
