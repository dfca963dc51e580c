"""audit.durability, keyed digests and what an auditor reads: issue 17."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from authz.audit.config import AuditConfig
from authz.audit.digests import BodyDigester, body_digest, derived_key, load_digest_key
from authz.audit.log import AuditLog
from authz.audit.stage import AuditStage
from authz.audit.verify import verify
from authz.cli.audit import explain, export_rows, main
from authz.errors import Answer, Unavailable
from authz.model import Context, Principal, Request
from authz.runtime import Runtime


@pytest.fixture
def key():
    return ed25519.Ed25519PrivateKey.generate()


def cfg(tmp: Path, **kw) -> AuditConfig:
    return AuditConfig(enabled=True, directory=str(tmp), **kw)


def ctx(rid: str, body: bytes = b"") -> Context:
    req = Request(id=rid, method="POST", scheme="http", host="h", path="/v1/chat/completions", headers={},
                  body=body)
    return Context(request=req, principal=Principal(subject="oscar", issuer="https://idp"))


async def start_stage(tmp: Path, key, **kw) -> AuditStage:
    c = cfg(tmp, **kw)
    stage = AuditStage(c, AuditLog(c, instance="i1", key=key))
    await stage.start()
    return stage


def on_disk(tmp: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((tmp / "i1").glob("audit-*.jsonl"))
            for line in f.read_bytes().splitlines()]


async def test_answered_hands_the_record_to_the_os_before_check_returns(tmp_path, key):
    stage = await start_stage(tmp_path, key, durability="answered")
    log = stage.log
    await asyncio.sleep(0.01)  # the writer sleeps until its next tick (100 ms) ...
    started = asyncio.get_running_loop().time()
    await stage.on_decision(ctx("answered-1"), None)
    # ... and Check did not wait for the tick: it woke the writer, whose write is on disk now.
    assert asyncio.get_running_loop().time() - started < log.POLL_SECONDS / 2
    assert "answered-1" in [r.get("request_id") for r in on_disk(tmp_path)]
    await stage.close()


async def test_answered_joins_one_group_commit_while_the_writer_has_a_checkpoint_to_write(
        tmp_path, key, monkeypatch):
    stage = await start_stage(tmp_path, key, durability="answered")
    log = stage.log
    await stage.on_decision(ctx("warm"), None)  # the segment's opening record is written
    log._last_checkpoint = 0.0  # a checkpoint is due: the writer's (it fsyncs in a thread)
    flushes = []
    real_flush = log._flush
    monkeypatch.setattr(log, "_flush", lambda *, sync: (flushes.append(len(log._pending)), real_flush(sync=sync)))
    await asyncio.gather(*(stage.on_decision(ctx(f"g{i}"), None) for i in range(50)))
    assert sum(flushes) >= 50 and len(flushes) <= 3, flushes  # group commit, not 50 writes
    written = [r.get("request_id") for r in on_disk(tmp_path)]
    assert all(f"g{i}" in written for i in range(50))
    await stage.close()
    assert verify([tmp_path], key.public_key()).status == 0


async def test_answered_writes_through_when_the_writer_is_idle(tmp_path, key, monkeypatch):
    """No waiting for the writer's tick or task: the request writes what is queued itself."""
    stage = await start_stage(tmp_path, key, durability="answered")
    log = stage.log
    await stage.on_decision(ctx("warm"), None)
    assert log.offer({"type": "outcome", "request_id": "earlier", "status": 200})  # queued by Process
    woken = []
    monkeypatch.setattr(log, "_wake_writer", lambda: woken.append(1))
    for i in range(5):
        await stage.on_decision(ctx(f"t{i}"), None)
        assert f"t{i}" in [r.get("request_id") for r in on_disk(tmp_path)]
    assert "earlier" in [r.get("request_id") for r in on_disk(tmp_path)] and not woken
    monkeypatch.undo()
    await stage.close()
    assert verify([tmp_path], key.public_key()).status == 0


async def test_a_failed_write_refuses_an_allowed_request_with_answered(tmp_path, key, monkeypatch):
    stage = await start_stage(tmp_path, key, durability="answered")
    log = stage.log

    def broken(*, sync: bool) -> None:
        log._pending = []
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(log, "_flush", broken)
    with pytest.raises(Unavailable) as info:
        await stage.on_decision(ctx("lost"), None)
    assert info.value.reason == "audit.unavailable"
    monkeypatch.undo()
    await stage.close()


