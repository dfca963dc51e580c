"""The canned upstream of the whole-path scenarios: a second Envoy answering every request with
one fixed answer (a chat completion, a streamed one, an MCP result), so the upstream hop is real
(a connection, a request and an answer crossing the gateway Envoy) but never the bottleneck: a
Python upstream would be.

It runs as its own process so that the gateway Envoy's CPU figure is the gateway's alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from authz.dev.stack import envoy_binary


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the upstream answers, whatever it is asked."""

    content_type: str
    body: bytes
    status: int = 200


def _chat_text() -> str:
    return ("Here is a short reply you can send: Thanks for the forecast, the numbers look right and "
            "we will review them on Thursday.")


def chat_json() -> Answer:
    """An OpenAI chat completion with usage (what metering settles on)."""
    doc = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1764460800, "model": "gpt-general",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": _chat_text()},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 31, "completion_tokens": 27, "total_tokens": 58}}
    return Answer("application/json", json.dumps(doc).encode())


def chat_sse(deltas: int = 24) -> Answer:
    """The same answer streamed: one event per word or so, a usage event (stream_options
    include_usage) and [DONE]. Envoy's direct response sends it in one piece; the sidecar still
    parses every event."""
    words = _chat_text().split(" ")
    per = max(1, -(-len(words) // deltas))
    pieces = [" ".join(words[i:i + per]) for i in range(0, len(words), per)]
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764460800,
            "model": "gpt-general"}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}]
    events += [{**base, "choices": [{"index": 0, "delta": {"content": (" " if i else "") + p},
                                     "finish_reason": None}]} for i, p in enumerate(pieces)]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**base, "choices": [],
                   "usage": {"prompt_tokens": 31, "completion_tokens": 27, "total_tokens": 58}})
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return Answer("text/event-stream", body.encode())


def mcp_call_result(jsonrpc_id: int = 7) -> Answer:
    """The answer to the bench's tools/call (whoami): a small text result."""
    doc = {"jsonrpc": "2.0", "id": jsonrpc_id, "result": {
        "content": [{"type": "text", "text": "You are oscar (roles: accounting)."}], "isError": False}}
    return Answer("application/json", json.dumps(doc).encode())


# The reference policy's MCP tools: the bench's user (scopes tools:calendar, role accounting)
# may call get_calendar and whoami; the filter drops the rest.
TOOLS = ("get_calendar", "list_invoices", "delete_invoice", "search_patients", "whoami", "customer_lookup",
         "customer_notes", "customer_orders")


def mcp_tools_list(jsonrpc_id: int = 8) -> Answer:
    tools = [{"name": name, "description": f"{name.replace('_', ' ')} for the signed-in user",
              "inputSchema": {"type": "object", "properties": {"query": {"type": "string"}}}}
             for name in TOOLS]
    doc = {"jsonrpc": "2.0", "id": jsonrpc_id, "result": {"tools": tools}}
    return Answer("application/json", json.dumps(doc).encode())


def render(port: int, admin_port: int, answer: Answer) -> str:
    """An Envoy config answering ``answer`` to every request on 127.0.0.1:``port``."""
    route = {"match": {"prefix": "/"},
             "direct_response": {"status": answer.status,
                                 "body": {"inline_string": answer.body.decode()}},
             "response_headers_to_add": [{"header": {"key": "content-type", "value": answer.content_type},
                                          "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "upstream", "codec_type": "AUTO",
           "route_config": {"name": "canned", "max_direct_response_body_size_bytes": 1 << 20,
                            "virtual_hosts": [{"name": "canned", "domains": ["*"],
                                                                 "routes": [route]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    cfg = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
           "static_resources": {"listeners": [{
               "name": "upstream",
               "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
               "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                               "typed_config": hcm}]}]}]}}
    return yaml.safe_dump(cfg, sort_keys=False)


def envoy_argv(config: Path) -> list[str]:
    """One worker thread (it answers from memory: one is plenty)."""
    return [envoy_binary(), "-c", str(config), "--concurrency", "1", "--log-level", "warning",
            "--disable-hot-restart"]
