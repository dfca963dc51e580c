"""The demo MCP server through the official SDK client, behind-a-proxy Host headers, and whoami's
report of the identity headers and the assertion check."""

from __future__ import annotations

import json
import sys
import urllib.request

import aiohttp
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from authz.dev import mcp_server

from .conftest import program

MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "test", "version": "0"}}}
IDENTITY = {"x-authz-user": "dana", "x-authz-roles": "doctor", "x-authz-client": "claude",
            "x-authz-tenant": "clinic", "x-authz-email": "dana@clinic.example"}


async def session_run(url: str, fn, headers: dict[str, str] | None = None):
    async with create_mcp_http_client(headers=headers) as http, \
            streamable_http_client(url, http_client=http) as (read, write, *_), \
            ClientSession(read, write) as session:
        await session.initialize()
        return await fn(session)


async def test_the_sdk_client_initializes_lists_and_calls(mcp_url):
    async def run(session):
        tools = await session.list_tools()
        return tools, await session.call_tool("get_calendar", {"day": "mon"})

    tools, result = await session_run(mcp_url, run)
    names = {t.name for t in tools.tools}
    assert names == {"get_calendar", "list_invoices", "delete_invoice", "search_patients", "whoami",
                     "customer_record", "customer_credentials", "customer_broken_answer"}
    by_name = {t.name: t for t in tools.tools}
    assert by_name["delete_invoice"].annotations.destructive_hint is True
    assert by_name["get_calendar"].annotations.read_only_hint is True
    assert not result.is_error and "Stand-up" in str(result.content)
    assert result.structured_content["result"][0]["day"] == "mon"


async def test_broken_answers_are_the_bytes_their_kind_names(mcp_url):
    """customer_broken_answer (what the sidecar must refuse, tests/e2e/test_answers.py) and, on
    the same server, an ordinary call afterwards."""
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "customer_broken_answer", "arguments": {"kind": "not_json"}}}
    async with aiohttp.ClientSession() as http:
        async with http.post(mcp_url, json=call, headers=MCP_HEADERS) as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert await r.read() == b'{"jsonrpc": "2.0", "id": 9, "result": {oops'
        async with http.post(mcp_url + "/sse", json={**call, "params": {**call["params"], "arguments": {
                "kind": "not_utf8"}}}, headers=MCP_HEADERS) as r:
            assert r.content_type == "text/event-stream"
            body = await r.read()
            assert body.startswith(b"event: message\ndata: ") and b"\xff" in body
    assert len(mcp_server.broken_answer("huge", 1, sse=False)) > 2 * 1024 * 1024

    async def run(session):
        return await session.call_tool("get_calendar", {"day": "tue"})

    assert not (await session_run(mcp_url, run)).is_error


async def test_invoices_patients_resource_and_prompt(mcp_url):
    async def run(session):
        return (await session.call_tool("list_invoices", {}),
                await session.call_tool("delete_invoice", {"invoice_id": "INV-1001"}),
                await session.call_tool("search_patients", {"query": "cardio"}),
                await session.read_resource("invoices://INV-1002"),
                await session.get_prompt("summarize_invoice", {"invoice_id": "INV-1002"}))

    invoices, deleted, patients, resource, prompt = await session_run(mcp_url, run)
    assert [i["id"] for i in invoices.structured_content["result"]] == ["INV-1001", "INV-1002"]
    assert "INV-1001 deleted" in str(deleted.content)
    assert [p["patient"] for p in patients.structured_content["result"]] == ["P-17"]
    assert json.loads(resource.contents[0].text)["customer"] == "Globex"
    assert "INV-1002" in prompt.messages[0].content.text


async def test_whoami_reports_the_identity_headers_it_received(mcp_url, monkeypatch):
    monkeypatch.delenv("AUTHZ_ASSERTION_JWKS_URL", raising=False)

    async def run(session):
        return await session.call_tool("whoami", {})

    result = await session_run(mcp_url, run, headers={**IDENTITY, "x-authz-assertion": "a.b.c"})
    who = result.structured_content
    assert who["headers"] == IDENTITY
    assert who["authorization_header_seen"] is False
    assert who["assertion_present"] is True and who["assertion_valid"] is None

    result = await session_run(mcp_url, run, headers={"authorization": "Bearer leaked"})
    who = result.structured_content
    assert who["authorization_header_seen"] is True and who["assertion_present"] is False


