"""MCP revisions read from one message: the 2026-07-28 envelope and its required mirrored
headers, the 2025 revisions' optional ones, and every disagreement refused with -32020."""

from __future__ import annotations

import base64
import json

import pytest

from authz.errors import BadRequest
from authz.request.action import mcp_action
from authz.request.http import Request

META = "io.modelcontextprotocol/protocolVersion"


def request(headers: dict[str, str]) -> Request:
    return Request(id="r", method="POST", scheme="http", host="h", path="/mcp",
                   headers={"content-type": "application/json", **headers})


def modern_body(method: str = "tools/call", **params: object) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": 1, "method": method,
            "params": {**params, "_meta": {META: "2026-07-28"}}}


def b64(text: str) -> str:
    return f"=?base64?{base64.b64encode(text.encode()).decode()}?="


def test_a_2026_request_with_agreeing_headers_is_read_with_its_revision():
    body = modern_body(name="zoë-tool", arguments={}, inputResponses={"a": 1})
    action = mcp_action(request({"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
                                 "mcp-name": b64("zoë-tool")}), body)
    assert (action.kind, action.name, action.revision, action.retry) == ("tools/call", "zoë-tool", "2026-07-28", True)


@pytest.mark.parametrize("headers, reason", [
    ({"mcp-method": "tools/call", "mcp-name": "t"}, "mcp.version_mismatch"),
    ({"mcp-protocol-version": "2025-11-25", "mcp-method": "tools/call", "mcp-name": "t"}, "mcp.version_mismatch"),
    ({"mcp-protocol-version": "2026-07-28", "mcp-name": "t"}, "mcp.header_missing"),
    ({"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}, "mcp.header_missing"),
    ({"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/list", "mcp-name": "t"}, "mcp.header_mismatch"),
    ({"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "other"}, "mcp.header_mismatch"),
    ({"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "=?base64?dA?="},
     "mcp.header_mismatch"),  # not canonical base64: never matches
])
def test_every_disagreement_is_a_header_mismatch(headers, reason):
    with pytest.raises(BadRequest) as info:
        mcp_action(request(headers), modern_body(name="t", arguments={}))
    assert info.value.reason == reason and info.value.status == 400
    assert info.value.details == {"jsonrpc_id": 1, "jsonrpc_code": -32020}


def test_2025_requests_need_no_mirrors_but_those_sent_must_agree():
    body = {"jsonrpc": "2.0", "id": 2, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}}}
    assert mcp_action(request({}), body).revision == "2025-11-25"
    call = {"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": "invoices://1"}}
    action = mcp_action(request({"mcp-protocol-version": "2025-11-25", "mcp-name": "invoices://1"}), call)
    assert (action.name, action.revision) == ("invoices://1", "2025-11-25")
    with pytest.raises(BadRequest):
        mcp_action(request({"mcp-name": "invoices://2"}), call)
    with pytest.raises(BadRequest) as info:  # a header claiming the stateless era on a 2025 body
        mcp_action(request({"mcp-protocol-version": "2026-07-28"}), json.loads(json.dumps(call)))
    assert info.value.reason == "mcp.version_mismatch"
