"""Issue 19 through real Envoy: 2025 MCP sessions are bound to the principal that opened them.
A stateful server (the demo server with --stateful, official SDK), two sidecar replicas sharing
one Redis: user B with user A's Mcp-Session-Id is refused (404, JSON-RPC error) for POST, GET
and DELETE on either replica, counted and audited, while A's session keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from authz.dev.issuer import mint_token
from authz.dev.stack import Stack, free_port

LEGACY = "2025-11-25"
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.fixture(scope="module")
def stateful_mcp() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "authz.dev.mcp_server", "--port", str(port), "--stateful"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def replicas(stateful_mcp, redis_url) -> Iterator[tuple[Stack, Stack]]:
    def to_stateful(cfg: dict[str, Any]) -> None:
        for cluster in cfg["static_resources"]["clusters"]:
            if cluster["name"] == "mcp":
                for group in cluster["load_assignment"]["endpoints"]:
                    for ep in group["lb_endpoints"]:
                        ep["endpoint"]["address"]["socket_address"]["port_value"] = stateful_mcp

    first = Stack(env={"REDIS_URL": redis_url}, envoy_edit=to_stateful, upstreams=False).start()
    try:
        second = Stack(env={"REDIS_URL": redis_url, "AUTHZ_DEV_ISSUER": first.issuer_url},
                       envoy_edit=to_stateful, upstreams=False, issuer=False).start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def token(stack: Stack, sub: str) -> str:
    return mint_token(sub=sub, roles=["accounting"], scopes=["tools:calendar"], client="chatgpt",
                      issuer=stack.issuer_url, dev_dir=stack.workdir / "dev")


def rpc(method: str, params: dict[str, Any] | None = None, jsonrpc_id: int | None = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if jsonrpc_id is not None:
        msg["id"] = jsonrpc_id
    return msg


def open_session(stack: Stack, tok: str) -> str:
    headers = {**MCP_HEADERS, "authorization": f"Bearer {tok}"}
    r = httpx.post(f"{stack.url}/mcp", headers=headers, timeout=10, json=rpc("initialize", {
        "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}))
    assert r.status_code == 200, r.text
    session = r.headers["mcp-session-id"]
    r = httpx.post(f"{stack.url}/mcp", timeout=10, json=rpc("notifications/initialized", jsonrpc_id=None),
                   headers={**headers, "mcp-session-id": session, "mcp-protocol-version": LEGACY})
    assert r.status_code == 202, r.text
    return session


def call(stack: Stack, tok: str, session: str, method: str = "POST") -> httpx.Response:
    headers = {**MCP_HEADERS, "authorization": f"Bearer {tok}", "mcp-session-id": session,
               "mcp-protocol-version": LEGACY}
    if method == "POST":
        return httpx.post(f"{stack.url}/mcp", headers=headers, timeout=10,
                          json=rpc("tools/call", {"name": "get_calendar", "arguments": {"day": "mon"}}, 7))
    if method == "GET":
        headers["accept"] = "text/event-stream"
        with httpx.stream("GET", f"{stack.url}/mcp", headers=headers, timeout=10) as r:
            r.read() if r.status_code != 200 else None
            return r
    return httpx.request(method, f"{stack.url}/mcp", headers=headers, timeout=10)


def metric(stack: Stack, name: str) -> str:
    text = httpx.get(f"{stack.authz_http}/metrics", timeout=5).text
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def test_another_principal_cannot_use_or_end_a_session_on_any_replica(replicas):
    first, second = replicas
    alice, bob = token(first, "alice"), token(first, "bob")
    session = open_session(first, alice)
    assert call(first, alice, session).status_code == 200

    for stack in (first, second):
        for method in ("POST", "GET", "DELETE"):
            r = call(stack, bob, session, method)
            assert r.status_code == 404, (stack.url, method, r.text)
            assert r.headers["x-authz-reason"] == "mcp.session_not_found"
            body = r.json()
            assert body["jsonrpc"] == "2.0" and body["error"]["message"].startswith("session not found")
        assert call(stack, alice, session).status_code == 200  # A's session still works, on both
    assert 'why="other_principal"} 3.0' in metric(first, "authz_mcp_session_refusals_total")
    assert 'why="other_principal"} 3.0' in metric(second, "authz_mcp_session_refusals_total")
    records = [json.loads(line) for f in sorted((first.workdir / "audit").rglob("*.jsonl"))
               for line in f.read_text().splitlines() if line.strip()]
    refused = [r for r in records if r.get("facts", {}).get("mcp_session") == "other_principal"]
    assert len(refused) == 3 and all(r["reason"] == "mcp.session_not_found" for r in refused), records[-3:]

    assert call(first, alice, session, "DELETE").status_code in (200, 202, 204)  # the owner ends it


def test_an_unknown_session_id_is_a_404_and_a_made_up_one_opens_nothing(replicas):
    first, _ = replicas
    alice = token(first, "alice")
    r = call(first, alice, "made-up-session-id")
    assert r.status_code == 404 and r.json()["id"] == 7
    assert 'why="unknown"' in metric(first, "authz_mcp_session_refusals_total")


def test_the_sdk_client_keeps_its_own_session_working(replicas):
    first, _ = replicas
    alice = token(first, "alice")

    async def run() -> Any:
        from mcp.client.client import Client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        async with create_mcp_http_client(headers={"authorization": f"Bearer {alice}"}) as http:
            async with Client(streamable_http_client(f"{first.url}/mcp", http_client=http), mode="legacy",
                              cache=None) as client:
                tools = await client.list_tools()
                result = await client.call_tool("get_calendar", {"day": "tue"})
                return client.protocol_version, [t.name for t in tools.tools], result

    version, names, result = anyio.run(run)
    assert version == LEGACY and "get_calendar" in names and not result.is_error
