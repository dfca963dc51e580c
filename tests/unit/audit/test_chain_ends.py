"""Issue 17: a chain cannot lose its ends unnoticed, a line says one thing to every reader, a
restart finds the true end, and a clean log always verifies."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from authz.audit.config import AuditConfig
from authz.audit.log import AuditLog, AuditLogBusy, checkpoint_message, key_id
from authz.audit.trim import trim
from authz.audit.verify import verify
from authz.cli.audit import main


@pytest.fixture
def key():
    return ed25519.Ed25519PrivateKey.generate()


def cfg(tmp: Path, **kw) -> AuditConfig:
    return AuditConfig(enabled=True, directory=str(tmp), **{"checkpoint_every_records": 5, **kw})


async def session(tmp: Path, key, n: int, *, instance: str = "i1", prefix: str = "r", **kw) -> AuditLog:
    log = AuditLog(cfg(tmp, **kw), instance=instance, key=key)
    await log.start()
    for i in range(n):
        assert log.offer({"type": "decision", "request_id": f"{prefix}{i}", "decision": "allow", "status": 200,
                          "principal": None})
    await log.close()
    return log


def files(tmp: Path, instance: str = "i1") -> list[Path]:
    return sorted((tmp / instance).glob("audit-*.jsonl"))


def pem(tmp: Path, key) -> str:
    path = tmp / f"pub-{key_id(key.public_key())}.pem"
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(path)


# --- restarts -------------------------------------------------------------------------------------

async def test_a_restart_after_a_sealing_rotation_continues_from_the_true_end(tmp_path, key):
    # The final checkpoint's fsync takes the file past rotate_bytes: the writer opens an empty
    # next file, and the stop leaves it so.
    log = AuditLog(cfg(tmp_path, rotate_bytes=4096, checkpoint_every_records=1000), instance="i1", key=key)
    await log.start()
    i = 0
    while log._file.tell() < 4096 - 300:
        assert log.offer({"type": "decision", "request_id": f"r{i}", "decision": "allow", "status": 200})
        i += 1
        await log.drained()
    await log.close()
    assert files(tmp_path)[-1].stat().st_size == 0, [f.stat().st_size for f in files(tmp_path)]
    await session(tmp_path, key, 3, prefix="after", rotate_bytes=4096)
    report = verify([tmp_path], key.public_key())
    assert report.status == 0, report.render()
    seqs = [json.loads(line)["seq"] for f in files(tmp_path) for line in f.read_bytes().splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_an_idle_writer_checkpoints_on_its_schedule(tmp_path, key):
    log = AuditLog(cfg(tmp_path, checkpoint_every_seconds=0.1), instance="i1", key=key)
    await log.start()
    await asyncio.sleep(0.5)
    first = log.head
    await asyncio.sleep(0.3)
    assert first is not None and log.head is not None and log.head["seq"] > first["seq"]
    await log.close()
    assert verify([tmp_path], key.public_key()).status == 0


async def test_two_writers_cannot_share_one_chain(tmp_path, key):
    first = AuditLog(cfg(tmp_path), instance="i1", key=key)
    await first.start()
    second = AuditLog(cfg(tmp_path), instance="i1", key=key)
    with pytest.raises(AuditLogBusy):
        await second.start()
    await first.close()
    await session(tmp_path, key, 1)  # released by close
    assert verify([tmp_path], key.public_key()).status == 0


# --- canonical bytes and damaged lines ----------------------------------------------------------------

def rewrite_line(path: Path, index: int, change) -> int:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[index] = change(lines[index].rstrip(b"\n")) + b"\n"
    path.write_bytes(b"".join(lines))
    return index + 1


@pytest.mark.parametrize("how", ["duplicate_key", "nan", "escape", "spacing"])
async def test_a_line_that_is_not_canonical_is_tampering(tmp_path, key, capsys, how):
    await session(tmp_path, key, 6)
    f = files(tmp_path)[0]
    change = {
        "duplicate_key": lambda b: b.replace(b'"decision":"allow"', b'"decision":"allow","decision":"deny"'),
        "nan": lambda b: b.replace(b'"body_hmac":null', b'"body_hmac":NaN').replace(b'"principal":null',
                                                                                   b'"principal":NaN'),
        "escape": lambda b: b.replace(b'"decision":"allow"', b'"decision":"\\u0061llow"'),
        "spacing": lambda b: b.replace(b'"decision":"allow"', b'"decision": "allow"'),
    }[how]
    original = f.read_bytes()
    line_no = rewrite_line(f, 3, change)
    assert f.read_bytes() != original
    pub = pem(tmp_path, key)
    assert main(["verify", str(tmp_path), "--public-key", pub]) == 1
    out = capsys.readouterr().out
    assert f"{f}:{line_no}" in out, out
    # explain and export read the same files without raising; the damaged line is named.
    assert main(["export", str(tmp_path)]) == 0
    assert main(["explain", "r1", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    if how in ("duplicate_key", "nan"):
        assert f"{f}:{line_no}: damaged line" in err, err


async def test_explain_and_export_survive_any_record_shape(tmp_path, capsys):
    d = tmp_path / "i1"
    d.mkdir()
    odd = [{"type": "decision", "request_id": "x", "principal": "oops", "facts": [1], "action": 3},
           {"type": "outcome", "request_id": "x", "facts": {"usage": "many"}},
           {"type": "decision", "request_id": "x", "principal": {"no": "subject"}}]
    (d / "audit-000000000001.jsonl").write_bytes(b"\n".join(json.dumps(r).encode() for r in odd)
                                                  + b"\n\xff\xfe not json\n")
    assert main(["explain", "x", str(tmp_path)]) == 0
    assert main(["export", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "could not be read" in captured.out and ":4: damaged line" in captured.err


async def test_explain_exits_non_zero_for_an_unknown_request(tmp_path, key, capsys):
    await session(tmp_path, key, 2)
    assert main(["explain", "no-such-request", str(tmp_path)]) == 1
    assert "no audit record for request no-such-request" in capsys.readouterr().err


# --- the ends of a chain ----------------------------------------------------------------------------

async def rotated_log(tmp: Path, key) -> list[Path]:
    """Three sessions across several files (small rotate_bytes)."""
    for s in range(3):
        await session(tmp, key, 30, prefix=f"s{s}-", rotate_bytes=4096)
    found = [f for f in files(tmp) if f.stat().st_size]
    assert len(found) >= 3
    return found


async def test_deleting_the_first_file_is_a_missing_head(tmp_path, key):
    first = (await rotated_log(tmp_path, key))[0]
    first.unlink()
    report = verify([tmp_path], key.public_key())
    text = report.render()
    assert report.status == 1 and "head of the chain of instance i1 is missing" in text, text


async def test_deleting_the_first_records_of_the_first_file_is_a_missing_head(tmp_path, key):
    first = (await rotated_log(tmp_path, key))[0]
    lines = first.read_bytes().splitlines(keepends=True)
    first.write_bytes(b"".join(lines[10:]))
    report = verify([tmp_path], key.public_key())
    assert report.status == 1 and f"{first}:1" in report.render() and "is missing" in report.render()


async def test_a_signed_trim_explains_a_missing_head_and_nothing_else_does(tmp_path, key):
    kept = await rotated_log(tmp_path, key)
    record = trim(tmp_path / "i1", 2 ** 62, key)  # everything is older: all but the newest file go
    assert record is not None and record["removed"]
    report = verify([tmp_path], key.public_key())
    assert report.status == 0, report.render()
    assert any("removed by the retention trim" in n for n in report.notes)
    # another file deleted after the trim is not explained by it
    remaining = files(tmp_path)
    if len(remaining) > 1:
        remaining[0].unlink()
        assert verify([tmp_path], key.public_key()).status == 1
    # a trim record signed by someone else explains nothing
    shutil.rmtree(tmp_path / "i1")
    for s in range(3):
        await session(tmp_path, key, 30, prefix=f"s{s}-", rotate_bytes=4096)
    trim(tmp_path / "i1", 2 ** 62, ed25519.Ed25519PrivateKey.generate())
    forged = verify([tmp_path], key.public_key())
    assert forged.status == 1 and "trim record signed with key" in forged.render(), forged.render()
    assert kept


async def test_the_cli_trims_by_date(tmp_path, key, capsys):
    await rotated_log(tmp_path, key)
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    assert main(["trim", str(tmp_path / "i1"), "--before", "2001-01-01", "--signing-key", str(key_file)]) == 0
    assert "nothing to trim" in capsys.readouterr().out
    assert main(["trim", str(tmp_path / "i1"), "--before", "2999-01-01", "--signing-key", str(key_file)]) == 0
    assert "the chain now starts at seq" in capsys.readouterr().out
    assert main(["verify", str(tmp_path), "--public-key", pem(tmp_path, key)]) == 0


async def test_deleting_the_newest_files_is_caught_against_the_published_head(tmp_path, key, capsys):
    await session(tmp_path, key, 30, rotate_bytes=4096)
    log = await session(tmp_path, key, 30, prefix="b", rotate_bytes=4096)
    head_file = tmp_path / "published.json"
    head_file.write_text(json.dumps({"heads": [log.head]}))
    pub = pem(tmp_path, key)
    assert main(["verify", str(tmp_path / "i1"), "--public-key", pub, "--head", str(head_file)]) == 0
    assert json.loads((tmp_path / "i1" / "head.json").read_bytes()) == log.head  # the final checkpoint
    for f in [f for f in files(tmp_path) if f.stat().st_size][-2:]:  # the newest closed file(s)
        f.unlink()
    # Without --head, the directory's head file says so ...
    report = verify([tmp_path], key.public_key())
    assert report.status == 1 and "the newest records are missing: the head file" in report.render()
    # ... and so does its absence: the chain's writer kept one.
    (tmp_path / "i1" / "head.json").rename(tmp_path / "kept.json")
    report = verify([tmp_path / "i1"], key.public_key())
    assert report.status == 1 and "head.json is missing" in report.render()
    # Rolled back to the newest checkpoint that remains, it cannot tell: only --head can.
    remaining = [json.loads(line) for f in files(tmp_path) for line in f.read_bytes().splitlines()]
    last = [r for r in remaining if r["type"] == "checkpoint"][-1]
    (tmp_path / "i1" / "head.json").write_text(json.dumps(last))
    assert verify([tmp_path], key.public_key()).status == 0
    assert main(["verify", str(tmp_path / "i1"), "--public-key", pub, "--head", str(head_file)]) == 1
    assert "the newest records are missing" in capsys.readouterr().out


async def test_a_head_from_the_decision_log_works_too(tmp_path, key, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="authz.decision")
    log = await session(tmp_path, key, 7)
    lines = [json.dumps({"event": "audit_checkpoint", "audit_head": r.fields["audit_head"]})
             for r in caplog.records if getattr(r, "fields", {}).get("event") == "audit_checkpoint"]
    assert lines and json.loads(lines[-1])["audit_head"] == log.head
    decision_log = tmp_path / "authz.log"
    decision_log.write_text("not json\n" + "\n".join(lines) + "\n")
    assert main(["verify", str(tmp_path / "i1"), "--public-key", pem(tmp_path, key),
                 "--head", str(decision_log)]) == 0


async def test_a_file_moved_to_another_instance_directory_is_misplaced(tmp_path, key):
    await rotated_log(tmp_path, key)
    last = [f for f in files(tmp_path) if f.stat().st_size][-1]
    (tmp_path / "other").mkdir()
    shutil.move(last, tmp_path / "other" / last.name)
    report = verify([tmp_path], key.public_key())
    assert report.status == 1 and "holds records of instance i1 in the directory of instance other" in report.render()


async def test_a_directory_named_for_one_instance_holding_anothers_files(tmp_path, key):
    await session(tmp_path, key, 5, instance="b")
    (tmp_path / "b").rename(tmp_path / "a")
    report = verify([tmp_path / "a"], key.public_key())
    assert report.status == 1 and "records of instance b in the directory of instance a" in report.render()


async def test_a_chain_rewritten_without_the_key_is_unsigned_not_a_crash(tmp_path, key, capsys):
    """A forger rewrites every record (a decision changed) and re-hashes the chain; with no
    key, he drops what he cannot sign: before, that was exit 2, like an honest crash."""
    await session(tmp_path, key, 6)
    f = files(tmp_path)[0]
    prev = "0" * 64
    out = []
    from authz.audit.canonical import canonical
    from authz.audit.lines import parse_line
    for line in f.read_bytes().splitlines():
        rec = parse_line(line)
        if rec["type"] == "checkpoint":
            continue
        rec.pop("hash")
        rec.pop("sig", None)
        rec["seq"], rec["prev"] = len(out) + 1, prev
        if rec["type"] == "segment":
            rec["first_seq"], rec["previous_hash"] = 1, prev
        rec["decision"] = "deny" if rec.get("decision") else rec.get("decision")
        body = canonical(rec)
        import hashlib
        prev = hashlib.sha256(body).hexdigest()
        out.append(body[:-1] + b',"hash":"' + prev.encode() + b'"}\n')
    f.write_bytes(b"".join(out))
    assert main(["verify", str(tmp_path), "--public-key", pem(tmp_path, key)]) == 1
    text = capsys.readouterr().out
    assert "opening record is not signed" in text and "unsigned" in text, text


async def test_a_checkpoint_counts_what_its_segment_holds(tmp_path, key):
    """Re-chained records (hashes recomputed) still disagree with the signed counts."""
    await session(tmp_path, key, 4, checkpoint_every_records=100)
    f = files(tmp_path)[0]
    recs = [json.loads(line) for line in f.read_bytes().splitlines()]
    assert [r["type"] for r in recs] == ["segment"] + ["decision"] * 4 + ["checkpoint"]
    assert recs[-1]["total"] == recs[-1]["seq"] == 6 and recs[-1]["segment_records"] == 6
    signed = recs[-1]
    sig = base64.b64decode(signed["sig"])
    key.public_key().verify(sig, checkpoint_message(signed))


async def test_a_stream_export_serves_as_the_head(tmp_path, key):
    """With audit.redis_stream on, checkpoints reach the stream like every line: an export of
    it (here: a copy of the files) is a head source for verify."""
    await session(tmp_path / "local", key, 30, rotate_bytes=4096)
    await session(tmp_path / "local", key, 30, prefix="b", rotate_bytes=4096)
    shutil.copytree(tmp_path / "local", tmp_path / "central")
    pub = pem(tmp_path, key)
    assert main(["verify", str(tmp_path / "local"), "--public-key", pub, "--head", str(tmp_path / "central")]) == 0
    [f for f in files(tmp_path / "local") if f.stat().st_size][-1].unlink()
    assert main(["verify", str(tmp_path / "local"), "--public-key", pub, "--head", str(tmp_path / "central")]) == 1
    # a head that is not signed by a given key is not trusted
    other = ed25519.Ed25519PrivateKey.generate()
    assert main(["verify", str(tmp_path / "central"), "--public-key", pem(tmp_path, other),
                 "--head", str(tmp_path / "central")]) == 1


async def test_verify_explain_and_export_never_raise_on_a_damaged_log(tmp_path, key):
    """Every line of a real log damaged in several ways, one at a time: verify reports (exit 1),
    explain and export go on."""
    import random

    from authz.cli.audit import _records, explain, export_rows

    await session(tmp_path / "orig", key, 8)
    original = files(tmp_path / "orig")[0].read_bytes().splitlines(keepends=True)
    rng = random.Random(17)
    values = [None, True, 1.5, -1, 2 ** 80, "", "x", [], {}, [1, {"a": None}], {"seq": "1"}]

    def mutations(line: bytes):
        yield line[: len(line) // 2] + b"\n"
        yield b"\x00\xff" + line
        yield line.replace(b":", b":[", 1)
        rec = json.loads(line)
        for field in list(rec):
            yield json.dumps({**rec, field: rng.choice(values)}).encode() + b"\n"
        yield json.dumps(rng.choice(values)).encode() + b"\n"

    for i, line in enumerate(original):
        for bad in mutations(line):
            d = tmp_path / f"m{i}"
            shutil.rmtree(d, ignore_errors=True)
            (d / "i1").mkdir(parents=True)
            (d / "i1" / "audit-000000000001.jsonl").write_bytes(b"".join([*original[:i], bad, *original[i + 1:]]))
            report = verify([d], key.public_key())
            report.render()
            assert report.status in (1, 2), (i, bad)
            records = _records([str(d)])
            export_rows(records)
            explain("r1", records)
