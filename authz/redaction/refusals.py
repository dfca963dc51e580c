"""An answer refused on its way back, in the protocol's own error shape: a JSON-RPC error for
MCP, an OpenAI or Anthropic error object (JSON) or error event (stream). Never a cut connection:
the client's SDK raises it as an error."""

from __future__ import annotations

from typing import Any

from authz.errors import Deny
from authz.jsontext import dumps_utf8


class Refused(Exception):
    """The answer (or what is left of it) may not reach the client."""

    def __init__(self, reason: str, message: str, entity_types: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason  # redaction.response_blocked, redaction.response_unreadable, ...
        self.message = message
        self.entity_types = entity_types

    @property
    def status(self) -> int:
        return 403 if self.reason == "redaction.response_blocked" else 502


def blocked(types: list[str]) -> Refused:
    return Refused("redaction.response_blocked",
                   f"the answer carried data that may not reach you: {', '.join(types)}", tuple(types))


def unreadable(problem: str) -> Refused:
    return Refused("redaction.response_unreadable",
                   f"the answer could not be scanned ({problem}); it is not passed on unscanned")


def too_large(limit: int) -> Refused:
    return Refused("redaction.response_too_large",
                   f"the answer is larger than the {limit} bytes the sidecar scans; it is not passed on unscanned")


def _data(r: Refused) -> dict[str, Any]:
    out: dict[str, Any] = {"reason": r.reason}
    if r.entity_types:
        out["entity_types"] = list(r.entity_types)
    return out


def jsonrpc_error(r: Refused, jsonrpc_id: Any) -> dict[str, Any]:
    code = -32001 if r.reason == "redaction.response_blocked" else -32603
    return {"jsonrpc": "2.0", "id": jsonrpc_id, "error": {"code": code, "message": r.message, "data": _data(r)}}


def openai_error(r: Refused) -> dict[str, Any]:
    kind = "permission_error" if r.status == 403 else "server_error"
    return {"error": {"message": r.message, "type": kind, "param": None, "code": r.reason, **_data(r)}}


def anthropic_error(r: Refused) -> dict[str, Any]:
    kind = "permission_error" if r.status == 403 else "api_error"
    return {"type": "error", "error": {"type": kind, "message": r.message, **_data(r)}}


def json_body(r: Refused, protocol: str, jsonrpc_id: Any) -> bytes:
    """The whole answer replaced by the refusal (a JSON answer)."""
    if protocol == "mcp":
        return dumps_utf8(jsonrpc_error(r, jsonrpc_id))
    if protocol == "messages":
        return dumps_utf8(anthropic_error(r))
    return dumps_utf8(openai_error(r))


def sse_event(r: Refused, protocol: str, jsonrpc_id: Any, eol: str = "\n") -> bytes:
    """The event that ends a stream with the refusal."""
    if protocol == "mcp":
        head, payload = "event: message", jsonrpc_error(r, jsonrpc_id)
    elif protocol == "messages":
        head, payload = "event: error", anthropic_error(r)
    elif protocol == "responses":
        # The Responses API's error event; the "error" member is what the openai SDK raises on.
        err = openai_error(r)["error"]
        head, payload = "event: error", {"type": "error", "code": r.reason, "message": r.message,
                                          "param": None, "error": err}
    else:  # chat/completions: a data-only event carrying the error object
        head, payload = "", openai_error(r)
    lines = ([head] if head else []) + ["data: " + dumps_utf8(payload).decode()]
    return (eol.join(lines) + eol + eol).encode()


class AnswerRefused(Deny):
    """An answer refused before its headers went out: Envoy answers with this instead."""

    def __init__(self, r: Refused, protocol: str, jsonrpc_id: Any) -> None:
        super().__init__(r.message, reason=r.reason, status=r.status)
        self.body = json_body(r, protocol, jsonrpc_id)
