"""The one place a denial becomes an HTTP answer: status, headers and a body in the caller's own
protocol.

Both adapters (``Check`` and ``Process``) call ``render_denial`` with what the request is (its
protocol and action, from the one reading of it); the same ``reason`` string goes into the
``x-authz-reason`` header, the body, the decision log and the metric label. The body is shaped
so the caller's SDK can read it:

- **llm**, ``/v1/messages`` (Anthropic): ``{"type": "error", "error": {"type", "message"}}``
  (the stable reason is also under ``error.code``);
- **llm**, any other model API (OpenAI and compatible):
  ``{"error": {"message", "type", "code", "param"}}`` with the reason as ``code``;
- **mcp** (and any refusal that names a JSON-RPC id): a JSON-RPC error carrying the id exactly
  as sent, our fields under ``error.data``;
- anything else: ``{"error": <reason>, "message": ..., "request_id": ...}``.
"""

from __future__ import annotations

import dataclasses
import json

from authz.errors import Answer, Deny
from authz.model import Action, Request

REASON_HEADER = "x-authz-reason"
REQUEST_ID_HEADER = "x-request-id"

# The error ``type`` both model APIs use for a status (they agree on these names).
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 415: "invalid_request_error",
                429: "rate_limit_error", 503: "overloaded_error"}

# JSON-RPC error codes for MCP refusals that name none of their own.
_JSONRPC_CODES = {400: -32600, 401: -32001, 403: -32001, 413: -32600, 415: -32600, 429: -32001}


@dataclasses.dataclass(frozen=True, slots=True)
class Denial:
    status: int
    headers: dict[str, str]
    body: bytes


def render_denial(deny: Deny, request: Request | None, *, protocol: str = "",
                  action: Action | None = None) -> Denial:
    """The answer refusing ``request``. ``protocol`` is the one its path speaks ("mcp", "llm",
    "http"; "" when unknown) and ``action`` what it is about, when it could be read."""
    headers = {"content-type": "application/json", "cache-control": "no-store",
               REASON_HEADER: deny.reason}
    if request is not None and request.id:
        # The client can quote it; and Process, which sees only the response of a request Check
        # refused, joins its outcome record to the decision by it.
        headers[REQUEST_ID_HEADER] = request.id
    headers.update({k.lower(): v for k, v in deny.headers.items()})
    if isinstance(deny, Answer):
        return Denial(status=deny.status, headers=headers, body=_json(deny.details))
    if deny.body is not None:  # already in the caller's protocol (a refusal of an answer on its way back)
        return Denial(status=deny.status, headers=headers, body=deny.body)
    return Denial(status=deny.status, headers=headers,
                  body=_json(_payload(deny, request, protocol, action)))


def _payload(deny: Deny, request: Request | None, protocol: str, action: Action | None) -> object:
    ours: dict[str, object] = {"error": deny.reason, "message": deny.message}
    if request is not None and request.id:
        ours["request_id"] = request.id
    for key, value in deny.details.items():
        if key not in ("jsonrpc_id", "jsonrpc_code"):
            ours.setdefault(key, value)
    if "jsonrpc_id" in deny.details or protocol == "mcp":
        return _jsonrpc(deny, action, ours)
    if protocol == "llm":
        # Our own fields (request_id, approval_id, ...) ride inside the error object, where the
        # SDKs keep whatever they do not know.
        extra = {k: v for k, v in ours.items() if k not in ("error", "message")}
        error: dict[str, object] = {"type": _error_type(deny.status), "message": deny.message,
                                    "code": deny.reason}
        if _anthropic(request, action):
            return {"type": "error", "error": {**extra, **error}}
        return {"error": {**extra, **error, "param": None}}
    return ours


def _jsonrpc(deny: Deny, action: Action | None, data: dict[str, object]) -> object:
    """MCP clients parse JSON-RPC errors: the id comes back as sent (null when it could not be
    read), our fields under ``error.data``."""
    if "jsonrpc_id" in deny.details:
        jsonrpc_id = deny.details["jsonrpc_id"]
    else:
        jsonrpc_id = action.jsonrpc_id if action is not None and action.protocol == "mcp" else None
    code = deny.details.get("jsonrpc_code", _JSONRPC_CODES.get(deny.status, -32603))
    return {"jsonrpc": "2.0", "id": jsonrpc_id,
            "error": {"code": code, "message": deny.message, "data": data}}


def _anthropic(request: Request | None, action: Action | None) -> bool:
    """Whether the refused call targets Anthropic's messages API (by what it was read as, or by
    its path when its body could not be read)."""
    if action is not None and action.protocol == "llm":
        return action.kind == "messages"
    return request is not None and request.path_only.rstrip("/") == "/v1/messages"


def _error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error")


def _json(value: object) -> bytes:
    """Compact JSON with non-ASCII written as itself: a JSON-RPC id comes back byte for byte as
    the client wrote it (ids holding a surrogate escape are refused where the body is read)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"), default=str).encode("ascii")
