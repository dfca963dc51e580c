"""Issue 6 through real Envoy: a chat request reaches the model with PII masked in a valid JSON
body; a secret in MCP tool arguments is blocked naming its type; approvals across two users."""

import json

import httpx
import pytest

pytestmark = pytest.mark.e2e

MCP = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def test_chat_reaches_the_model_masked_with_a_valid_json_body(stack):
    token = stack.token("oscar", roles=["accounting"])
    content = "Forecast for Acme Corp: mail oscar@acme.com, card 4539 1488 0343 6467, Acme Corp again."
    r = stack.http.post("/v1/chat/completions", headers={**stack.auth(token), "content-type": "application/json"},
                        json={"model": "gpt-general", "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    seen = r.json()["echo"]
    forwarded = seen["body"]  # what the upstream received, parsed as JSON by the upstream
    text = forwarded["messages"][0]["content"]
    assert "Acme Corp" not in text and text.count("[CUSTOMER_1]") == 2
    assert "oscar@acme.com" not in text and "***@acme.com" in text
    assert "**** **** **** 6467" in text and "4539" not in text
    assert forwarded["model"] == "gpt-general"
    assert seen["headers"]["x-authz-sensitivity"] == "pii"
    assert int(seen["headers"]["content-length"]) == len(json.dumps(forwarded, ensure_ascii=False,
                                                                     separators=(",", ":")).encode())


def test_secret_in_mcp_tool_arguments_is_blocked_naming_the_type(stack):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    r = stack.http.post("/mcp", headers={**MCP, **stack.auth(token)},
                        json={"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                              "params": {"name": "get_calendar",
                                         "arguments": {"day": "mon ghp_" + "Z" * 36}}})
    assert r.status_code == 403
    assert r.headers["x-authz-reason"] == "redaction.blocked"
    assert "github_token" in r.text and "ghp_" not in r.text


def test_approval_flow_across_two_users(stack):
    oscar = stack.token("oscar", roles=["accounting"])
    vera = stack.token("vera", roles=["vp"])
    body = {"model": "gpt-general", "messages": [{"role": "user", "content": "Employee SSN 536-22-1234"}]}
    headers = {**stack.auth(oscar), "content-type": "application/json"}
    held = stack.http.post("/v1/chat/completions", headers=headers, json=body)
    assert held.status_code == 403 and held.headers["x-authz-reason"] == "redaction.approval_required"
    approval = held.headers["x-authz-approval-id"]

    # Oscar cannot grant it; Vera (role vp) can, through Envoy.
    assert stack.http.post(f"/authz/approvals/{approval}/grant", headers=stack.auth(oscar)).status_code == 403
    granted = stack.http.post(f"/authz/approvals/{approval}/grant", headers=stack.auth(vera))
    assert granted.status_code == 200 and granted.json()["status"] == "granted"
    # A grant is the sidecar answering, not a refusal: it is not counted as a denial.
    metrics = httpx.get(f"{stack.stack.authz_http}/metrics").text
    assert 'authz_decisions_total{decision="answer",reason="approvals.granted"}' in metrics
    assert 'decision="deny",reason="approvals.granted"' not in metrics

    # Another user cannot ride on it; Oscar's retry passes once, redacted, then not again.
    other = stack.token("mallory", roles=["accounting"])
    r = stack.http.post("/v1/chat/completions", json=body,
                        headers={**stack.auth(other), "content-type": "application/json", "x-authz-approval": approval})
    assert r.status_code == 403
    r = stack.http.post("/v1/chat/completions", json=body, headers={**headers, "x-authz-approval": approval})
    assert r.status_code == 200, r.text
    r = stack.http.post("/v1/chat/completions", json=body, headers={**headers, "x-authz-approval": approval})
    assert r.status_code == 403
