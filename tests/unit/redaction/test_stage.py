"""The redaction stage: JSON-aware rewriting, actions, block, 413, approvals across two users."""

import json

import pytest

from authz.config import parse_config
from authz.errors import Answer, ConfigError, Forbidden, PayloadTooLarge
from authz.model import Context, Principal, Request
from authz.redaction.stage import RedactionStage, grant
from authz.request import Action
from authz.store import MemoryStore

CONFIG = """redaction:
  enabled: true
  hmac_key: test-key
  max_body_bytes: 4096
  dictionaries: [{name: customer, terms: [Acme Corp, Globex]}]
  rules:
    - id: tools
      match: {paths: ["/mcp"]}
      actions: {secret: block, default: mask}
    - id: llm
      match: {paths: ["/v1/*"]}
      actions: {customer: placeholder, email: hash, card: mask, secret: mask, default: mask}
      approval: {types: [ssn], approver_roles: [vp]}
"""

OSCAR = Principal(subject="oscar", roles=frozenset({"accounting"}))
VERA = Principal(subject="vera", roles=frozenset({"vp"}))


def stage(store=None, text=CONFIG) -> RedactionStage:
    cfg = parse_config(text, env={}).redaction
    return RedactionStage(cfg, store if store is not None else MemoryStore())


def chat_ctx(content: str, principal=OSCAR, headers=None) -> Context:
    body = json.dumps({"model": "gpt-general", "temperature": 0.2, "n": 1,
                       "messages": [{"role": "user", "content": content}]}).encode()
    ctx = Context(request=Request(id="r", method="POST", scheme="http", host="h", path="/v1/chat/completions",
                                  headers={"content-type": "application/json", **(headers or {})}, body=body),
                  principal=principal)
    ctx.view.action = Action(protocol="llm", kind="chat.completions", model="gpt-general")
    return ctx


async def rewrite(s: RedactionStage, ctx: Context) -> dict:
    await s.on_request(ctx)
    return json.loads(ctx.outgoing.encode())


async def test_json_body_is_rewritten_inside_strings_only():
    s = stage()
    ctx = chat_ctx("Acme Corp (oscar@acme.com) paid with 4539 1488 0343 6467; Acme Corp again, not Globex")
    doc = await rewrite(s, ctx)
    content = doc["messages"][0]["content"]
    assert "[CUSTOMER_1] (" in content and "[CUSTOMER_1] again" in content and "[CUSTOMER_2]" in content
    assert "oscar@acme.com" not in content and "[EMAIL:" in content
    assert "**** **** **** 6467" in content
    assert doc["temperature"] == 0.2 and doc["n"] == 1 and doc["model"] == "gpt-general"
    assert ctx.mutations.set_headers["x-authz-sensitivity"] == "pii"
    assert ctx.facts["redaction"]["found"] == {"card": 1, "customer": 3, "email": 1}
    assert ctx.outgoing.changed


async def test_hash_is_stable_across_requests_and_not_reversible():
    s = stage()
    a = (await rewrite(s, chat_ctx("mail oscar@acme.com")))["messages"][0]["content"]
    b = (await rewrite(s, chat_ctx("again oscar@acme.com")))["messages"][0]["content"]
    assert a.split("mail ")[1] == b.split("again ")[1] and "oscar" not in a


async def test_secrets_in_tool_arguments_are_blocked_naming_the_type_only():
    s = stage()
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "x", "arguments": {"note": "use AKIAIOSFODNN7EXAMPLE"}}}).encode()
    ctx = Context(request=Request(id="r", method="POST", scheme="http", host="h", path="/mcp",
                                  headers={"content-type": "application/json"}, body=body), principal=OSCAR)
    ctx.view.action = Action(protocol="mcp", kind="tools/call", name="x")
    with pytest.raises(Forbidden) as info:
        await s.on_request(ctx)
    assert info.value.reason == "redaction.blocked" and info.value.details["entity_types"] == ["aws_key"]
    assert "AKIA" not in info.value.message


async def test_too_large_bodies_are_refused_not_passed_unscanned():
    s = stage()
    with pytest.raises(PayloadTooLarge):
        await s.on_request(chat_ctx("x" * 5000))


async def test_spoofed_sensitivity_header_is_removed():
    s = stage()
    ctx = chat_ctx("nothing here", headers={"x-authz-sensitivity": "none"})
    await s.on_request(ctx)
    assert "x-authz-sensitivity" in ctx.mutations.remove_headers