async def test_whoami_verifies_the_assertion_for_this_request(mcp_url, monkeypatch):
    import authz.identity.assertion

    calls = []

    def fake_verify(token, **kw):
        calls.append((token, kw))
        if token != "good":
            raise authz.identity.assertion.InvalidAssertion("assertion.bad_signature", "no")
        return {"sub": "dana", "client": "claude"}

    monkeypatch.setattr(authz.identity.assertion, "verify", fake_verify)
    monkeypatch.setenv("AUTHZ_ASSERTION_JWKS_URL", "http://127.0.0.1:9/.well-known/jwks.json")
    monkeypatch.setenv("AUTHZ_ASSERTION_ISSUER", "urn:authz:test")

    async def run(session):
        return await session.call_tool("whoami", {})

    who = (await session_run(mcp_url, run, headers={"x-authz-assertion": "good", "x-request-id": "r1"})
           ).structured_content
    assert who["assertion_valid"] is True and who["assertion"]["sub"] == "dana"
    token, kw = calls[-1]
    assert token == "good"
    assert kw["jwks_url"] == "http://127.0.0.1:9/.well-known/jwks.json" and kw["issuer"] == "urn:authz:test"
    assert (kw["method"], kw["path"], kw["request_id"]) == ("POST", "/mcp", "r1")

    who = (await session_run(mcp_url, run, headers={"x-authz-assertion": "forged"})).structured_content
    assert who["assertion_valid"] is False and who["assertion"]["why"] == "assertion.bad_signature"
    who = (await session_run(mcp_url, run)).structured_content
    assert who["assertion_valid"] is False and who["assertion_present"] is False


def test_the_assertion_check_is_off_without_authz_assertion(monkeypatch):
    monkeypatch.setenv("AUTHZ_ASSERTION_JWKS_URL", "http://127.0.0.1:9/jwks")
    monkeypatch.setitem(sys.modules, "authz.identity.assertion", None)  # import now raises ImportError
    report = mcp_server.check_assertion({"x-authz-assertion": "a.b.c"}, "POST", "/mcp")
    assert report["valid"] is None and report["present"] is True


def test_a_failing_jwks_fetch_fails_closed(monkeypatch):
    import authz.identity.assertion

    def broken(token, **kw):
        raise OSError("connection refused")

    monkeypatch.setattr(authz.identity.assertion, "verify", broken)
    monkeypatch.setenv("AUTHZ_ASSERTION_JWKS_URL", "http://127.0.0.1:9/jwks")
    assert mcp_server.check_assertion({"x-authz-assertion": "a.b.c"}, "POST", "/mcp")["valid"] is False


async def test_any_host_is_accepted_and_answers_are_tagged(mcp_url):
    # Envoy forwards the client's Host; the SDK's default DNS-rebinding check would refuse it.
    async with aiohttp.ClientSession() as http:
        r = await http.post(mcp_url, json=INITIALIZE,
                            headers={**MCP_HEADERS, "host": "gateway.example:10000", "origin": "https://evil.example"})
        assert r.status == 200, await r.text()
        assert r.headers["x-upstream"] == "mcp" and r.headers["content-type"].startswith("application/json")
        assert (await r.json())["result"]["serverInfo"]["name"] == "authz-demo"
        r = await http.get(mcp_url.replace("/mcp", "/elsewhere"))
        assert r.status == 404 and r.headers["x-upstream"] == "mcp"


def test_the_program_serves_mcp_on_the_port_it_was_given():
    with program("authz.dev.mcp_server", "--port", "0") as (url, lines):
        assert lines == [f"demo MCP server listening on {url}"] and url.endswith("/mcp")
        request = urllib.request.Request(url, data=json.dumps(INITIALIZE).encode(), headers=MCP_HEADERS)
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.headers["x-upstream"] == "mcp" and json.load(r)["result"]["protocolVersion"]


@pytest.fixture(autouse=True)
def _no_stray_assertion_env(monkeypatch):
    for name in ("AUTHZ_ASSERTION_JWKS_URL", "AUTHZ_ASSERTION_ISSUER", "AUTHZ_ASSERTION_AUDIENCE"):
        monkeypatch.delenv(name, raising=False)
