"""Issue 19 through real Envoy: the official MCP SDK client and server speaking the stateless
2026-07-28 revision and the session-based 2025-11-25 one get the same policy, filtering and
identity; a header that disagrees with the body is refused."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pytest

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def with_client(url: str, token: str, mode: str, fn: Any) -> Any:
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with create_mcp_http_client(headers={"authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode, cache=None) as client:
            return await fn(client)


@pytest.mark.parametrize("mode", [MODERN, "legacy"], ids=["2026-07-28", "2025-11-25"])
def test_sdk_client_gets_the_same_filtering_and_policy_in_both_eras(stack, mode):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar", "invoices:read"])

    async def run(client):
        tools = await client.list_tools()
        ok = await client.call_tool("get_calendar", {"day": "mon"})
        who = await client.call_tool("whoami", {})
        return client.protocol_version, [t.name for t in tools.tools], ok, who

    version, names, ok, who = anyio.run(with_client, stack.url, token, mode, run)
    assert version == (MODERN if mode == MODERN else LEGACY)
    assert sorted(names) == ["get_calendar", "list_invoices", "whoami"]
    assert not ok.is_error and "Stand-up" in str(ok.content)
    assert who.structured_content["headers"]["x-authz-user"] == "oscar"

    async def refused(client):
        return await client.call_tool("delete_invoice", {"invoice_id": "INV-1001"})

    with pytest.raises(BaseException) as info:
        anyio.run(with_client, stack.url, token, mode, refused)
    assert "403" in repr(info.value) or "insufficient" in repr(info.value).lower()

    async def secret(client):  # redaction: a secret in tool arguments is blocked, in both eras
        return await client.call_tool("get_calendar", {"day": "mon ghp_" + "Z" * 36})

    with pytest.raises(BaseException) as info:
        anyio.run(with_client, stack.url, token, mode, secret)
    assert "redaction" in repr(info.value).lower() or "403" in repr(info.value)

    # audit: the same action recorded whatever the revision (the tool, the reason); the writer
    # flushes in the background, so give it a moment
    reasons: set[str] = set()
    for _ in range(50):
        records = [json.loads(line) for f in sorted((stack.stack.workdir / "audit").rglob("*.jsonl"))
                   for line in f.read_text().splitlines() if line.strip()]
        reasons = {r["reason"] for r in records if r.get("action", {}).get("name") == "get_calendar"
                   and r.get("facts", {}).get("identity", {}).get("subject") == "oscar"}
        if reasons >= {"ok", "redaction.blocked"}:
            break
        time.sleep(0.1)
    assert reasons >= {"ok", "redaction.blocked"}


def modern(method: str, params: dict[str, Any] | None = None, *, version: str = MODERN, jsonrpc_id: Any = 1,
           name: str | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    meta = {"io.modelcontextprotocol/protocolVersion": version, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": jsonrpc_id, "method": method, "params": {**(params or {}), "_meta": meta}}
    headers = {**MCP_HEADERS, "mcp-protocol-version": version, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return headers, body


def test_a_filtered_tools_list_is_private_in_both_eras(stack):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    headers, body = modern("tools/list")
    r = stack.http.post("/mcp", headers={**headers, **stack.auth(token)}, json=body)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["cacheScope"] == "private" and 0 <= result["ttlMs"] <= 60_000
    assert "delete_invoice" not in [t["name"] for t in result["tools"]]
    legacy = stack.http.post("/mcp", headers={**MCP_HEADERS, **stack.auth(token)},
                             json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert legacy.json()["result"]["cacheScope"] == "private"


def test_server_discover_passes_policy_and_raw_2026_calls_are_decided_like_2025_ones(stack):
    oscar = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    headers, body = modern("server/discover")
    r = stack.http.post("/mcp", headers={**headers, **stack.auth(oscar)}, json=body)
    assert r.status_code == 200, r.text
    assert MODERN in r.json()["result"]["supportedVersions"]

    headers, body = modern("tools/call", {"name": "search_patients", "arguments": {"query": "Jane"}},
                           name="search_patients", jsonrpc_id="p-1")
    r = stack.http.post("/mcp", headers={**headers, **stack.auth(oscar)}, json=body)
    assert r.status_code == 403 and r.json()["id"] == "p-1"
    assert r.json()["error"]["data"]["error"] == "policy.role_required"
    dana = stack.token("dana", roles=["doctor"])
    r = stack.http.post("/mcp", headers={**headers, **stack.auth(dana)}, json=body)
    assert r.status_code == 200 and "Jane Roe" in r.text


def test_subscriptions_listen_passes_policy_for_a_signed_in_user_only(stack):
    token = stack.token("oscar", roles=["accounting"])

    async def listen(client):
        async with client.listen(tools_list_changed=True) as sub:
            return sub.honored

    honored = anyio.run(with_client, stack.url, token, MODERN, listen)
    assert honored is not None
    headers, body = modern("subscriptions/listen", {"filter": {"toolsListChanged": True}})
    r = stack.http.post("/mcp", headers=headers, json=body)  # no token
    assert r.status_code == 401 and r.json()["error"]["data"]["error"] == "token.missing"


@pytest.mark.parametrize("change, reason", [
    ({"mcp-protocol-version": LEGACY}, "mcp.version_mismatch"),          # header says 2025, _meta 2026
    ({"mcp-protocol-version": None}, "mcp.version_mismatch"),            # _meta 2026, no header
    ({"mcp-method": "tools/list"}, "mcp.header_mismatch"),               # the header names another method
    ({"mcp-method": None}, "mcp.header_missing"),                        # required in 2026-07-28
    ({"mcp-name": "get_calendar"}, "mcp.header_mismatch"),               # routes as one tool, calls another
    ({"mcp-name": None}, "mcp.header_missing"),
])
def test_headers_that_disagree_with_the_body_are_refused(stack, change, reason):
    token = stack.token("dana", roles=["doctor"], scopes=["tools:calendar"])
    headers, body = modern("tools/call", {"name": "search_patients", "arguments": {"query": "x"}},
                           name="search_patients", jsonrpc_id=9)
    for k, v in change.items():
        if v is None:
            headers.pop(k)
        else:
            headers[k] = v
    r = stack.http.post("/mcp", headers={**headers, **stack.auth(token)}, json=body)
    assert r.status_code == 400 and r.headers["x-authz-reason"] == reason
    assert r.json()["id"] == 9 and r.json()["error"]["code"] == -32020


def test_a_2026_header_on_a_2025_body_is_refused(stack):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    r = stack.http.post("/mcp", headers={**MCP_HEADERS, **stack.auth(token), "mcp-protocol-version": MODERN,
                                         "mcp-method": "tools/list"},
                        json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert r.status_code == 400 and r.headers["x-authz-reason"] == "mcp.version_mismatch"
    assert json.loads(r.text)["error"]["code"] == -32020


@pytest.fixture(scope="module")
def prompts_for_writers(tmp_path_factory):
    """The reference config, except that only writers may list prompts and nobody lists resources."""
    import yaml

    from authz.dev.stack import REFERENCE_CONFIG
    from tests.e2e.conftest import running_stack

    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    session = next(r for r in cfg["policy"]["rules"] if r["id"] == "mcp-session")
    session["match"]["mcp"]["methods"] = [m for m in session["match"]["mcp"]["methods"]
                                          if m not in ("prompts/list", "resources/list", "resources/templates/list")]
    cfg["policy"]["rules"].insert(0, {"id": "writers-prompts", "require": {"roles_any": ["writer"]},
                                      "match": {"paths": ["/mcp"], "mcp": {"methods": ["prompts/list"]}}})
    path = tmp_path_factory.mktemp("discover") / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with running_stack(path) as running:
        yield running


def test_discover_and_initialize_list_only_the_capabilities_the_caller_may_use(prompts_for_writers):
    stack = prompts_for_writers
    oscar = stack.token("oscar", roles=["accounting"])
    wendy = stack.token("wendy", roles=["writer"])
    headers, body = modern("server/discover")
    seen = {}
    for who, tok in (("oscar", oscar), ("wendy", wendy)):
        r = stack.http.post("/mcp", headers={**headers, **stack.auth(tok)}, json=body)
        assert r.status_code == 200, r.text
        result = r.json()["result"]
        assert result["cacheScope"] == "private"
        seen[who] = set(result["capabilities"])
    assert "tools" in seen["oscar"] and not {"prompts", "resources"} & seen["oscar"]
    assert {"tools", "prompts"} <= seen["wendy"] and "resources" not in seen["wendy"]

    r = stack.http.post("/mcp", headers={**MCP_HEADERS, **stack.auth(oscar)}, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}})
    assert r.status_code == 200 and "prompts" not in r.json()["result"]["capabilities"]
    assert "tools" in r.json()["result"]["capabilities"]
