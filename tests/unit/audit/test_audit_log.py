"""The audit chain: written by the real writer, verified offline; tampering of every kind is
found with its location; a crash loses at most the unsealed tail, reported precisely."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from authz.audit.config import AuditConfig
from authz.audit.digests import body_digest
from authz.audit.log import AuditLog
from authz.audit.stage import AuditStage
from authz.audit.verify import verify
from authz.cli.audit import explain, export_rows, main
from authz.errors import Forbidden, Unavailable
from authz.model import Context, Exchange, Principal, Request
from authz.request import Action


def cfg(tmp: Path, **kw) -> AuditConfig:
    return AuditConfig(enabled=True, directory=str(tmp), **{"checkpoint_every_records": 5, **kw})


async def write(tmp: Path, n: int, key, *, close: bool = True, **kw) -> AuditLog:
    log = AuditLog(cfg(tmp, **kw), instance="i1", key=key)
    await log.start()
    for i in range(n):
        assert log.offer({"type": "decision", "request_id": f"r{i}", "decision": "allow", "status": 200})
    await log.drained()
    if close:
        await log.close()
    return log


@pytest.fixture
def key():
    return ed25519.Ed25519PrivateKey.generate()


def lines(tmp: Path) -> tuple[Path, list[bytes]]:
    f = sorted((tmp / "i1").glob("audit-*.jsonl"))[-1]
    return f, f.read_bytes().splitlines(keepends=True)


async def test_an_intact_closed_log_verifies(tmp_path, key):
    await write(tmp_path, 12, key)
    report = verify([tmp_path], key.public_key())
    assert report.status == 0, report.render()
    assert report.records == 12 + 1 + 3  # records, the segment start, checkpoints (2 + final)


async def test_a_restart_continues_the_chain(tmp_path, key):
    await write(tmp_path, 3, key)
    await write(tmp_path, 4, key)
    report = verify([tmp_path], key.public_key())
    assert report.status == 0, report.render()
    seqs = [json.loads(line)["seq"] for f in sorted((tmp_path / "i1").glob("*.jsonl"))
            for line in f.read_bytes().splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))


def tamper(tmp_path: Path, how: str) -> None:
    f, ls = lines(tmp_path)
    if how == "edit":
        rec = json.loads(ls[3])
        rec["decision"] = "deny"
        ls[3] = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
    elif how == "delete":
        del ls[4]
    elif how == "swap":
        ls[3], ls[4] = ls[4], ls[3]
    elif how == "truncate":
        ls = ls[:9]
    elif how == "signature":
        for i, line in enumerate(ls):
            rec = json.loads(line)
            if rec["type"] == "checkpoint":
                other = ed25519.Ed25519PrivateKey.generate()
                import base64

                from authz.audit.log import checkpoint_message

                rec["sig"] = base64.b64encode(other.sign(checkpoint_message(rec))).decode()
                ls[i] = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
                break
    f.write_bytes(b"".join(ls))


@pytest.mark.parametrize("how, expect", [
    ("edit", "does not match its hash"),
    ("delete", "gap: records missing"),
    ("swap", "does not follow the previous record"),
    ("truncate", "has no final checkpoint"),
    ("signature", "checkpoint signature is not valid"),
])
async def test_tampering_is_detected_with_its_location(tmp_path, key, how, expect):
    await write(tmp_path, 12, key)
    tamper(tmp_path, how)
    report = verify([tmp_path], key.public_key())
    text = report.render()
    assert report.status != 0 and expect in text, text
    assert "audit-" in text  # the file is named
    if how != "truncate":
        assert report.status == 1 and ".jsonl:" in text  # file:line


async def test_cli_verify_exit_codes(tmp_path, key, capsys):
    from cryptography.hazmat.primitives import serialization

    await write(tmp_path, 6, key)
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    assert main(["verify", str(tmp_path / "i1"), "--public-key", str(pub)]) == 0
    tamper(tmp_path, "edit")
    assert main(["verify", str(tmp_path / "i1"), "--public-key", str(pub)]) == 1
    assert "TAMPERED" in capsys.readouterr().out


CRASH_WRITER = textwrap.dedent("""
    import asyncio, sys
    from cryptography.hazmat.primitives import serialization
    from authz.audit.config import AuditConfig
    from authz.audit.log import AuditLog
    async def main():
        key = serialization.load_pem_private_key(open(sys.argv[2], "rb").read(), None)
        log = AuditLog(AuditConfig(enabled=True, directory=sys.argv[1], checkpoint_every_records=50,
                                   checkpoint_every_seconds=60), instance="i1", key=key)
        await log.start()
        i = 0
        while True:
            while log.offer({"type": "decision", "request_id": f"r{i}", "pad": "x" * 200}):
                i += 1
            await asyncio.sleep(0)
    asyncio.run(main())
