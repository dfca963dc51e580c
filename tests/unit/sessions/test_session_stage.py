"""Session binding with the memory store (the Redis case runs through Envoy in
tests/e2e/test_mcp_sessions.py): recorded from the answer, honoured for its owner only."""

from __future__ import annotations

import json

import pytest

from authz.envoy.handoff import decode, encode
from authz.model import Context, Exchange, Principal, Request
from authz.sessions.config import SessionsConfig
from authz.sessions.stage import SessionNotFound, SessionStage, session_key
from authz.store.memory import MemoryStore

ALICE = Principal(subject="alice", issuer="https://idp", client="chatgpt")
ALICE_OTHER_CLIENT = Principal(subject="alice", issuer="https://idp", client="evil-agent")
BOB = Principal(subject="bob", issuer="https://idp", client="chatgpt")


def mcp(method: str, session: str | None = None, http_method: str = "POST") -> Request:
    headers = {"content-type": "application/json"}
    if session:
        headers["mcp-session-id"] = session
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}).encode()
    return Request(id="r", method=http_method, scheme="http", host="h", path="/mcp", headers=headers,
                   body=body if http_method == "POST" else b"")


async def opened(stage: SessionStage, principal: Principal, session: str) -> None:
    ctx = Context(request=mcp("initialize"), principal=principal)
    await stage.on_request(ctx)
    handoff = decode(encode(ctx.handoff)["authz"])  # what Process receives
    assert handoff.needed and handoff.session_owner
    ex = Exchange(request=ctx.request, handoff=handoff, response_status=200,
                  response_headers={"mcp-session-id": session})
    await stage.on_response_headers(ex)
    assert ex.facts["mcp_session"] == "bound"


async def test_only_the_principal_that_opened_a_session_may_use_it():
    store = MemoryStore()
    stage = SessionStage(SessionsConfig(), store)
    await opened(stage, ALICE, "s-1")
    assert await store.get(session_key("s-1")) is not None and await store.get("s-1") is None  # hashed
    await stage.on_request(Context(request=mcp("tools/call", "s-1"), principal=ALICE))
    for who in (BOB, ALICE_OTHER_CLIENT):
        for verb in ("POST", "GET", "DELETE"):
            ctx = Context(request=mcp("tools/list", "s-1", verb), principal=who)
            with pytest.raises(SessionNotFound) as info:
                await stage.on_request(ctx)
            assert info.value.status == 404 and ctx.facts["mcp_session"] == "other_principal"
    with pytest.raises(SessionNotFound):  # never recorded (or lost with a restarted memory store)
        await stage.on_request(Context(request=mcp("tools/list", "s-2"), principal=ALICE))


async def test_a_second_answer_with_the_same_id_cannot_move_the_session():
    store = MemoryStore()
    stage = SessionStage(SessionsConfig(), store)
    await opened(stage, ALICE, "s-1")
    ctx = Context(request=mcp("initialize"), principal=BOB)
    await stage.on_request(ctx)
    await stage.on_response_headers(Exchange(request=ctx.request, handoff=ctx.handoff, response_status=200,
                                             response_headers={"mcp-session-id": "s-1"}))
    with pytest.raises(SessionNotFound):
        await stage.on_request(Context(request=mcp("tools/list", "s-1"), principal=BOB))


async def test_other_protocols_and_stateless_requests_are_untouched():
    stage = SessionStage(SessionsConfig(), MemoryStore())
    ctx = Context(request=mcp("tools/list"), principal=BOB)
    await stage.on_request(ctx)
    assert not ctx.handoff.needed
    llm = Request(id="r", method="POST", scheme="http", host="h", path="/v1/chat/completions",
                  headers={"mcp-session-id": "s-1"}, body=b'{"model":"m"}')
    await stage.on_request(Context(request=llm, principal=BOB))
