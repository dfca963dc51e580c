"""Process only when there is work (issue 22), through real Envoy: a request Check left no
hand-off for opens no ext_proc stream at all (the sidecar counts the streams it serves), one with
work opens exactly one, and nothing a client sends decides which."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from authz.dev.stack import REFERENCE_CONFIG
from tests.e2e.conftest import Running, running_stack

pytestmark = pytest.mark.e2e

# What a client might send hoping to steer Process: none of it is read by Envoy's matcher (it
# reads Check's dynamic metadata), and Check removes every x-authz-* header before the upstream.
SPOOF = {"x-authz-process": "none", "x-authz-handoff": "{}", "x-authz-skip": "true"}
MCP_HEADERS = {"accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Running]:
    """The reference config without its rule for MCP tool results: a tools/call then needs no
    Process phase (no answer to scan, no usage to meter, no list to filter, no session to bind)."""
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    cfg["redaction"]["rules"] = [r for r in cfg["redaction"]["rules"] if r["id"] != "mcp-results"]
    path = tmp_path_factory.mktemp("streams") / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with running_stack(path) as running:
        yield running


def streams(stack: Running) -> float:
    """ext_proc streams the sidecar has served, whatever their outcome."""
    text = httpx.get(f"{stack.stack.authz_http}/metrics").text
    return sum(float(v) for v in re.findall(r"^authz_process_streams_total\{[^}]*\} (\S+)$", text, re.M))


def counted(stack: Running, before: float, expected: float) -> float:
    """The stream count once it reaches ``expected`` more than ``before`` (a stream is counted
    when it ends, which may be just after the client has its answer); it then must stay there."""
    deadline = time.monotonic() + 15  # left as soon as it is reached; only a loaded box needs long
    while streams(stack) - before < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return streams(stack) - before


def tool_call(stack: Running, token: str, name: str = "get_calendar", **headers: str) -> httpx.Response:
    return stack.http.post("/mcp", headers=stack.auth(token, **MCP_HEADERS, **headers), json={
        "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": name, "arguments": {"day": "monday"}}})


def chat(stack: Running, token: str, text: str, **headers: str) -> httpx.Response:
    return stack.http.post("/v1/chat/completions", headers=stack.auth(token, **headers),
                           json={"model": "gpt-general", "messages": [{"role": "user", "content": text}]})


def test_a_tool_call_with_no_process_work_opens_no_stream(stack):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    before = streams(stack)
    for _ in range(3):
        r = tool_call(stack, token)
        assert r.status_code == 200, r.text
        assert r.headers["x-authz-check"] == "allow"
        assert "x-authz-process" not in r.headers  # debug_headers: no Process hop happened
    # A refused call opens none either: Check's decision record is its record.
    denied = tool_call(stack, token, name="delete_invoice")
    assert denied.status_code == 403
    anonymous = stack.http.post("/mcp", headers=MCP_HEADERS, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert anonymous.status_code == 401
    assert counted(stack, before, 0) == 0


def test_a_chat_with_redaction_opens_exactly_one_stream(stack):
    token = stack.token("oscar", roles=["accounting"])
    before = streams(stack)
    r = chat(stack, token, "write to jane.doe@example.com about it")
    assert r.status_code == 200, r.text
    # The body Check rewrote is swapped in (request_body), the answer is scanned and metered.
    assert r.headers["x-authz-process"] == "request_headers,request_body,response_headers"
    assert "jane.doe@example.com" not in json.dumps(r.json()["echo"]["body"])
    assert counted(stack, before, 1) == 1


def test_a_client_cannot_steer_process(stack):
    """Headers a client sends neither skip a phase policy requires nor open a stream for a
    request that needs none; the upstream never sees them."""
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    before = streams(stack)
    r = chat(stack, token, "write to jane.doe@example.com about it", **SPOOF)
    assert r.status_code == 200, r.text
    assert r.headers["x-authz-process"] == "request_headers,request_body,response_headers"
    echo = r.json()["echo"]
    assert "jane.doe@example.com" not in json.dumps(echo["body"])
    assert not {k for k in echo["headers"] if k.lower() in SPOOF}
    assert counted(stack, before, 1) == 1

    before = streams(stack)
    forced = tool_call(stack, token, **{"x-authz-process": "request_headers,response_headers"})
    assert forced.status_code == 200 and "x-authz-process" not in forced.headers
    assert counted(stack, before, 0) == 0


def test_the_audit_log_tells_both_stories(stack):
    """A request without a Process stream is recorded by its decision record (there is no outcome
    record to wait for); one with a stream gets both, joined by request id."""
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    call = tool_call(stack, token)
    answer = chat(stack, token, "hello")
    call_id, chat_id = call.headers["x-request-id"], answer.headers["x-request-id"]
    audit_dir = stack.stack.workdir / "audit"

    def records() -> list[dict]:
        return [json.loads(line) for f in audit_dir.rglob("audit-*.jsonl") for line in f.read_bytes().splitlines()
                if line.endswith(b"}")]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        mine = [r for r in records() if r.get("request_id") in (call_id, chat_id)]
        if len(mine) >= 3:
            break
        time.sleep(0.1)
    kinds = {(r["request_id"], r["type"]) for r in mine}
    assert kinds == {(call_id, "decision"), (chat_id, "decision"), (chat_id, "outcome")}
    decision = next(r for r in mine if r["request_id"] == call_id)
    assert decision["decision"] == "allow" and decision["facts"]["tool"] == "get_calendar"
