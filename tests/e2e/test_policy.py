"""Issue 4 through real Envoy: MCP-aware policy with the official MCP SDK as the client, scope
challenges, filtered tool lists, per-role models and identity-based routing, and a dozen cases of
the policy table again end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from policy.cases import CASES

pytestmark = pytest.mark.e2e

MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def mcp_session(url: str, token: str, fn):
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with create_mcp_http_client(headers={"authorization": f"Bearer {token}"}) as http, \
            streamable_http_client(f"{url}/mcp", http_client=http) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await fn(session)


def test_mcp_sdk_client_lists_and_calls_what_the_user_may(stack):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar", "invoices:read"])

    async def run(session):
        tools = await session.list_tools()
        result = await session.call_tool("get_calendar", {"day": "mon"})
        return [t.name for t in tools.tools], result

    names, result = anyio.run(mcp_session, stack.url, token, run)
    assert sorted(names) == ["get_calendar", "list_invoices", "whoami"]  # no delete_invoice, no patients
    assert not result.is_error and "Stand-up" in str(result.content)


def test_mcp_sdk_client_is_refused_a_tool_without_its_scope(stack):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])

    async def run(session):
        return await session.call_tool("delete_invoice", {"invoice_id": "INV-1001"})

    with pytest.raises(BaseException) as info:  # the SDK surfaces the HTTP 403 as an error
        anyio.run(mcp_session, stack.url, token, run)
    assert "403" in repr(info.value) or "insufficient" in repr(info.value).lower()

    # What the client saw on the wire: the MCP 2025-11-25 step-up challenge.
    r = stack.http.post("/mcp", headers={**MCP_HEADERS, **stack.auth(token)},
                        json={"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                              "params": {"name": "delete_invoice", "arguments": {"invoice_id": "INV-1001"}}})
    assert r.status_code == 403
    challenge = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="invoices:write"' in challenge
    assert 'resource_metadata="http://localhost:10000/.well-known/oauth-protected-resource/mcp"' in challenge
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == 5 and body["error"]["data"]["error"] == "policy.insufficient_scope"


def test_the_backend_sees_who_called_through_the_sdk(stack):
    token = stack.token("dana", roles=["doctor"], client="claude")

    async def run(session):
        return await session.call_tool("whoami", {})

    result = anyio.run(mcp_session, stack.url, token, run)
    who = result.structured_content
    assert who["headers"]["x-authz-user"] == "dana" and who["headers"]["x-authz-client"] == "claude"
    assert who["authorization_header_seen"] is False
    assert who["assertion"]["valid"] is True, who


def chat(stack, token, model, **headers):
    return stack.http.post("/v1/chat/completions", headers={**stack.auth(token), **headers},
                           json={"model": model, "messages": [{"role": "user", "content": "hello"}]})


def test_models_and_routes_follow_the_role(stack):
    oscar = stack.token("oscar", roles=["accounting"])
    dana = stack.token("dana", roles=["doctor"])
    alice = stack.token("alice", roles=["analyst"])

    r = chat(stack, oscar, "gpt-medical")
    assert r.status_code == 403 and r.json()["error"]["code"] == "policy.role_required"
    assert "only doctors" in r.json()["error"]["message"]

    r = chat(stack, dana, "gpt-medical")
    assert r.status_code == 200 and r.headers["x-upstream"] == "medical"
    r = chat(stack, alice, "gpt-financial")
    assert r.status_code == 200 and r.headers["x-upstream"] == "financial"
    r = chat(stack, oscar, "gpt-general")
    assert r.status_code == 200 and r.headers["x-upstream"] == "general"


def test_a_client_sent_route_header_changes_nothing(stack):
    oscar = stack.token("oscar", roles=["accounting"])
    r = chat(stack, oscar, "gpt-general", **{"x-authz-route": "medical"})
    assert r.status_code == 200 and r.headers["x-upstream"] == "general"
    assert r.json()["echo"]["headers"]["x-authz-route"] == "general"


E2E_CASES = [c for c in CASES if c.e2e]


def test_a_dozen_table_cases_run_end_to_end():
    assert len(E2E_CASES) >= 12


@pytest.mark.parametrize("case", E2E_CASES, ids=lambda c: c.name)
def test_policy_case_through_envoy(stack, case):
    headers = dict(case.headers)
    if case.who is not None:
        token = stack.token(case.who.sub, roles=case.who.roles, scopes=case.who.scopes, client=case.who.client)
        headers.update(stack.auth(token))
    headers.update(MCP_HEADERS if case.path.startswith("/mcp") else {"content-type": "application/json"})
    r = stack.http.request(case.method, case.path, headers=headers, content=case.body_bytes())
    if case.status == 200:
        assert r.status_code < 400, r.text
    else:
        assert r.status_code == case.status, r.text
        assert r.headers["x-authz-reason"] == case.reason


@pytest.mark.parametrize(("client_says", "chunked"), [(None, False), ("false", False), (None, True)])
def test_a_body_envoy_cut_is_never_trusted(stack, client_says, chunked):
    """A body longer than max_request_bytes reaches Check cut. Envoy's partial-body flag says
    ``false`` when its buffer fills exactly at the limit (it did here), a client cannot set the
    flag (Envoy drops it), and a chunked body declares no length: the cut is seen all the same."""
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    headers = {**MCP_HEADERS, **stack.auth(token)}
    if client_says is not None:
        headers["x-envoy-auth-partial-body"] = client_says
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "get_calendar", "arguments": {"day": "mon", "pad": "x" * (1 << 20)}}}
                      ).encode()
    content = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    r = stack.http.post("/mcp", headers=headers, content=content)
    assert r.status_code == 413, r.text
    assert r.headers["x-authz-reason"] == "body.truncated"
