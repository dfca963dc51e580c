"""What a request is about: an MCP JSON-RPC call, an LLM API call, or plain HTTP.

Built once per request from its parsed body (``authz.request.view``); policy, routing, limits,
redaction and audit all read the same ``Action``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from authz.errors import BadRequest
from authz.request.http import Request
from authz.request.revision import revision_of


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    protocol: str                 # "http" | "mcp" | "llm"
    kind: str                     # mcp: JSON-RPC method; llm: api name; http: the HTTP method
    name: str | None = None       # tool / prompt name, resource URI
    model: str | None = None
    jsonrpc_id: Any = None        # as sent: str, int (any size) or None
    stream: bool = False
    notification: bool = False
    max_tokens: int | None = None  # llm: the output the client asked for at most
    revision: str | None = None   # mcp: the protocol revision the message claims, when it says
    retry: bool = False           # mcp 2026-07-28: a multi round-trip retry (inputResponses/requestState)

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
    "/v1/images/generations": "images.generations",
    "/v1/audio/speech": "audio.speech",
}

MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def jsonrpc_error(message: str, reason: str, jsonrpc_id: Any = None, code: int = -32600) -> BadRequest:
    return BadRequest(message, reason=reason, details={"jsonrpc_id": jsonrpc_id, "jsonrpc_code": code})


def mcp_action(request: Request, msg: Any) -> Action:
    """The action of an MCP POST whose body decoded to ``msg``. Raises ``BadRequest``."""
    if isinstance(msg, list):
        raise jsonrpc_error("JSON-RPC batches are not supported (removed in MCP 2025-06-18)",
                            "mcp.batch_unsupported")
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        raise jsonrpc_error('not a JSON-RPC 2.0 message (expected "jsonrpc": "2.0")',
                            "mcp.invalid_jsonrpc")
    jsonrpc_id = msg.get("id")
    if (jsonrpc_id is not None and not isinstance(jsonrpc_id, str | int)) or isinstance(jsonrpc_id, bool):
        raise jsonrpc_error("JSON-RPC id must be a string or an integer", "mcp.invalid_jsonrpc")
    mcp_method = msg.get("method")
    if mcp_method is None:
        if "result" in msg or "error" in msg:  # a response to a server-initiated request
            return Action(protocol="mcp", kind="response", jsonrpc_id=jsonrpc_id)
        raise jsonrpc_error("JSON-RPC message has no method", "mcp.invalid_jsonrpc", jsonrpc_id)
    if not isinstance(mcp_method, str) or not mcp_method:
        raise jsonrpc_error("JSON-RPC method must be a non-empty string", "mcp.invalid_jsonrpc",
                            jsonrpc_id)
    params = msg.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise jsonrpc_error("params must be an object", "mcp.invalid_params", jsonrpc_id, -32602)
    name: str | None = None
    if mcp_method == "tools/call" or mcp_method == "prompts/get":
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise jsonrpc_error(f"{mcp_method} needs params.name", "mcp.invalid_params", jsonrpc_id,
                                -32602)
        if mcp_method == "tools/call" and not isinstance(params.get("arguments", {}), dict):
            raise jsonrpc_error("tools/call params.arguments must be an object", "mcp.invalid_params",
                                jsonrpc_id, -32602)
    elif mcp_method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        name = params.get("uri")
        if not isinstance(name, str) or not name:
            raise jsonrpc_error(f"{mcp_method} needs params.uri", "mcp.invalid_params", jsonrpc_id,
                                -32602)
    revision = revision_of(request, mcp_method, params, name, jsonrpc_id)
    retry = "inputResponses" in params or "requestState" in params
    return Action(protocol="mcp", kind=mcp_method, name=name, jsonrpc_id=jsonrpc_id,
                  notification="id" not in msg, revision=revision, retry=retry)


def llm_api(request: Request) -> str:
    path = request.path_only.rstrip("/")
    api = LLM_APIS.get(path)
    if api is None:
        api = "models" if path.startswith("/v1/models") else "other"
    return api


def llm_action(api: str, body: Any) -> Action:
    """The action of an LLM API call whose body decoded to ``body``. Raises ``BadRequest``."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", reason="llm.invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest('the request names no "model"', reason="llm.model_missing")
    max_tokens = None
    for field in MAX_TOKENS_FIELDS:
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            max_tokens = value
            break
    return Action(protocol="llm", kind=api, model=model, stream=body.get("stream") is True,
                  max_tokens=max_tokens)


def http_action(request: Request) -> Action:
    return Action(protocol="http", kind=request.method.upper())
