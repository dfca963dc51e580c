"""The policy test table: (request, identity, expected decision and reason), readable at a glance.

Used by the unit tests (all cases) and the end-to-end tests (a selection, through real Envoy).
Every case runs against the shipped reference policy, deploy/authz/authz.yaml.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class Who:
    sub: str
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    client: str = "chatgpt"


OSCAR = Who("oscar", roles=("accounting",), scopes=("tools:calendar", "invoices:read"))
OSCAR_WRITE = Who("oscar", roles=("accounting",), scopes=("tools:calendar", "invoices:read", "invoices:write"))
DANA = Who("dana", roles=("doctor",), scopes=("tools:calendar",))
ALICE = Who("alice", roles=("analyst",))
BOT = Who("svc-bot", scopes=("invoices:write",), client="batch")
NOBODY = None  # anonymous


def mcp(method: str, params: dict | None = None, id_: Any = 1) -> dict:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id_ is not None:
        msg["id"] = id_
    if params is not None:
        msg["params"] = params
    return msg


def call(tool: str, **args: Any) -> dict:
    return mcp("tools/call", {"name": tool, "arguments": args})


def chat(model: str, **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    who: Who | None
    path: str
    body: Any = None              # dict → JSON; bytes as is; None → no body
    status: int = 200
    reason: str = "policy.allowed"
    rule: str | None = None
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    e2e: bool = False             # also run through real Envoy

    def body_bytes(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


CASES = [
    # MCP session plumbing
    Case("initialize", OSCAR, "/mcp", mcp("initialize", {"protocolVersion": "2025-11-25"}), rule="mcp-session", e2e=True),
    Case("initialized notification", OSCAR, "/mcp", mcp("notifications/initialized", id_=None), rule="mcp-session"),
    Case("ping", DANA, "/mcp", mcp("ping"), rule="mcp-session"),
    Case("tools/list", ALICE, "/mcp", mcp("tools/list"), rule="mcp-session", e2e=True),
    Case("open SSE stream", OSCAR, "/mcp", None, method="GET", rule="mcp-session"),
    Case("end session", OSCAR, "/mcp", None, method="DELETE", rule="mcp-session"),
    Case("anonymous initialize", NOBODY, "/mcp", mcp("initialize"), 401, "policy.authentication_required",
         "mcp-session"),
    Case("client response to a server request", OSCAR, "/mcp", {"jsonrpc": "2.0", "id": 7, "result": {}},
         rule="mcp-session"),
    # tools
    Case("calendar with scope", OSCAR, "/mcp", call("get_calendar", day="mon"), rule="calendar", e2e=True),
    Case("calendar without scope", ALICE, "/mcp", call("get_calendar", day="mon"), 403,
         "policy.insufficient_scope", "calendar", e2e=True),
    Case("list invoices", OSCAR, "/mcp", call("list_invoices"), rule="invoices-read"),
    Case("list invoices without scope", DANA, "/mcp", call("list_invoices"), 403, "policy.insufficient_scope",
         "invoices-read"),
    Case("delete invoice without write scope", OSCAR, "/mcp", call("delete_invoice", invoice_id="7"), 403,
         "policy.insufficient_scope", "invoices-write", e2e=True),
    Case("delete invoice with scope and role", OSCAR_WRITE, "/mcp", call("delete_invoice", invoice_id="7"),
         rule="invoices-write", e2e=True),
    Case("delete invoice with scope, wrong role", BOT, "/mcp", call("delete_invoice", invoice_id="7"), 403,
         "policy.role_required", "invoices-write"),
    Case("patients as doctor", DANA, "/mcp", call("search_patients", query="x"), rule="patients"),
    Case("patients as accountant", OSCAR, "/mcp", call("search_patients", query="x"), 403,
         "policy.role_required", "patients", e2e=True),
    Case("whoami for anyone signed in", BOT, "/mcp", call("whoami"), rule="whoami"),
    Case("unknown tool", OSCAR, "/mcp", call("drop_tables"), 403, "policy.no_rule", None, e2e=True),
    Case("resources/read has no rule", OSCAR, "/mcp", mcp("resources/read", {"uri": "invoices://1"}), 403,
         "policy.no_rule"),
    Case("prompts/get has no rule", OSCAR, "/mcp", mcp("prompts/get", {"name": "summarize_invoice"}), 403,
         "policy.no_rule"),
    # malformed MCP
    Case("MCP body not JSON", OSCAR, "/mcp", b"{not json", 400, "mcp.invalid_json", e2e=True),
    Case("MCP batch", OSCAR, "/mcp", [mcp("ping"), mcp("ping", id_=2)], 400, "mcp.batch_unsupported"),
    Case("MCP not JSON-RPC 2.0", OSCAR, "/mcp", {"jsonrpc": "1.0", "method": "ping", "id": 1}, 400,
         "mcp.invalid_jsonrpc"),
    Case("MCP empty POST", OSCAR, "/mcp", None, 400, "mcp.empty_body"),
    Case("tools/call without name", OSCAR, "/mcp", mcp("tools/call", {"arguments": {}}), 400,
         "mcp.invalid_params"),
    Case("tools/call with array arguments", OSCAR, "/mcp", mcp("tools/call", {"name": "whoami", "arguments": []}),
         400, "mcp.invalid_params"),
    Case("duplicate name keys", OSCAR, "/mcp",
         b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","name":"delete_invoice"}}',
         400, "mcp.invalid_json", e2e=True),
    # JSON allows a lone \uD800-\uDFFF escape; Unicode does not, and nothing downstream (the
    # audit log, a rewritten body) could write it back: refused where it is parsed.
    Case("tool name with an unpaired surrogate", OSCAR, "/mcp",
         b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800whoami"}}', 400,
         "mcp.invalid_json", e2e=True),
    Case("unpaired low surrogate in arguments", OSCAR, "/mcp",
         b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{"x":"\\udc00"}}}',
         400, "mcp.invalid_json"),
    Case("escaped surrogate pair (an emoji) is fine", OSCAR, "/mcp", call("get_calendar", day="mon \U0001F600"),
         rule="calendar"),
    Case("Mcp-Name header disagrees with body", OSCAR, "/mcp", call("get_calendar", day="mon"), 400,
         "mcp.header_mismatch", headers=(("mcp-method", "tools/call"), ("mcp-name", "whoami")), e2e=True),
    Case("Mcp headers agree", OSCAR, "/mcp", call("get_calendar", day="mon"), rule="calendar",
         headers=(("mcp-method", "tools/call"), ("mcp-name", "get_calendar"))),
    Case("deeply nested arguments", OSCAR, "/mcp",
         b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{"a":'
         + b"[" * 5000 + b"]" * 5000 + b"}}}", 400, "mcp.invalid_json"),
    # LLM APIs
    Case("general model", OSCAR, "/v1/chat/completions", chat("gpt-general"), rule="general-models", e2e=True),
    Case("chat message with an unpaired surrogate", OSCAR, "/v1/chat/completions",
         b'{"model":"gpt-general","messages":[{"role":"user","content":"hi \\ud83d"}]}', 400,
         "llm.invalid_json", e2e=True),
    Case("medical model as accountant", OSCAR, "/v1/chat/completions", chat("gpt-medical"), 403,
         "policy.role_required", "medical-models", e2e=True),
    Case("medical model as doctor", DANA, "/v1/chat/completions", chat("gpt-medical"), rule="medical-models",
         e2e=True),
    Case("medical variant as doctor", DANA, "/v1/chat/completions", chat("gpt-medical-large"),
         rule="medical-models"),
    Case("financial model as analyst", ALICE, "/v1/responses", {"model": "gpt-financial", "input": "hi"},
         rule="financial-models"),
    Case("financial model as accountant", OSCAR, "/v1/chat/completions", chat("gpt-financial"),
         rule="financial-models"),
    Case("financial model as doctor", DANA, "/v1/chat/completions", chat("gpt-financial"), 403,
         "policy.role_required", "financial-models"),
    Case("anthropic messages", ALICE, "/v1/messages", {"model": "gpt-general", "max_tokens": 5, "messages": []},
         rule="general-models"),
    Case("embeddings", OSCAR, "/v1/embeddings", {"model": "gpt-general", "input": "x"}, rule="general-models"),
    Case("list models", OSCAR, "/v1/models", None, method="GET", rule="general-models"),
    Case("LLM body without model", OSCAR, "/v1/chat/completions", {"messages": []}, 400, "llm.model_missing",
         e2e=True),
    Case("LLM body not JSON", OSCAR, "/v1/chat/completions", b"model=gpt", 400, "llm.invalid_json"),
    Case("LLM body is a list", OSCAR, "/v1/chat/completions", [1, 2], 400, "llm.invalid_json"),
    Case("anonymous LLM call", NOBODY, "/v1/chat/completions", chat("gpt-general"), 401,
         "policy.authentication_required", "general-models"),
    # plain HTTP
    Case("unknown path", OSCAR, "/admin", None, 403, "policy.no_rule", method="GET", e2e=True),
    Case("dot-dot path is not /mcp", OSCAR, "/mcp/../admin", None, 403, "policy.no_rule", method="GET"),
]
