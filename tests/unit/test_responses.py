"""Refusals in the caller's own protocol: one renderer, shaped by what the request was read as."""

from __future__ import annotations

import json

from authz.errors import Forbidden, TooManyRequests, Unauthenticated
from authz.model import Action, Request
from authz.responses import render_denial


def req(path: str, rid: str = "rid-1") -> Request:
    return Request(id=rid, method="POST", scheme="http", host="h", path=path, headers={})


def body(denial) -> dict:
    return json.loads(denial.body)


def test_openai_shape_carries_the_reason_as_code_and_the_message():
    deny = Forbidden("only doctors may use gpt-medical", reason="policy.role_required")
    d = render_denial(deny, req("/v1/chat/completions"), protocol="llm",
                      action=Action(protocol="llm", kind="chat.completions", model="gpt-medical"))
    assert d.status == 403 and d.headers["x-authz-reason"] == "policy.role_required"
    assert d.headers["x-request-id"] == "rid-1"
    assert body(d) == {"error": {"message": "only doctors may use gpt-medical", "type": "permission_error",
                                 "code": "policy.role_required", "param": None, "request_id": "rid-1"}}


def test_anthropic_shape_for_messages_even_when_the_body_was_unreadable():
    deny = TooManyRequests("slow down", reason="limits.rate")
    for action in (Action(protocol="llm", kind="messages", model="claude"), None):
        d = render_denial(deny, req("/v1/messages"), protocol="llm", action=action)
        assert body(d) == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down",
                                                      "code": "limits.rate", "request_id": "rid-1"}}


def test_details_ride_inside_the_error_object():
    deny = Forbidden("needs approval", reason="redaction.approval_required", details={"approval_id": "a1"})
    d = render_denial(deny, req("/v1/chat/completions"), protocol="llm")
    assert body(d)["error"]["approval_id"] == "a1" and body(d)["error"]["code"] == "redaction.approval_required"


def test_mcp_refusals_are_jsonrpc_errors_with_the_id_as_sent():
    deny = Unauthenticated("sign in", reason="token.missing")
    action = Action(protocol="mcp", kind="tools/call", name="x", jsonrpc_id="abc")
    d = render_denial(deny, req("/mcp"), protocol="mcp", action=action)
    b = body(d)
    assert b["jsonrpc"] == "2.0" and b["id"] == "abc" and b["error"]["message"] == "sign in"
    assert b["error"]["data"]["error"] == "token.missing"


def test_plain_http_keeps_the_flat_shape():
    d = render_denial(Forbidden("no", reason="policy.denied"), req("/api"), protocol="http")
    assert body(d) == {"error": "policy.denied", "message": "no", "request_id": "rid-1"}
