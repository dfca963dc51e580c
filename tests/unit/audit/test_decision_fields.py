"""The request path hands a decision to the log as plain fields and the writer encodes it: the
line written is byte for byte the canonical record ``decision_record`` describes (the way every
other record is written), whatever the principal, action, outcome and facts."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from authz.audit.config import AuditConfig
from authz.audit.lines import check_line
from authz.audit.log import AuditLog
from authz.audit.stage import AuditStage, decision_fields, decision_record
from authz.audit.verify import verify
from authz.errors import Answer, Forbidden
from authz.model import ANONYMOUS, Context, Principal, Request
from authz.request import Action

OSCAR = Principal(subject="oscar", issuer="https://idp", tenant=None, client="claude", credential="jwt")


def ctx(*, principal=OSCAR, action=None, body=b'{"x":1}', facts=None, path="/mcp?x=1") -> Context:
    c = Context(request=Request(id="req-1", method="POST", scheme="http", host="h", path=path, headers={},
                                body=body), principal=principal)
    if action is not None:
        c.view.action = action
    c.facts.update(facts or {})
    return c


CASES = {
    "allow": (ctx(facts={"rule": "r", "policy": {"allowed": True, "rule": "r", "reason": "ok"},
                         "identity": {"issuer": "https://idp", "credential": "jwt", "cache_hit": True}}), None),
    "deny": (ctx(action=Action(protocol="mcp", kind="tools/call", name="get_weather")),
             Forbidden("no", reason="policy.denied")),
    "answer": (ctx(action=Action(protocol="llm", kind="chat.completions", model="gpt-x")),
               Answer(reason="approvals.granted", details={"approval_id": "abc"})),
    "anonymous, empty body": (ctx(principal=ANONYMOUS, body=b""), None),
    "non-ASCII and escapes": (ctx(principal=Principal(subject='zoë "q" \\ \n\t\x01', issuer="i", tenant="ténant"),
                                  facts={"route": "ü\u2028", "limits": {"b": [1, 2.5, None], "a": {"z": 1, "y": 2}}},
                                  path="/mcp/ü"), None),
    "unencodable facts (a 70-bit integer)": (ctx(facts={"limits": {"n": 2**70}}), None),
    "lone surrogate in a claim": (ctx(principal=Principal(subject="x\ud800y", issuer="i")), None),
}


async def written_decision(directory, key, offer) -> dict:
    cfg = AuditConfig(enabled=True, directory=str(directory), durability="queued")
    log = AuditLog(cfg, instance="i1", key=key)
    await log.start()
    await offer(log, cfg)
    await log.close()
    lines = [line for f in sorted((directory / "i1").glob("audit-*.jsonl")) for line in f.read_bytes().splitlines()]
    (line,) = [line for line in lines if b'"type":"decision"' in line]
    written = json.loads(line)
    not_canonical, content_hash = check_line(line, written)
    assert not not_canonical and written["hash"] == content_hash
    assert verify([directory], key.public_key()).status == 0
    for k in ("seq", "prev", "hash", "segment"):
        written.pop(k)
    return written


@pytest.mark.parametrize("case", list(CASES))
async def test_the_writer_writes_what_offering_the_record_wrote(tmp_path, case):
    """The same decision through the record (the way every other record goes) and through its
    fields: the same canonical record, body digest included."""
    c, deny = CASES[case]
    key = ed25519.Ed25519PrivateKey.generate()

    async def as_record(log, cfg):
        assert log.offer(decision_record(c, deny, 1_700_000_000_000), digest=("body_hmac", c.request.body))

    async def as_fields(log, cfg):
        fields = decision_fields(c, deny, 1_700_000_000_000)
        if case == "unencodable facts (a 70-bit integer)":
            assert fields is None  # the stage offers the record itself then
            assert log.offer(decision_record(c, deny, 1_700_000_000_000), digest=("body_hmac", c.request.body))
        else:
            assert log.offer_decision(fields)

    assert await written_decision(tmp_path / "a", key, as_fields) == await written_decision(tmp_path / "b", key, as_record)


async def test_the_stage_offers_fields_and_falls_back_to_the_record(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    for case in ("allow", "unencodable facts (a 70-bit integer)"):
        c, deny = CASES[case]

        async def through_stage(log, cfg, c=c, deny=deny):
            await AuditStage(cfg, log).on_decision(c, deny)
        written = await written_decision(tmp_path / case.split()[0], key, through_stage)
        assert written["request_id"] == "req-1" and written["facts"] == json.loads(json.dumps(c.facts))


async def test_the_body_digest_is_keyed_and_absent_for_an_empty_body(tmp_path):
    from authz.audit.digests import body_digest

    cfg = AuditConfig(enabled=True, directory=str(tmp_path))
    log = AuditLog(cfg, instance="i1", key=ed25519.Ed25519PrivateKey.generate())
    await log.start()
    assert log.offer_decision(decision_fields(ctx(body=b"abc"), None, 1))
    assert log.offer_decision(decision_fields(ctx(body=b""), None, 2))
    await log.close()
    records = [json.loads(line) for f in sorted((tmp_path / "i1").glob("audit-*.jsonl"))
               for line in f.read_bytes().splitlines()]
    decisions = [r for r in records if r["type"] == "decision"]
    assert [d["body_hmac"] for d in decisions] == [body_digest(log.digest_key, b"abc"), None]