async def test_approval_flow_across_two_users():
    store = MemoryStore()
    s = stage(store)
    text = "my ssn is 536-22-1234"
    with pytest.raises(Forbidden) as held:
        await s.on_request(chat_ctx(text))
    approval_id = held.value.details["approval_id"]
    assert held.value.reason == "redaction.approval_required"

    # Oscar cannot approve himself, and a retry before the grant is held again.
    grant_ctx = Context(request=Request(id="g", method="POST", scheme="http", host="h",
                                        path=f"/authz/approvals/{approval_id}/grant", headers={}), principal=OSCAR)
    with pytest.raises(Forbidden) as info:
        await s.on_request(grant_ctx)
    assert info.value.reason == "approvals.not_an_approver"
    with pytest.raises(Forbidden):
        await s.on_request(chat_ctx(text, headers={"x-authz-approval": approval_id}))

    # A second request is a second approval; grant the first one as Vera.
    with pytest.raises(Forbidden) as again:
        await s.on_request(chat_ctx(text))
    approval_id = again.value.details["approval_id"]
    vera_ctx = Context(request=Request(id="g", method="POST", scheme="http", host="h",
                                       path=f"/authz/approvals/{approval_id}/grant", headers={}), principal=VERA)
    with pytest.raises(Answer) as answered:
        await s.on_request(vera_ctx)
    assert answered.value.status == 200 and answered.value.details["for"] == "oscar"

    # Another user, or another body, cannot use it.
    with pytest.raises(Forbidden):
        await s.on_request(chat_ctx(text, principal=Principal(subject="mallory"),
                                    headers={"x-authz-approval": approval_id}))
    with pytest.raises(Forbidden):
        await s.on_request(chat_ctx(text + " and more", headers={"x-authz-approval": approval_id}))
    # Oscar's retry passes once ...
    ok = chat_ctx(text, headers={"x-authz-approval": approval_id})
    await s.on_request(ok)
    assert ok.facts["redaction"]["approval"]["approved_by"] == "vera"
    # ... and only once.
    with pytest.raises(Forbidden):
        await s.on_request(chat_ctx(text, headers={"x-authz-approval": approval_id}))


async def test_operator_grant():
    store = MemoryStore()
    s = stage(store)
    with pytest.raises(Forbidden) as held:
        await s.on_request(chat_ctx("ssn 536-22-1234"))
    record = await grant(store, held.value.details["approval_id"], approver="operator")
    assert record["subject"] == "oscar"
    await s.on_request(chat_ctx("ssn 536-22-1234", headers={"x-authz-approval": held.value.details["approval_id"]}))


def test_catastrophic_patterns_cannot_stall_and_bad_ones_are_refused():
    import time

    s = stage(text=CONFIG.replace("  rules:", "  patterns: [{name: evil, regex: '(a+)+$'}]\n  rules:"))
    started = time.perf_counter()
    found = s.scanner.scan("a" * 30_000 + "b")
    assert time.perf_counter() - started < 1.0 and not found
    with pytest.raises(ConfigError) as info:
        parse_config("redaction:\n  patterns: [{name: bad, regex: '(?<=x)y'}]\n", env={})
    assert "redaction.patterns[0].regex" in str(info.value) and "RE2" in str(info.value)
    with pytest.raises(ConfigError, match="unknown detector"):
        parse_config("redaction:\n  detectors: [email, nope]\n", env={})


async def test_cli_grant_through_a_shared_redis(tmp_path, redis_url, capsys):
    import asyncio

    from authz.cli.approvals import main
    from authz.store import RedisStore

    prefix = f"appr{id(tmp_path)}:"
    cfg = tmp_path / "authz.yaml"
    cfg.write_text(f"store: {{redis_url: '{redis_url}', key_prefix: '{prefix}'}}\n" + CONFIG)
    store = RedisStore(redis_url, timeout=2, prefix=prefix)
    s = stage(store)
    with pytest.raises(Forbidden) as held:
        await s.on_request(chat_ctx("ssn 536-22-1234"))
    approval_id = held.value.details["approval_id"]
    assert await asyncio.to_thread(main, ["grant", approval_id, "-c", str(cfg), "--as", "ops"]) == 0
    assert '"status": "granted"' in capsys.readouterr().out
    await s.on_request(chat_ctx("ssn 536-22-1234", headers={"x-authz-approval": approval_id}))
    assert await asyncio.to_thread(main, ["grant", "nope", "-c", str(cfg)]) == 1
    await store.close()


def redact_plain(red, raw: bytes, content_type: str) -> bytes:
    """``raw`` sent to a plain path, read by the request view, redacted, written back."""
    from authz.request import Outgoing, Reader

    view = Reader().read(Request(id="r", method="POST", scheme="http", host="h", path="/upload",
                                 headers={"content-type": content_type}, body=raw))
    out = Outgoing(view.body)
    new = red.rewrite(view.body.kind, out.document)
    if red.changed:
        out.replace(new)
    return out.encode()


def test_text_and_form_bodies_are_redacted_too():
    from authz.redaction.redactor import Redactor

    s = stage()
    red = Redactor(s.scanner, lambda t: "mask")
    assert redact_plain(red, b"mail oscar@acme.com now", "text/plain") == b"mail ***@acme.com now"
    red = Redactor(s.scanner, lambda t: "placeholder")
    out = redact_plain(red, b"note=Acme+Corp+and+Globex&id=7", "application/x-www-form-urlencoded")
    assert out == b"note=%5BCUSTOMER_1%5D+and+%5BCUSTOMER_2%5D&id=7"
    untouched = b'{"a": 1, "b": [true, null, 2.5]}'
    assert redact_plain(Redactor(s.scanner, lambda t: "mask"), untouched, "application/json") == untouched


def test_a_json_body_with_an_unpaired_surrogate_is_redacted_not_crashed_on():
    from authz.redaction.redactor import Redactor

    red = Redactor(stage().scanner, lambda t: "mask")
    out = redact_plain(red, b'{"note": "mail oscar@acme.com \\ud800", "who": "\xc3\xa9"}', "application/json")
    assert json.loads(out) == {"note": "mail ***@acme.com \ud800", "who": "é"}  # escaped, kept exactly
