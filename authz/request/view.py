"""The one reading of a request: built once at the start of ``Check``, read by every stage.

The protocol of a path (``policy.protocols``: mcp, llm, or plain http) alone decides how its body
is read; what the client says about its body (Content-Type, header case, two labels) never
switches a parser off:

- **mcp**: a POST body must be labelled JSON (``application/json`` or ``*/*+json``, one label),
  as the MCP transport requires; any other label, none, or two are refused with 415
  ``mcp.unsupported_media_type``. The body is then read as strict JSON.
- **llm** (the model APIs of ``LLM_APIS``): the body is read as strict JSON whatever its label,
  as model APIs do. A POST to any other path of an llm route is refused (``llm.unknown_api``:
  nothing would check its model or meter it) unless the route lists it in ``unmetered_paths``;
  those, and ``/v1/models``, are read as plain bodies.
- **plain http**: JSON when the body is JSON (whatever its label), else the form or multipart
  its label names, else text.

A body with a ``Content-Encoding`` other than identity is never read: on mcp and llm paths it is
refused (415 ``body.encoded``); on plain paths it is marked ``encoded``, and a stage that must
read it (redaction) refuses it. A malformed body does not fail the reading itself: the problem
is kept on the view and raised by the first stage that needs what the request is about
(policy), after identity, so an anonymous caller is asked to sign in first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from authz.errors import BadRequest, Deny, PayloadTooLarge, UnsupportedMediaType
from authz.patterns import Glob, host_without_port
from authz.request.action import Action, http_action, jsonrpc_error, llm_action, llm_api, mcp_action
from authz.request.body import (
    NO_BODY,
    Body,
    content_encoded,
    is_json_media,
    media_type,
    read_json,
    read_plain,
)
from authz.request.http import Request


class Route(Protocol):
    """A ``policy.protocols`` entry (``authz.request.config.ProtocolRoute``)."""

    @property
    def paths(self) -> tuple[str, ...]: ...
    @property
    def hosts(self) -> tuple[str, ...]: ...
    @property
    def protocol(self) -> str: ...
    @property
    def unmetered_paths(self) -> tuple[str, ...]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class DefaultRoute:
    paths: tuple[str, ...]
    protocol: str
    hosts: tuple[str, ...] = ()
    unmetered_paths: tuple[str, ...] = ()


# What ``policy.protocols`` says when the config says nothing.
DEFAULT_ROUTES = (DefaultRoute(("/mcp", "/mcp/*"), "mcp"), DefaultRoute(("/v1/*",), "llm"))


@dataclasses.dataclass(slots=True)
class RequestView:
    """A request, what it is about, and its body as read once."""

    request: Request
    protocol: str          # "mcp" | "llm" | "http"
    action: Action
    body: Body
    problem: Deny | None = None  # why the request cannot be read; raised by the policy stage


class Reader:
    """Reads requests by the protocol routes of the config (compiled once)."""

    def __init__(self, protocols: Sequence[Route] = DEFAULT_ROUTES) -> None:
        self._protocols = tuple((Glob(p.paths), Glob(p.hosts, ignore_case=True), p.protocol,
                                 Glob(p.unmetered_paths)) for p in protocols)

    def _route(self, request: Request) -> tuple[str, Glob | None]:
        path = request.path_only
        host = host_without_port(request.host).lower()
        for paths, hosts, protocol, unmetered in self._protocols:
            if paths(path) and (not hosts or hosts(host)):
                return protocol, unmetered
        return "http", None

    def protocol_of(self, request: Request) -> str:
        return self._route(request)[0]

    def read(self, request: Request) -> RequestView:
        protocol, unmetered = self._route(request)
        try:
            if protocol == "mcp":
                return _read_mcp(request)
            if protocol == "llm":
                return _read_llm(request, unmetered)
            return RequestView(request, "http", http_action(request), _plain_body(request))
        except Deny as problem:
            return RequestView(request, protocol, http_action(request),
                               Body("unreadable", request.body, problem=problem.reason), problem)


def _plain_body(request: Request) -> Body:
    if not request.body:
        return NO_BODY
    if request.body_truncated:
        return Body("unreadable", request.body, problem="body.truncated")
    if content_encoded(request.header_values("content-encoding")):
        return Body("encoded", request.body, problem="body.encoded")
    labels = request.header_values("content-type")
    return read_plain(request.body, media_type(labels), ",".join(labels))


def _truncated(what: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"the {what} is larger than the sidecar inspects; it cannot be authorized",
                           reason="body.truncated")


def _encoded(request: Request) -> UnsupportedMediaType | None:
    encodings = request.header_values("content-encoding")
    if not content_encoded(encodings):
        return None
    return UnsupportedMediaType(
        f"a body with Content-Encoding {', '.join(encodings)} cannot be inspected on this path; "
        "send it unencoded", reason="body.encoded")


def _read_mcp(request: Request) -> RequestView:
    method = request.method.upper()
    if method != "POST":  # GET: the server's message stream; DELETE: the end of a session
        return RequestView(request, "mcp", Action(protocol="mcp", kind=f"http.{method.lower()}"),
                           _plain_body(request))
    if request.body_truncated:
        raise _truncated("MCP message")
    encoded = _encoded(request)
    if encoded is not None:
        encoded.details.update(jsonrpc_id=None, jsonrpc_code=-32600)
        raise encoded
    labels = request.header_values("content-type")
    if not is_json_media(media_type(labels)):
        label = " and ".join(repr(v) for v in labels) if labels else "none"
        raise UnsupportedMediaType(
            f"an MCP message must be sent as Content-Type: application/json (got {label})",
            reason="mcp.unsupported_media_type", details={"jsonrpc_id": None, "jsonrpc_code": -32600})
    if not request.body:
        raise jsonrpc_error("an MCP POST needs a JSON-RPC body", "mcp.empty_body")
    try:
        body = read_json(request.body)
    except ValueError as exc:
        raise jsonrpc_error(f"body is not valid JSON: {exc}", "mcp.invalid_json", code=-32700) from None
    return RequestView(request, "mcp", mcp_action(request, body.document), body)


def _read_llm(request: Request, unmetered: Glob | None = None) -> RequestView:
    api = llm_api(request)
    if (api == "other" and request.method.upper() == "POST"
            and not (unmetered is not None and unmetered(request.path_only))):
        raise BadRequest(f"{request.path_only} is not an LLM API this gateway knows: its model "
                         "could not be checked nor its usage metered", reason="llm.unknown_api")
    if request.method.upper() != "POST" or api in ("models", "other"):
        return RequestView(request, "llm", Action(protocol="llm", kind=api), _plain_body(request))
    if request.body_truncated:
        raise _truncated("request body")
    encoded = _encoded(request)
    if encoded is not None:
        raise encoded
    try:
        body = read_json(request.body)
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", reason="llm.invalid_json") from None
    return RequestView(request, "llm", llm_action(api, body.document), body)