""")


def test_kill_9_loses_only_the_unsealed_tail_and_verify_says_which(tmp_path, key):
    from cryptography.hazmat.primitives import serialization

    pem = tmp_path / "key.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(tmp_path), str(pem)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            files = list((tmp_path / "i1").glob("*.jsonl"))
            if files and files[0].stat().st_size > 200_000:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    report = verify([tmp_path], key.public_key())
    text = report.render()
    assert report.status == 2 and not report.problems, text   # intact up to the last checkpoint
    sealed = report.sealed_through["i1"]
    assert sealed >= 50
    assert f"after the last checkpoint (seq {sealed})" in text, text
    # Everything before the last checkpoint is there, in order.
    seqs = [json.loads(line)["seq"] for line in lines(tmp_path)[1] if line.endswith(b"\n")]
    assert seqs[: sealed] == list(range(1, sealed + 1))


def ctx_for(token_body: bytes) -> Context:
    req = Request(id="req-42", method="POST", scheme="http", host="h", path="/v1/chat/completions?key=sk-secret",
                  headers={"authorization": "Bearer eyJsecret.token.value"}, body=token_body)
    ctx = Context(request=req, principal=Principal(subject="oscar", issuer="https://idp", tenant="acme",
                                                    client="chatgpt"))
    ctx.view.action = Action(protocol="llm", kind="chat.completions", model="gpt-medical")
    ctx.facts.update(rule="medical-models", policy={"allowed": False, "reason": "policy.role_required",
                                                    "rule": "medical-models", "inputs": {"secret": "no"}},
                     identity={"issuer": "https://idp", "credential": "jwt", "cache_hit": True})
    return ctx


async def test_records_carry_no_token_and_no_body_content(tmp_path, key):
    log = AuditLog(cfg(tmp_path), instance="i1", key=key)
    stage = AuditStage(cfg(tmp_path), log)
    await stage.start()
    body = b'{"messages":[{"content":"card 4111 1111 1111 1111, mail oscar@acme.com"}]}'
    await stage.on_decision(ctx_for(body), Forbidden("no", reason="policy.role_required"))
    ex = Exchange(request=ctx_for(body).request, request_body=body, response_status=403)
    ex.state["forwarded_body"] = body
    await stage.on_complete(ex)
    await stage.close()
    data = b"".join(lines(tmp_path)[1])
    for secret in (b"eyJsecret", b"4111 1111", b"oscar@acme.com", b"sk-secret", b"Bearer"):
        assert secret not in data
    by_type = {r["type"]: r for r in map(json.loads, data.splitlines())}
    assert by_type["decision"]["body_hmac"] == body_digest(log.digest_key, body)
    assert by_type["outcome"]["forwarded_body_hmac"] == body_digest(log.digest_key, body)
    assert b'"subject":"oscar"' in data and b"policy.role_required" in data
    story = explain("req-42", [json.loads(x) for x in data.splitlines()])
    assert "user oscar of tenant acme via client chatgpt" in story
    assert "DENIED with 403: policy.role_required (rule medical-models)" in story
    assert "model gpt-medical" in story and "answered 403" in story
    rows = export_rows([json.loads(x) for x in data.splitlines()])
    assert [r["type"] for r in rows] == ["decision", "outcome"] and rows[0]["subject"] == "oscar"


async def test_a_full_queue_fails_closed_for_allowed_requests(tmp_path, key):
    c = cfg(tmp_path, queue_size=1, on_full="fail_closed", durability="queued")
    log = AuditLog(c, instance="i1", key=key)  # not started: nothing drains the queue
    stage = AuditStage(c, log)
    await stage.on_decision(ctx_for(b""), None)
    with pytest.raises(Unavailable) as info:
        await stage.on_decision(ctx_for(b""), None)
    assert info.value.reason == "audit.unavailable" and info.value.status == 503
    # a denial is still answered (already refused); the missing record is counted and logged
    await stage.on_decision(ctx_for(b""), Forbidden("x"))


async def test_block_waits_briefly_then_fails_closed(tmp_path, key):
    c = cfg(tmp_path, queue_size=1, on_full="block", block_ms=50, durability="queued")
    stage = AuditStage(c, AuditLog(c, instance="i1", key=key))
    await stage.on_decision(ctx_for(b""), None)
    started = asyncio.get_running_loop().time()
    with pytest.raises(Unavailable):
        await stage.on_decision(ctx_for(b""), None)
    assert asyncio.get_running_loop().time() - started >= 0.04


async def test_block_wakes_the_writer_and_gets_in_when_it_makes_room(tmp_path, key):
    # The writer ticks every 5 s here, longer than block_ms: only a full queue waking it at once
    # lets each request in. (Both far from the scheduling delays of a loaded machine.)
    c = cfg(tmp_path, queue_size=1, on_full="block", block_ms=2000, durability="queued")
    log = AuditLog(c, instance="i1", key=key)
    log.POLL_SECONDS = 5.0
    await log.start()
    await asyncio.sleep(0.01)  # the writer is asleep until its next tick
    stage = AuditStage(c, log)
    started = asyncio.get_running_loop().time()
    for _ in range(3):
        await stage.on_decision(ctx_for(b""), None)  # no Unavailable
    assert asyncio.get_running_loop().time() - started < log.POLL_SECONDS
    await log.close()
    assert verify([tmp_path], key.public_key()).status == 0
    assert [r["type"] for r in map(json.loads, lines(tmp_path)[1])].count("decision") == 3


async def test_a_rotated_audit_key_verifies_with_both_keys_and_not_with_one(tmp_path, key):
    from cryptography.hazmat.primitives import serialization

    await write(tmp_path, 7, key)                       # segment 1, signed with the old key
    new = ed25519.Ed25519PrivateKey.generate()
    await write(tmp_path, 4, new)                       # segment 2 after a restart with a new key
    report = verify([tmp_path], [key.public_key(), new.public_key()])
    assert report.status == 0, report.render()
    only_new = verify([tmp_path], new.public_key())
    assert only_new.status == 1 and "not among the keys given" in only_new.render()
    pems = []
    for i, k in enumerate((key, new)):
        pem = tmp_path / f"pub{i}.pem"
        pem.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
        pems += ["--public-key", str(pem)]
    assert main(["verify", str(tmp_path / "i1"), *pems]) == 0
    assert main(["verify", str(tmp_path / "i1"), *pems[2:]]) == 1


async def test_a_key_rotated_while_running_seals_with_the_old_key_and_signs_on_with_the_new(tmp_path, key):
    from cryptography.hazmat.primitives import serialization

    from authz.audit.log import AuditLogs, key_id

    logs = AuditLogs()  # the runtime's registry

    def pem(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    key_file = tmp_path / "audit.pem"
    key_file.write_bytes(pem(key))
    config = cfg(tmp_path / "logs", signing_key_file=str(key_file))
    log = logs.get(config, instance="rot")
    log.users += 1
    await log.start()
    for i in range(3):
        assert log.offer({"type": "decision", "request_id": f"a{i}", "decision": "allow", "status": 200})
    await log.drained()
    new = ed25519.Ed25519PrivateKey.generate()
    key_file.write_bytes(pem(new))
    assert logs.get(config, instance="rot") is log  # a reload's new stage shares the running writer
    for i in range(3):
        assert log.offer({"type": "decision", "request_id": f"b{i}", "decision": "allow", "status": 200})
    await log.drained()
    await asyncio.sleep(log.POLL_SECONDS * 3)
    assert log.kid == key_id(new.public_key())
    assert {k["kid"] for k in log.jwks()} == {key_id(key.public_key()), key_id(new.public_key())}
    log.users -= 1
    await log.close()
    both = verify([tmp_path / "logs"], [key.public_key(), new.public_key()])
    assert both.status == 0, both.render()
    assert verify([tmp_path / "logs"], [key.public_key()]).status == 1
    records = [json.loads(line) for f in sorted((tmp_path / "logs" / "rot").glob("*.jsonl"))
               for line in f.read_bytes().splitlines()]
    rotated = [r for r in records if r["type"] == "key_rotated"]
    assert len(rotated) == 1 and rotated[0]["previous_kid"] == key_id(key.public_key())


async def test_one_unencodable_record_neither_stops_the_writer_nor_breaks_the_chain(tmp_path, key):
    log = AuditLog(cfg(tmp_path), instance="i1", key=key)
    await log.start()
    assert log.offer({"type": "decision", "request_id": "r1", "action": {"name": "\ud800evil"}})
    assert log.offer({"type": "decision", "request_id": "r2", "facts": {"oops": object()}})  # a bug of ours
    assert log.offer({"type": "decision", "request_id": "r3", "decision": "allow"})
    await log.drained()
    assert not log._writer.done()  # still writing
    await log.close()
    assert verify([tmp_path], key.public_key()).status == 0
    records = [json.loads(x) for x in lines(tmp_path)[1]]
    by_id = {r.get("request_id"): r for r in records}
    assert by_id["r1"]["action"]["name"] == "\ufffdevil"
    assert by_id["r2"]["type"] == "unencodable" and by_id["r2"]["record_type"] == "decision"
    assert by_id["r3"]["decision"] == "allow"


# Records are encoded when offered, with stand-ins for seq and prev that the writer fills in:
# the line written must be byte for byte the canonical form of the record it holds.
AWKWARD = [
    {"type": "decision", "request_id": "u1", "action": {"name": "caf\u00e9 \u2603 \U0001f600 \u65e5\u672c"}},
    {"type": "decision", "request_id": "u2", "path": "/a\"b\\c\n\t\u0001\u007f\u2028"},
    {"type": "decision", "request_id": "u3", "facts": {"prev": "x", "seq": 9, "v": 2, "segment": "s",
                                                       "limits": {"zeta": [1, None, True], "alpha": {}}}},
    {"type": "outcome", "request_id": "u4", "status": 200, "facts": {"usage": {"total": 2 ** 63 - 1}}},
    {"type": "decision", "request_id": "u5", "facts": {"usage": {"total": 2 ** 70}}},  # orjson refuses
    {"type": "decision", "request_id": "u6", "seq": 1, "prev": "f" * 64, "v": 9, "instance": "evil",
     "segment": "evil"},  # the chain's fields are the log's, whatever a record brings
]


async def test_every_line_is_the_canonical_form_of_its_record(tmp_path, key):
    from authz.audit.canonical import canonical

    log = AuditLog(cfg(tmp_path, checkpoint_every_records=1000), instance="i1", key=key)
    await log.start()
    for record in AWKWARD:
        assert log.offer(json.loads(json.dumps(record)))
    await log.close()
    assert verify([tmp_path], key.public_key()).status == 0
    raw = lines(tmp_path)[1]
    records = [json.loads(x) for x in raw]
    digests = [r.pop("hash") for r in records]
    for line, record, digest in zip(raw, records, digests, strict=True):
        assert line == canonical(record)[:-1] + b',"hash":"' + digest.encode() + b'"}\n'
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert [r["prev"] for r in records[1:]] == digests[:-1]
    by_id = {r.get("request_id"): r for r in records}
    assert by_id["u1"]["action"]["name"] == AWKWARD[0]["action"]["name"]
    assert by_id["u2"]["path"] == AWKWARD[1]["path"]
    assert by_id["u3"]["facts"]["prev"] == "x" and by_id["u3"]["facts"]["seq"] == 9
    assert by_id["u5"]["facts"]["usage"]["total"] == 2 ** 70
    assert (by_id["u6"]["instance"], by_id["u6"]["segment"], by_id["u6"]["v"]) == ("i1", log.segment, 1)
    assert by_id["u6"]["seq"] == by_id["u5"]["seq"] + 1 and by_id["u6"]["prev"] != "f" * 64


async def test_close_neither_hangs_nor_loses_records_when_the_writer_has_died(tmp_path, key, caplog):
    log = AuditLog(cfg(tmp_path), instance="i1", key=key)
    await log.start()
    log._next_key = object()  # a bug's stand-in: the writer's next round raises and the task ends
    await asyncio.sleep(log.POLL_SECONDS * 2)
    assert log._writer.done()
    for i in range(3):
        assert log.offer({"type": "decision", "request_id": f"late{i}", "decision": "allow", "status": 200})
    await asyncio.wait_for(log.close(), 5)
    assert "the audit writer had stopped" in caplog.text
    assert verify([tmp_path], key.public_key()).status == 0
    written = [json.loads(x).get("request_id") for x in lines(tmp_path)[1]]
    assert [r for r in written if r and r.startswith("late")] == ["late0", "late1", "late2"]


async def test_body_digests_whichever_way_the_record_is_encoded(tmp_path, key):
    log = AuditLog(cfg(tmp_path), instance="i1", key=key)
    await log.start()
    body = b'{"q": "caf\xc3\xa9"}'
    assert log.offer({"type": "decision", "request_id": "fast"}, digest=("body_hmac", body))
    assert log.offer({"type": "decision", "request_id": "none"}, digest=("body_hmac", b""))
    assert log.offer({"type": "decision", "request_id": "slow", "n": 2 ** 70},  # orjson refuses
                     digest=("body_hmac", body))
    await log.close()
    assert verify([tmp_path], key.public_key()).status == 0
    by_id = {r.get("request_id"): r for r in map(json.loads, lines(tmp_path)[1])}
    assert by_id["fast"]["body_hmac"] == by_id["slow"]["body_hmac"] == body_digest(log.digest_key, body)
    assert by_id["none"]["body_hmac"] is None


async def test_a_queued_record_that_cannot_be_linked_is_replaced_by_a_stand_in(tmp_path, key):
    log = AuditLog(cfg(tmp_path), instance="i1", key=key)  # not started: the test edits the queue
    assert log.offer({"type": "decision", "request_id": "broken"})
    assert log.offer({"type": "decision", "request_id": "fine"})
    kind, body, data = log._queue[0]
    log._queue[0] = (kind, body.replace(log._prev_token, b"x"), data)  # a bug's stand-in
    await log.start()
    await log.close()
    assert verify([tmp_path], key.public_key()).status == 0
    by_id = {r.get("request_id"): r for r in map(json.loads, lines(tmp_path)[1])}
    assert by_id["broken"]["type"] == "unencodable" and by_id["broken"]["error"] == "ValueError"
    assert by_id["fine"]["type"] == "decision"
