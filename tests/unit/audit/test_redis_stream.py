"""The Redis Stream sink (audit.redis_stream), against a real redis-server: the stream holds
exactly the file's lines; export-stream + verify checks them with the sidecar's public key; a
Redis outage never stops the file sink and is caught up on; MAXLEN trimming and skipped lines
show up in verify as gaps."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client import REGISTRY

from authz.audit.config import AuditConfig, RedisStreamConfig
from authz.audit.log import AuditLog
from authz.audit.verify import verify
from authz.cli.audit import main
from authz.store.resp import RespClient


@pytest.fixture
def key():
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def stream():
    return f"test:audit:{secrets.token_hex(4)}"


def make_log(tmp: Path, key, url: str, stream: str, *, instance: str = "i1", **kw) -> AuditLog:
    rs = RedisStreamConfig(url=url, stream=stream, **kw)
    cfg = AuditConfig(enabled=True, directory=str(tmp / "files"), checkpoint_every_records=5, redis_stream=rs)
    return AuditLog(cfg, instance=instance, key=key)


async def offer(log: AuditLog, start: int, n: int) -> None:
    for i in range(start, start + n):
        assert log.offer({"type": "decision", "request_id": f"r{i}", "decision": "allow", "status": 200})
    await log.drained()


def file_lines(tmp: Path, instance: str = "i1") -> list[bytes]:
    return [line for f in sorted((tmp / "files" / instance).glob("audit-*.jsonl"))
            for line in f.read_bytes().splitlines()]


async def stream_entries(url: str, stream: str) -> list[dict[bytes, bytes]]:
    client = RespClient(url, timeout=5)
    try:
        entries = await client.execute("XRANGE", stream, "-", "+")
    finally:
        await client.close()
    return [dict(zip(f[::2], f[1::2], strict=True)) for _, f in entries]


async def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def failures(what: str) -> float:
    return REGISTRY.get_sample_value("authz_audit_stream_failures_total", {"what": what}) or 0.0


async def export(url: str, stream: str, out: Path, *extra: str) -> int:
    """``authz audit export-stream`` as an auditor runs it (in a thread: it has its own loop)."""
    return await asyncio.to_thread(main, ["export-stream", "--redis-url", url, "--stream", stream, *extra,
                                          "--out", str(out)])


def jwk_file(tmp: Path, log: AuditLog) -> str:
    p = tmp / "jwks.json"
    p.write_text(json.dumps({"keys": [log.jwk()]}))
    return str(p)


async def test_the_stream_holds_exactly_the_file_lines(tmp_path, key, redis_url, stream):
    log = make_log(tmp_path, key, redis_url, stream)
    await log.start()
    await offer(log, 0, 12)
    await log.close()
    lines = file_lines(tmp_path)
    entries = await stream_entries(redis_url, stream)
    assert [e[b"r"] for e in entries] == [line + b"\n" for line in lines]  # the same bytes, checkpoints too
    assert {e[b"instance"] for e in entries} == {b"i1"}
    assert [int(e[b"seq"]) for e in entries] == [json.loads(line)["seq"] for line in lines]
    assert any(json.loads(e[b"r"])["type"] == "checkpoint" for e in entries)


async def test_export_stream_then_verify_with_the_sidecars_public_key(tmp_path, key, redis_url, stream, capsys):
    for instance in ("i1", "i2"):
        log = make_log(tmp_path, key, redis_url, stream, instance=instance)
        await log.start()
        await offer(log, 0, 7)
        await log.close()
    out = tmp_path / "central"
    assert await export(redis_url, stream, out) == 0
    assert "instance i1:" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["i1", "i2"]
    assert file_lines(tmp_path, "i1") == (out / "i1" / "audit-000000000001.jsonl").read_bytes().splitlines()
    assert main(["verify", str(out), "--public-key", jwk_file(tmp_path, log)]) == 0
    assert "chain intact" in capsys.readouterr().out
    # --instance picks one
    only = tmp_path / "only"
    assert await export(redis_url, stream, only, "--instance", "i2") == 0
    assert [p.name for p in only.iterdir()] == ["i2"]
    # a second export into the same directory is refused rather than mixed in
    assert await export(redis_url, stream, out) == 1


async def test_redis_down_never_stops_the_file_and_is_caught_up(tmp_path, key, stream):
    from authz.dev.stack import free_port, start_redis

    port = free_port()
    url, proc = start_redis(tmp_path / "r1", port=port)
    log = make_log(tmp_path, key, url, stream)
    await log.start()
    try:
        await offer(log, 0, 5)
        await wait_for(lambda: _no_backlog(log))
        proc.stop()
        failed = failures("failed")
        t0 = time.monotonic()
        await offer(log, 5, 20)  # requests go on: the writer does not wait for Redis
        assert time.monotonic() - t0 < 1.0
        assert len(file_lines(tmp_path)) >= 1 + 25
        await wait_for(lambda: _more_failures(failed))
        assert log.stream is not None and log.stream.backlog > 0
        _, proc = start_redis(tmp_path / "r2", port=port)  # an empty Redis comes back on the same address
        await offer(log, 25, 5)
        await wait_for(lambda: _no_backlog(log), timeout=15)
    finally:
        await log.close()
        lines = file_lines(tmp_path)
        entries = await stream_entries(url, stream)
        proc.stop()
    # everything written while Redis was down was sent, in order, once it came back
    tail = [e[b"r"].rstrip(b"\n") for e in entries]
    assert tail == lines[len(lines) - len(tail):]
    # seq 1..7 (segment, 5 decisions, checkpoint) went to the first Redis; the new, empty one has
    # every line from the outage on
    assert json.loads(tail[0])["seq"] == 8


async def _no_backlog(log: AuditLog) -> bool:
    return log.stream is not None and log.stream.backlog == 0


async def _more_failures(before: float) -> bool:
    return failures("failed") > before


async def test_maxlen_trimming_shows_up_in_verify_as_a_missing_head(tmp_path, key, redis_url, stream, capsys):
    # MAXLEN ~ trims whole stream nodes (100 entries by default): write well past that.
    log = make_log(tmp_path, key, redis_url, stream, maxlen=10)
    await log.start()
    await offer(log, 0, 400)
    await log.close()
    out = tmp_path / "central"
    assert await export(redis_url, stream, out) == 0
    assert "not in the stream (trimmed by MAXLEN" in capsys.readouterr().out
    report = verify([out], log.key.public_key())
    # What is left is intact and closed, but a chain without its head is not a whole record.
    assert [p for p in report.problems if "head of the chain" in p and "MAXLEN" in p] == report.problems, \
        report.render()
    assert report.status == 1 and report.sealed_through["i1"] == log.head["seq"], report.render()
    assert main(["verify", str(out), "--public-key", jwk_file(tmp_path, log)]) == 1
    assert "is missing: it starts at seq" in capsys.readouterr().out


async def test_a_full_buffer_skips_lines_counts_them_and_verify_reports_the_gap(tmp_path, key, stream, capsys):
    from authz.dev.stack import free_port, start_redis

    port = free_port()
    persist = ["--appendonly", "yes"]  # the same Redis comes back with its data
    url, proc = start_redis(tmp_path / "r", port=port, extra=persist)
    log = make_log(tmp_path, key, url, stream, buffer_records=10)
    await log.start()
    try:
        await offer(log, 0, 5)
        await wait_for(lambda: _no_backlog(log))
        proc.stop()
        dropped = failures("dropped")
        await offer(log, 5, 30)  # 36 lines for a buffer of 10
        assert failures("dropped") - dropped == 26
        _, proc = start_redis(tmp_path / "r", port=port, extra=persist)
        await wait_for(lambda: _no_backlog(log), timeout=15)
        await offer(log, 35, 5)
        await log.close()
        out = tmp_path / "central"
        assert await export(url, stream, out) == 0
    finally:
        await log.close()
        proc.stop()
    assert "missing from the stream: seq 8..33" in capsys.readouterr().out
    assert len(file_lines(tmp_path)) == 1 + 40 + 8 + 1  # the file has everything
    report = verify([out], log.key.public_key())
    assert report.status == 1  # the stream's copy is incomplete: verify says where
    assert any("seq 34 where 8 was expected (gap: records missing)" in p for p in report.problems), report.render()
