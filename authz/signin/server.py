"""The authorization server's endpoints on the sidecar's HTTP port (Envoy routes them there).

``/.well-known/oauth-authorization-server`` (RFC 8414), ``/oauth/authorize``, ``/oauth/callback``
(back from the upstream), ``/oauth/consent`` (the consent form's answer), ``/oauth/token``,
``/oauth/register`` (RFC 7591), ``/oauth/revoke`` (RFC 7009) and ``/oauth/jwks.json``.

Each handler reads the config in force and the store once, does its checks in the order the RFCs
give, and lets typed errors (``authz.signin.errors``) out; ``answers.py`` turns them into the
OAuth answer of that endpoint: JSON at the token, registration and revocation endpoints, a
redirect back to the client with ``error``, ``state`` and ``iss`` at the authorization
endpoint once the client and its redirect URI are verified, and an error page before that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from authz.audit.log import AuditLog
from authz.identity.assertion import KeyRing
from authz.signin import answers, authorization, registration, token
from authz.signin.config import SigninConfig
from authz.signin.context import InForce, Parts
from authz.signin.errors import ServerError
from authz.signin.params import OFFLINE
from authz.signin.state import SigninState
from authz.store.base import Store

if TYPE_CHECKING:  # the whole config, for annotations only: authz.config imports this package's section
    from authz.config import Config

log = logging.getLogger("authz.signin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Endpoint = Callable[[web.Request, InForce], Awaitable[web.StreamResponse]]

# Browser-based MCP clients call these from their own origin (no cookies are involved, so any
# origin may); the pages and the authorization endpoint are navigations, not fetches.
CORS_PATHS = ("/.well-known/oauth-authorization-server", "/oauth/token", "/oauth/register", "/oauth/revoke",
              "/oauth/jwks.json")
CORS_HEADERS = {"access-control-allow-origin": "*", "access-control-allow-methods": "GET, POST, OPTIONS",
                "access-control-allow-headers": "authorization, content-type, mcp-protocol-version",
                "access-control-max-age": "86400"}


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=CORS_HEADERS)


async def cross_origin(request: web.Request, response: web.StreamResponse) -> None:
    if request.path in CORS_PATHS:
        response.headers["access-control-allow-origin"] = "*"


def guarded(handler: Handler, *, page: bool) -> Handler:
    """A bug in a handler still answers in the endpoint's protocol (``server_error``, RFC 6749
    §4.1.2.1 / §5.2), as a page or as JSON, and is logged; it is never a bare 500."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("sign-in endpoint %s failed", request.path)
            error = ServerError("the authorization server failed; try again")
            return answers.error_page(error) if page else answers.json_error(error)

    return run


class SigninServer:
    """Routes the endpoints; reads the config in force and the store once per request."""

    def __init__(self, current: Callable[[], tuple[Config, Store]], *, keys: KeyRing,
                 audit_logs: Iterable[AuditLog] = (), clock: Callable[[], float] = time.time) -> None:
        self._current = current
        self._keys = keys  # the runtime's: the pipeline build installs the config's keys into it
        self._audit_logs = audit_logs  # the runtime's writers: events go into the audit chain
        self._clock = clock
        self._parts: Parts | None = None

    def _in_force(self) -> InForce:
        config, store = self._current()
        cfg = config.signin
        if not cfg.enabled:
            raise web.HTTPNotFound(text=json.dumps({"error": "not_found", "error_description":
                                                    "the authorization server is not enabled (signin.enabled)"}),
                                   content_type="application/json")
        if self._parts is None or self._parts.cfg != cfg:
            old, self._parts = self._parts, Parts(cfg)
            if old is not None:
                # In-flight requests may still hold it; its sessions close after they are done.
                asyncio.get_running_loop().call_later(30, lambda: asyncio.ensure_future(old.close()))
        state = SigninState(store, clock=self._clock, audit_logs=self._audit_logs)
        return InForce(config, cfg, self._parts, state, self._keys)

    def _endpoint(self, endpoint: Endpoint, *, page: bool) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await endpoint(request, self._in_force())
        return guarded(handle, page=page)

    async def close(self) -> None:
        if self._parts is not None:
            await self._parts.close()

    def install(self, app: web.Application) -> None:
        app.router.add_get("/.well-known/oauth-authorization-server", self._endpoint(metadata, page=False))
        app.router.add_get("/oauth/authorize", self._endpoint(authorization.authorize, page=True))
        app.router.add_get("/oauth/callback", self._endpoint(authorization.callback, page=True))
        app.router.add_post("/oauth/consent", self._endpoint(authorization.consent, page=True))
        app.router.add_post("/oauth/token", self._endpoint(token.token, page=False))
        app.router.add_post("/oauth/register", self._endpoint(registration.register, page=False))
        app.router.add_post("/oauth/revoke", self._endpoint(token.revoke, page=False))
        app.router.add_get("/oauth/jwks.json", self._endpoint(jwks, page=False))
        for path in CORS_PATHS:
            app.router.add_route("OPTIONS", path, preflight)
        app.on_response_prepare.append(cross_origin)
        app.on_cleanup.append(lambda _app: self.close())


async def metadata(request: web.Request, now: InForce) -> web.Response:
    return web.json_response(authorization_server_metadata(now.cfg), headers={"cache-control": "public, max-age=300"})


async def jwks(request: web.Request, now: InForce) -> web.Response:
    return web.json_response(now.keys.jwks(), headers={"cache-control": "public, max-age=60"})


def authorization_server_metadata(cfg: SigninConfig) -> dict[str, Any]:
    base = cfg.issuer
    methods = ["none", "client_secret_post", "client_secret_basic"]
    doc: dict[str, Any] = {
        "issuer": base,
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "jwks_uri": f"{base}/oauth/jwks.json",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": cfg.client_metadata_documents.enabled,
    }
    if cfg.registration.enabled:
        doc["registration_endpoint"] = f"{base}/oauth/register"
    if cfg.scopes_supported:
        doc["scopes_supported"] = [*cfg.scopes_supported, OFFLINE]
    return doc
