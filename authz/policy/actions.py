"""What a request is about: an MCP JSON-RPC call, an LLM API call, or plain HTTP.

Parsing happens once in ``Check`` (Envoy sends the body with ``with_request_body``); the result
is an ``Action`` that policy, limits, routing and audit all read.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any

from authz.errors import BadRequest, PayloadTooLarge
from authz.jsontext import has_unpaired_surrogate
from authz.model import Request

MAX_JSON_DEPTH = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    protocol: str                 # "http" | "mcp" | "llm"
    kind: str                     # mcp: JSON-RPC method; llm: api name; http: the HTTP method
    name: str | None = None       # tool / prompt name, resource URI
    model: str | None = None
    jsonrpc_id: Any = None
    stream: bool = False
    notification: bool = False

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol, "kind": self.kind}
        if self.name is not None:
            out["name"] = self.name
        if self.model is not None:
            out["model"] = self.model
        return out


LLM_APIS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
}


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a decoded JSON ``value`` nests deeper than ``limit`` (iterative: never recurses)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # C-fast; a duplicate shows as fewer keys than pairs
    if len(out) != len(pairs):
        counts = collections.Counter(k for k, _ in pairs)
        raise ValueError(f"duplicate key {next(k for k, n in counts.items() if n > 1)!r}")
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's decoder takes NaN and Infinity; JSON does not


# Built once: json.loads(..., object_pairs_hook=...) builds a new decoder on every call.
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys (two parsers reading two different ``name``s is
    how a policy is bypassed), no NaN or Infinity, bounded nesting, no unpaired surrogate
    escape (a string no UTF-8 encoder can write: the audit log, a rewritten body). Raises
    ``ValueError``."""
    try:
        text = body.decode("utf-8")
        value = _STRICT_DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    # Nesting deeper than the limit needs more brackets than the limit: skip the walk otherwise.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and too_deep(value):
        raise ValueError("JSON nested too deeply")
    if has_unpaired_surrogate(text, value):
        raise ValueError("JSON holds an unpaired surrogate escape (\\uD800-\\uDFFF), which is not Unicode")
    return value


def _jsonrpc_error(message: str, reason: str, jsonrpc_id: Any = None, code: int = -32600) -> BadRequest:
    return BadRequest(message, reason=reason, details={"jsonrpc_id": jsonrpc_id, "jsonrpc_code": code})


def mcp_action(request: Request) -> Action:
    method = request.method.upper()
    if method in ("GET", "DELETE"):  # SSE stream for server messages; session termination
        return Action(protocol="mcp", kind=f"http.{method.lower()}")
    if method != "POST":
        return Action(protocol="mcp", kind=f"http.{method.lower()}")
    if request.body_truncated:
        raise PayloadTooLarge("the MCP message is larger than the sidecar inspects; it cannot be "
                              "authorized", reason="body.truncated")
    if not request.body:
        raise _jsonrpc_error("an MCP POST needs a JSON-RPC body", "mcp.empty_body", code=-32600)
    try:
        msg = parse_json(request.body)
    except ValueError as exc:
        raise _jsonrpc_error(f"body is not valid JSON: {exc}", "mcp.invalid_json", code=-32700) from None
    if isinstance(msg, list):
        raise _jsonrpc_error("JSON-RPC batches are not supported (removed in MCP 2025-06-18)",
                             "mcp.batch_unsupported")
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        raise _jsonrpc_error('not a JSON-RPC 2.0 message (expected "jsonrpc": "2.0")',
                             "mcp.invalid_jsonrpc")
    jsonrpc_id = msg.get("id")
    if (jsonrpc_id is not None and not isinstance(jsonrpc_id, str | int)) or isinstance(jsonrpc_id, bool):
        raise _jsonrpc_error("JSON-RPC id must be a string or an integer", "mcp.invalid_jsonrpc")
    mcp_method = msg.get("method")
    if mcp_method is None:
        if "result" in msg or "error" in msg:  # a response to a server-initiated request
            return Action(protocol="mcp", kind="response", jsonrpc_id=jsonrpc_id)
        raise _jsonrpc_error("JSON-RPC message has no method", "mcp.invalid_jsonrpc", jsonrpc_id)
    if not isinstance(mcp_method, str) or not mcp_method:
        raise _jsonrpc_error("JSON-RPC method must be a non-empty string", "mcp.invalid_jsonrpc",
                             jsonrpc_id)
    params = msg.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _jsonrpc_error("params must be an object", "mcp.invalid_params", jsonrpc_id, -32602)
    name: str | None = None
    if mcp_method == "tools/call" or mcp_method == "prompts/get":
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise _jsonrpc_error(f"{mcp_method} needs params.name", "mcp.invalid_params", jsonrpc_id,
                                 -32602)
        if mcp_method == "tools/call" and not isinstance(params.get("arguments", {}), dict):
            raise _jsonrpc_error("tools/call params.arguments must be an object", "mcp.invalid_params",
                                 jsonrpc_id, -32602)
    elif mcp_method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        name = params.get("uri")
        if not isinstance(name, str) or not name:
            raise _jsonrpc_error(f"{mcp_method} needs params.uri", "mcp.invalid_params", jsonrpc_id,
                                 -32602)
    _check_mirrored_headers(request, mcp_method, name, jsonrpc_id)
    return Action(protocol="mcp", kind=mcp_method, name=name, jsonrpc_id=jsonrpc_id,
                  notification="id" not in msg)


def _check_mirrored_headers(request: Request, method: str, name: str | None, jsonrpc_id: Any) -> None:
    # Newer MCP revisions mirror the body in Mcp-Method / Mcp-Name headers so proxies can route
    # without parsing. A proxy that trusts the header while the server trusts the body is a
    # bypass, so they must agree.
    header_method = request.header("mcp-method")
    if header_method is not None and header_method != method:
        raise _jsonrpc_error("Mcp-Method header does not match the JSON-RPC body", "mcp.header_mismatch",
                             jsonrpc_id)
    header_name = request.header("mcp-name")
    if header_name is not None and header_name != (name or ""):
        raise _jsonrpc_error("Mcp-Name header does not match the JSON-RPC body", "mcp.header_mismatch",
                             jsonrpc_id)


def llm_action(request: Request) -> Action:
    path = request.path_only.rstrip("/")
    api = LLM_APIS.get(path)
    if api is None:
        api = "models" if path.startswith("/v1/models") else "other"
    if request.method.upper() != "POST" or api in ("models", "other"):
        return Action(protocol="llm", kind=api)
    if request.body_truncated:
        raise PayloadTooLarge("the request body is larger than the sidecar inspects; it cannot be "
                              "authorized", reason="body.truncated")
    try:
        body = parse_json(request.body)
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", reason="llm.invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", reason="llm.invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest('the request names no "model"', reason="llm.model_missing")
    stream = body.get("stream") is True
    return Action(protocol="llm", kind=api, model=model, stream=stream)


def http_action(request: Request) -> Action:
    return Action(protocol="http", kind=request.method.upper())
