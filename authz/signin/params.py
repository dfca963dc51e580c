"""Reading OAuth request parameters: once, strictly, with the error the RFCs name."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web

from authz.signin.config import SigninConfig, check_scope_token
from authz.signin.errors import InvalidClient, InvalidRequest, InvalidScope, InvalidTarget
from authz.signin.keys import resources

if TYPE_CHECKING:  # the whole config, for annotations only: authz.config imports this package's section
    from authz.config import Config

OFFLINE = "offline_access"


def peer_address(request: web.Request) -> str:
    """The client's address as Envoy saw it. Envoy (use_remote_address) appends the peer it
    accepted the connection from to x-forwarded-for, so its last entry is Envoy's own word; a
    request that did not come through a local Envoy is counted by its own peer."""
    remote = request.remote or ""
    forwarded = request.headers.getall("x-forwarded-for", [])
    if forwarded and remote in ("127.0.0.1", "::1"):
        return forwarded[-1].rsplit(",", 1)[-1].strip()[:64]
    return remote


MAX_PARAMETER_CHARS = 4096  # a state, a scope list, a URL: all fit; what is kept in the store stays small


def single_values(params: Any) -> dict[str, str]:
    """Request parameters; one that appears twice is refused (RFC 6749 §3.1), and so is one
    longer than ``MAX_PARAMETER_CHARS``."""
    out: dict[str, str] = {}
    for key in params:
        values = params.getall(key)
        if len(values) > 1:
            raise InvalidRequest(f"{key[:64]} appears more than once")
        if not isinstance(values[0], str):
            raise InvalidRequest(f"{key[:64]} must be a plain value")
        if len(values[0]) > MAX_PARAMETER_CHARS or len(key) > 64:
            raise InvalidRequest(f"{key[:64]} is longer than {MAX_PARAMETER_CHARS} characters")
        out[key] = values[0]
    return out


async def read_form(request: web.Request) -> Any:
    if request.content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("send the parameters as application/x-www-form-urlencoded")
    try:
        return await request.post()
    except (ValueError, web.HTTPException):
        raise InvalidRequest("the form could not be read") from None


def basic_credentials(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return "", ""
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidClient("malformed HTTP Basic credentials") from None
    client_id, sep, secret = raw.partition(":")
    if not sep:
        raise InvalidClient("malformed HTTP Basic credentials")
    return unquote(client_id), unquote(secret)


def requested_resource(value: str | None, cfg: SigninConfig, config: Config) -> str:
    if not value:
        raise InvalidTarget("resource is required (RFC 8707): the URL of the MCP server")
    if value not in resources(cfg, config.identity):
        raise InvalidTarget("resource is not served by this authorization server")
    return value


def scope_list(value: str) -> list[str]:
    try:
        return sorted({check_scope_token(s) for s in value.split()})
    except ValueError as exc:
        raise InvalidScope(str(exc)) from None


def requested_scopes(value: str | None, cfg: SigninConfig, client: dict[str, Any]) -> list[str]:
    asked = scope_list(value or client.get("scope", ""))
    if cfg.scopes_supported:
        unknown = set(asked) - set(cfg.scopes_supported) - {OFFLINE}
        if unknown:
            raise InvalidScope(f"unknown scope {sorted(unknown)[0]!r}")
    return asked