async def test_queued_does_not_wait(tmp_path, key):
    stage = await start_stage(tmp_path, key, durability="queued")
    await stage.on_decision(ctx("q"), None)
    assert "q" not in [r.get("request_id") for r in on_disk(tmp_path)]  # still queued
    await stage.close()
    assert "q" in [r.get("request_id") for r in on_disk(tmp_path)]


async def test_fsync_waits_for_the_sync(tmp_path, key, monkeypatch):
    stage = await start_stage(tmp_path, key, durability="fsync")
    synced = []
    import authz.audit.log as log_module

    real = log_module.os.fsync
    monkeypatch.setattr(log_module.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    await stage.on_decision(ctx("f"), None)
    assert synced
    await stage.close()


# --- keyed digests ---------------------------------------------------------------------------------

async def test_the_digest_of_a_short_body_cannot_be_recomputed_without_the_key(tmp_path, key):
    """The README's SSN request: four unknown digits were 10^4 hashes from a record."""
    stage = await start_stage(tmp_path, key)
    body = b'{"messages":[{"role":"user","content":"my ssn is 123-45-6789"}]}'
    await stage.on_decision(ctx("ssn", body), None)
    await stage.close()
    digest = next(r for r in on_disk(tmp_path) if r.get("request_id") == "ssn")["body_hmac"]
    guesses = [b'{"messages":[{"role":"user","content":"my ssn is 123-45-%04d"}]}' % n for n in range(10_000)]
    assert body in guesses
    assert not any(hashlib.sha256(g).hexdigest() == digest for g in guesses)       # the old oracle
    assert not any(hashlib.sha3_256(g).hexdigest() == digest for g in guesses)
    other = derived_key(ed25519.Ed25519PrivateKey.generate())
    assert not any(body_digest(other, g) == digest for g in guesses)               # another key
    assert body_digest(derived_key(key), body) == digest                          # the holder can match
    assert b"123-45-6789" not in b"".join(json.dumps(r).encode() for r in on_disk(tmp_path))


@given(key=st.binary(min_size=32, max_size=200), body=st.binary(max_size=300))
def test_the_writer_digest_is_hmac_sha256(key, body):
    """The writer's digester (padded states worked out once) gives what ``authz audit digest``
    and any HMAC library give, for keys shorter and longer than SHA-256's block."""
    digester = BodyDigester(key)
    assert digester.hex(body) == body_digest(key, body) == hmac.new(key, body, "sha256").hexdigest()
    assert digester.hex(body) == body_digest(key, body)  # the states are copied, never consumed


def test_the_digest_cli_matches_a_body_with_the_key(tmp_path, key, capsys):
    pem = tmp_path / "signing.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    body = tmp_path / "body"
    body.write_bytes(b"hello")
    assert main(["digest", str(body), "--key-file", str(pem)]) == 0
    assert capsys.readouterr().out.strip() == body_digest(derived_key(key), b"hello")
    secret = tmp_path / "digest.key"
    secret.write_bytes(b"k" * 40)
    assert main(["digest", str(body), "--key-file", str(secret)]) == 0
    assert capsys.readouterr().out.strip() == body_digest(b"k" * 40, b"hello")
    secret.write_bytes(b"short")
    with pytest.raises(ValueError):
        load_digest_key(str(secret))


# --- what an auditor reads ----------------------------------------------------------------------------

async def test_a_grant_is_recorded_as_an_answer_and_explained_as_such(tmp_path, key):
    stage = await start_stage(tmp_path, key)
    c = ctx("grant-1")
    c.facts["approval_granted"] = "abc"
    await stage.on_decision(c, Answer(reason="approvals.granted", details={"approval_id": "abc"}))
    await stage.close()
    records = on_disk(tmp_path)
    rec = next(r for r in records if r.get("request_id") == "grant-1")
    assert rec["decision"] == "answer" and rec["facts"]["approval_granted"] == "abc"
    story = explain("grant-1", records)
    assert "ANSWERED it itself with 200: approvals.granted (stage: approval)" in story
    assert "It was not forwarded" in story
    row = export_rows(records)[0]
    assert (row["decision"], row["stage"], row["forwarded"], row["approval"]) == ("answer", "approval", "no", '"abc"')


async def test_explain_names_the_deciding_stage_and_never_claims_forwarding_of_a_refusal(tmp_path, key):
    from authz.errors import Forbidden, TooManyRequests

    stage = await start_stage(tmp_path, key)
    for rid, deny in (("red", Forbidden("x", reason="redaction.blocked")),
                      ("lim", TooManyRequests("x", reason="rate_limited"))):
        c = ctx(rid)
        c.facts.update(rule="general-models", route="general")
        await stage.on_decision(c, deny)
    ok = ctx("ok")
    ok.facts.update(rule="general-models", route="general")
    await stage.on_decision(ok, None)
    await stage.close()
    records = on_disk(tmp_path)
    red, lim, fine = (explain(r, records) for r in ("red", "lim", "ok"))
    assert "by the redaction stage" in red and "rule general-models" not in red and "not forwarded" in red
    assert "by the limits stage" in lim and "not forwarded" in lim
    assert "ALLOWED by rule general-models" in fine and "Check let it through to the general upstream" in fine
    # No Process stream, so no outcome record: the story says where the upstream's answer is.
    assert "No outcome record: Process had no work for it" in fine and "access log" in fine
    assert "No outcome record" not in red and "No outcome record" not in lim
    rows = {r["request_id"]: r for r in export_rows(records)}
    assert rows["red"]["stage"] == "redaction" and rows["ok"]["forwarded"] == "yes"
    assert rows["ok"]["issuer"] == "https://idp" and rows["ok"]["body_hmac"] is None


# --- Runtime.close ------------------------------------------------------------------------------------

async def test_a_stop_right_after_a_reload_seals_the_log(tmp_path, key):
    key_file = tmp_path / "audit.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    path = tmp_path / "authz.yaml"
    body = (f"server:\n  instance_id: i1\naudit:\n  enabled: true\n  directory: {tmp_path}\n"
            f"  signing_key_file: {key_file}\nstore:\n  timeout_ms: {{t}}\n")
    path.write_text(body.format(t=50))
    rt = Runtime(path)
    await rt.start()
    path.write_text(body.format(t=70))
    assert await rt.reload() is True  # the old pipeline now waits 30 s to retire
    new = ed25519.Ed25519PrivateKey.generate()  # and a key rotation, as the README describes
    key_file.write_bytes(new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    assert await rt.reload(cause="key rotated") is True
    await rt.close()
    report = verify([tmp_path], [key.public_key(), new.public_key()])
    assert report.status == 0, report.render()
    assert on_disk(tmp_path)[-1]["type"] == "checkpoint" and on_disk(tmp_path)[-1]["final"] is True


def test_the_default_instance_id_is_host_pid():
    import os
    import socket

    from authz.config import Config

    assert Config().instance_id == f"{socket.gethostname()}-{os.getpid()}"
    assert Config.model_validate({"server": {"instance_id": "pod-a"}}).instance_id == "pod-a"


async def test_a_reload_changes_the_durability_of_the_running_writer(tmp_path, key):
    from authz.audit.log import AuditLogs

    logs = AuditLogs()  # the runtime's registry

    key_file = tmp_path / "audit.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    queued = cfg(tmp_path / "logs", durability="queued", signing_key_file=str(key_file))
    first = AuditStage(queued, logs.get(queued, instance="dur"))
    await first.start()
    await first.on_decision(ctx("before"), None)
    answered = queued.model_copy(update={"durability": "answered"})
    second = AuditStage(answered, logs.get(answered, instance="dur"))  # the reload's new stage
    assert second.log is first.log
    await second.on_decision(ctx("after"), None)
    written = [json.loads(line).get("request_id") for f in (tmp_path / "logs" / "dur").glob("audit-*.jsonl")
               for line in f.read_bytes().splitlines()]
    assert "after" in written  # on disk before Check answered: the new setting holds
    await first.close()
    await second.close()


def test_explain_says_when_process_refused_what_check_let_through():
    records = [{"type": "decision", "request_id": "p", "seq": 2, "instance": "i", "decision": "allow", "status": 200,
                "reason": "ok", "method": "POST", "host": "h", "path": "/v1/chat/completions", "principal": None,
                "facts": {"route": "general"}},
               {"type": "outcome", "request_id": "p", "seq": 3, "instance": "i", "status": 0,
                "facts": {"outcome": "denied"}}]
    story = explain("p", records)
    assert "Check let it through to the general upstream" in story and "Process refused it" in story
