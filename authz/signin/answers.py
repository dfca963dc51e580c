"""The one place OAuth errors and grants become HTTP answers."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web

from authz.signin.errors import OAuthError
from authz.signin.pages import PAGE_HEADERS
from authz.signin.pages import error_page as render_error_page

NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def json_error(exc: OAuthError) -> web.Response:
    """RFC 6749 §5.2 (token, revocation), RFC 7591 §3.2.2 (registration)."""
    return web.json_response({"error": exc.error, "error_description": exc.description}, status=exc.status,
                             headers={**NO_STORE, **exc.headers})


def token_response(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, headers=NO_STORE)


def redirect(uri: str, params: dict[str, str | None]) -> web.Response:
    """Back to the client's (verified) redirect URI, its own query kept, ours appended."""
    parts = urlsplit(uri)
    ours = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{ours}" if parts.query else ours
    location = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    return web.Response(status=302, headers={"location": location, **NO_STORE})


def redirect_error(uri: str, exc: OAuthError, *, state: str | None, issuer: str) -> web.Response:
    """RFC 6749 §4.1.2.1 with RFC 9207's ``iss``."""
    return redirect(uri, {"error": exc.error, "error_description": exc.description, "state": state,
                          "iss": issuer})


def page(html: str, status: int = 200, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=html, headers=headers or PAGE_HEADERS)


def error_page(exc: OAuthError, *, status: int | None = None) -> web.Response:
    """For a request that cannot be sent back to the client (unknown client, unregistered
    redirect URI, a sign-in that expired): never a redirect."""
    status = status or (exc.status if exc.status >= 500 or exc.status == 429 else 400)
    return page(render_error_page(exc.error, exc.description), status, headers={**PAGE_HEADERS, **exc.headers})
