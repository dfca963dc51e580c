"""The audit log: a hash chain of JSON lines, sealed by Ed25519-signed checkpoints.

Every record carries ``seq`` (1, 2, 3 ... per instance, across files and restarts), ``prev`` (the
hash of the record before it) and ``hash`` (SHA-256 of its RFC 8785 canonical form without
``hash``). Every N records or T seconds a ``checkpoint`` record signs the chain up to itself, and
the file is flushed and fsynced: a crash loses at most what came after the last checkpoint, and
``authz audit verify`` says exactly what that is. A process start opens a new *segment* whose
first record links to the last record the directory already holds, so a restart continues the
chain; a clean stop writes a final checkpoint that closes the segment.

Requests never wait for the disk: a record is encoded when it is offered (its canonical form,
with stand-ins for ``seq`` and ``prev``) and put on a bounded queue; one writer task links the
records (fills in seq and prev), hashes, signs and writes (file I/O in a thread). With
``audit.redis_stream.url`` set, the lines written are also handed to a Redis Stream sink
(``authz.audit.redis_stream``), best effort and never waited for.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client import Counter, Gauge

from authz.audit.canonical import canonical
from authz.audit.config import AuditConfig

if TYPE_CHECKING:
    from authz.audit.redis_stream import RedisStreamSink

log = logging.getLogger("authz.audit")

# What waits for the writer: (type, the record's canonical bytes with the seq, prev and digest
# still to fill in, the bytes to digest or None), or the record itself when orjson could not
# encode it.
Pending = tuple[str, bytes, bytes | None] | dict[str, Any]
# A digest a record holds: (key, bytes); the record gets SHA-256 hex of the bytes, or None for none.
Digest = tuple[str, bytes | None]

RECORDS = Counter("authz_audit_records_total", "Audit records written, by type.", ["type"])
QUEUE_DEPTH = Gauge("authz_audit_queue_depth", "Audit records waiting for the writer.")
CHECKPOINT_LAG = Gauge("authz_audit_checkpoint_lag_seconds",
                       "Seconds since the last signed checkpoint (records after it are unsealed).")
WRITE_FAILURES = Counter("authz_audit_write_failures_total", "Audit writes that failed.")
REFUSED = Counter("authz_audit_refused_total",
                  "Requests refused, or records lost after the answer, because the queue was full.",
                  ["when"])
STREAM_FAILURES = Counter("authz_audit_stream_failures_total",
                          "Audit lines not written to the Redis Stream (audit.redis_stream): failed "
                          "(sent again later) or dropped (its buffer was full; the files hold them).", ["what"])
STREAM_BACKLOG = Gauge("authz_audit_stream_backlog", "Audit lines waiting to be sent to the Redis Stream.")

GENESIS = "0" * 64
FILE_PREFIX = "audit-"


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def checkpoint_message(record: dict[str, Any]) -> bytes:
    return canonical({k: v for k, v in record.items() if k not in ("hash", "sig")})


def public_jwk(key: ed25519.Ed25519PublicKey, kid: str) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
            "kid": kid, "use": "sig", "alg": "EdDSA"}


def key_id(key: ed25519.Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "audit-" + hashlib.sha256(raw).hexdigest()[:16]


def load_signing_key(path: str | None) -> ed25519.Ed25519PrivateKey:
    if path is None:
        log.warning("audit.signing_key_file is not set: checkpoints are signed with a key generated for "
                    "this process; an auditor can only verify them with the public key published at "
                    "/.well-known/jwks.json while it runs. Configure a key (authz audit keygen).")
        return ed25519.Ed25519PrivateKey.generate()
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


class AuditLog:
    """One writer per directory and instance, shared by pipeline generations across reloads."""

    def __init__(self, cfg: AuditConfig, *, instance: str,
                 key: ed25519.Ed25519PrivateKey | None = None) -> None:
        self.cfg = cfg
        self.instance = instance
        self.key = key or load_signing_key(cfg.signing_key_file)
        self.kid = key_id(self.key.public_key())
        # The queue is a plain list the writer swaps for an empty one each round: appending is
        # all a request pays (asyncio.Queue cost it several times that, per record, twice).
        self._queue: list[Pending] = []
        self._wake: asyncio.Future[None] | None = None  # the writer's sleep; a full queue ends it early
        self._round = asyncio.Event()  # set (and replaced) when the writer takes or finishes a batch
        self._busy = False             # the writer holds a batch it has not written yet
        self.segment = secrets.token_hex(8)
        # Stand-ins for seq, prev and a body digest, unguessable, so no value in a record can
        # hold one: a record is encoded when offered, and the writer fills them in (_link).
        # seq's replaces a whole JSON string (quotes included) with an integer.
        self._seq_mark, self._prev_mark, self._digest_mark = (secrets.token_hex(16) for _ in range(3))
        self._seq_token = f'"{self._seq_mark}"'.encode()
        self._prev_token, self._digest_token = self._prev_mark.encode(), self._digest_mark.encode()
        self.dir = Path(cfg.directory) / instance
        self._file: Any = None
        self._path: Path | None = None
        self._seq = 0
        self._prev = GENESIS
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._writer: asyncio.Task[None] | None = None
        self._pending: list[bytes] = []
        self._written: dict[str, int] = {}  # records written this round, by type (for RECORDS)
        self.users = 0
        self._next_key: ed25519.Ed25519PrivateKey | None = None  # a rotation the writer applies
        self.retired_jwks: list[dict[str, str]] = []  # keys this log signed with before, still published
        self.stream: RedisStreamSink | None = None
        if cfg.redis_stream.url:
            from authz.audit.redis_stream import RedisStreamSink  # imports this module's metrics
            self.stream = RedisStreamSink(cfg.redis_stream, instance=instance)

    # --- lifecycle --------------------------------------------------------------------------------

    def jwk(self) -> dict[str, str]:
        return public_jwk(self.key.public_key(), self.kid)

    def jwks(self) -> list[dict[str, str]]:
        """The signing key and the ones it replaced (an auditor needs all of them)."""
        return [self.jwk(), *self.retired_jwks]

    def rotate(self, key: ed25519.Ed25519PrivateKey) -> None:
        """Sign with ``key`` from the writer's next round on; what the old key covered is sealed
        by a checkpoint it signs first. (The writer does both, so no record is signed by one key
        and sealed by the other.)"""
        if key_id(key.public_key()) != key_id((self._next_key or self.key).public_key()):
            self._next_key = key

    def _apply_rotation(self) -> None:
        key, self._next_key = self._next_key, None
        if key is None:
            return
        self._checkpoint()  # seal everything so far with the old key
        self.retired_jwks.insert(0, self.jwk())
        old_kid, self.key, self.kid = self.kid, key, key_id(key.public_key())
        self._append({"type": "key_rotated", "previous_kid": old_kid, "kid": self.kid})
        log.info("audit signing key rotated from %s to %s", old_kid, self.kid)

    async def start(self) -> None:
        if self.cfg.sink == "file":
            await asyncio.to_thread(self._open_directory)
        self._append({"type": "segment", "segment": self.segment, "instance": self.instance, "kid": self.kid,
                      "pid": os.getpid(), "continues": self._seq > 0})
        if self.stream is not None:
            self.stream.start()
        self._writer = asyncio.get_running_loop().create_task(self._run())

    def _open_directory(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        files = sorted(self.dir.glob(f"{FILE_PREFIX}*.jsonl"))
        if files:  # continue the chain after the last complete record the directory holds
            for line in reversed(files[-1].read_bytes().splitlines()):
                try:
                    last = json.loads(line)
                    self._seq, self._prev = int(last["seq"]), str(last["hash"])
                    break
                except (ValueError, KeyError, TypeError):
                    continue
        self._rotate()

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        # Names sort in chain order: the first seq the file will hold, zero-padded.
        self._path = self.dir / f"{FILE_PREFIX}{self._seq + 1:012d}.jsonl"
        self._file = open(self._path, "ab")

    async def close(self) -> None:
        """Drain the queue, write the final checkpoint, fsync."""
        if self._writer is None:
            return
        await self.drained()
        self._writer.cancel()
        try:
            await self._writer
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug: it is said, and what it left queued is written below
            log.exception("the audit writer had stopped")
        self._writer = None
        while self._queue:  # offered while the writer was stopping (or after it stopped)
            for pending in self._take():
                self._append_safely(pending)
        self._checkpoint(final=True)
        self._count_written()
        lines, last_seq = self._pending, self._seq
        try:
            self._flush(sync=True)
        finally:
            self._to_stream(lines, last_seq)
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.stream is not None:
            await self.stream.close()

    # --- the request side ------------------------------------------------------------------------

    def offer(self, record: dict[str, Any], *, digest: Digest | None = None) -> bool:
        """Queue a record without waiting. False when the queue is full.

        The record is encoded here, in its canonical form with stand-ins for ``seq`` and
        ``prev``; the writer only fills those in and hashes. Bytes are also what the garbage
        collector never traces: a request's objects kept for the writer (a hundred requests a
        round) made every collection dearer. ``digest`` (key, bytes) puts the SHA-256 of the
        bytes under key, computed by the writer too: one hash after another in its batch costs
        a fifth of one alone on the request path. What orjson cannot encode waits as the record
        itself, for the writer's fallback encoder. The record belongs to the log once offered."""
        if len(self._queue) >= self.cfg.queue_size:
            self._wake_writer()  # take the queue now instead of at the next tick
            return False
        self._chain_fields(record, self._seq_mark, self._prev_mark)
        data = None
        if digest is not None:
            key, data = digest
            record[key] = self._digest_mark if data else None
        try:
            self._queue.append((record["type"], orjson.dumps(record, option=orjson.OPT_SORT_KEYS),
                                data or None))
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate, a big integer, a bug of ours
            if data:
                record[digest[0]] = hashlib.sha256(data).hexdigest()  # type: ignore[index]
            self._queue.append(record)
        return True

    def _chain_fields(self, record: dict[str, Any], seq: int | str, prev: str) -> None:
        # The chain's fields are the log's to set (a record cannot bring its own seq or prev).
        record["v"] = 1
        record["seq"] = seq
        record["instance"] = self.instance
        record["segment"] = self.segment
        record["prev"] = prev
        if "time_ms" not in record:
            record["time_ms"] = _now_ms()

    async def put(self, record: dict[str, Any], *, wait_ms: int, digest: Digest | None = None) -> bool:
        """``offer``, waiting up to ``wait_ms`` for room when the queue is full."""
        if self.offer(record, digest=digest):
            return True
        if wait_ms <= 0:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    await self._round.wait()
            except TimeoutError:
                return False
            if self.offer(record, digest=digest):
                return True
        return False

    async def drained(self) -> None:
        """Wait until everything queued so far is written (and handed to the stream sink)."""
        while self._writer is not None and not self._writer.done() and (self._queue or self._busy):
            self._wake_writer()
            await self._round.wait()

    def _wake_writer(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _sleep(self) -> None:
        """Until the next tick, or until ``_wake_writer``. (Not ``wait_for`` on an event: on
        Python 3.11 that can swallow the cancellation ``close`` sends when both come at once.)"""
        loop = asyncio.get_running_loop()
        self._wake = loop.create_future()
        tick = loop.call_later(self.POLL_SECONDS, self._wake_writer)
        try:
            await self._wake
        finally:
            tick.cancel()
            self._wake = None

    def _signal_round(self) -> None:
        self._round.set()
        self._round = asyncio.Event()

    def _take(self) -> list[Pending]:
        """The oldest queued records, at most BATCH of them (one round must not hold the loop long)."""
        if len(self._queue) <= self.BATCH:
            batch, self._queue = self._queue, []
        else:
            batch = self._queue[:self.BATCH]
            del self._queue[:self.BATCH]
        return batch

    # --- the writer --------------------------------------------------------------------------------

    # Records reach the file within this long (and are fsynced at each checkpoint). Each round
    # costs the request path more than its records do (a thread hop, GIL handovers, a wake-up):
    # at 20 ms, audit took 8-25% of the throughput of a CPU-bound 2-core box; at 100 ms, 0-5%.
    POLL_SECONDS = 0.1
    BATCH = 10_000

    async def _run(self) -> None:
        # Wake ten times a second (or at once when the queue is full) and take everything
        # queued: the cost of the loop, the thread hop and the write is shared by every record
        # of the round instead of being paid per request.
        while True:
            await self._sleep()
            if self._next_key is not None:
                self._apply_rotation()
            batch = self._take()
            self._busy = True
            self._signal_round()  # room again for requests waiting in put()
            sealed = False
            try:
                for r in batch:
                    self._append_safely(r)
                    if self._since_checkpoint >= self.cfg.checkpoint_every_records:
                        self._checkpoint()
                        sealed = True
                if self._since_checkpoint and (time.monotonic() - self._last_checkpoint
                                               >= self.cfg.checkpoint_every_seconds):
                    self._checkpoint()
                    sealed = True
                if self._pending:
                    lines, last_seq = self._pending, self._seq
                    try:
                        await asyncio.to_thread(self._flush, sync=sealed)
                    finally:  # _flush took the list: hand the same lines to the stream
                        self._to_stream(lines, last_seq)
            except OSError:
                WRITE_FAILURES.inc()
                log.exception("audit write failed")
            finally:
                self._busy = False
                self._count_written()
                QUEUE_DEPTH.set(len(self._queue))
                CHECKPOINT_LAG.set(time.monotonic() - self._last_checkpoint)
                self._signal_round()

    def _to_stream(self, lines: list[bytes], last_seq: int) -> None:
        """The lines just written (consecutive seqs ending at last_seq) to the Redis Stream sink."""
        if self.stream is not None and lines:
            self.stream.submit(lines, last_seq)

    def _append_safely(self, pending: Pending) -> None:
        """Link a queued record into the chain. When that fails (a bug: records hold only JSON
        values) a stand-in says which record was lost, so the chain stays whole and says so
        instead of the writer stopping."""
        record: dict[str, Any] = {}
        try:
            if isinstance(pending, tuple):
                kind, body, data = pending
                linked = self._link(body, data)
                if linked is None:  # offer put them there: a bug; the stand-in below names the request
                    record = orjson.loads(body)
                    raise ValueError("a queued audit record lost its stand-ins")
                self._add_line(kind, linked)
            else:
                record = pending
                self._append(record)
        except Exception as exc:
            WRITE_FAILURES.inc()
            log.error("audit record of request %s could not be written: %r", record.get("request_id"), exc)
            self._append({"type": "unencodable", "record_type": str(record.get("type")),
                          "request_id": str(record.get("request_id")), "error": type(exc).__name__})

    def _link(self, body: bytes, data: bytes | None) -> bytes | None:
        """``body`` (canonical, from ``offer``) with the next seq, the previous hash and the
        digest of ``data`` in place of their stand-ins: the canonical form of the linked record,
        as keys sort by name and not by value. None when a stand-in is missing (a bug).

        Only the first of each is looked for: the stand-ins are random and never leave the
        process, so no value can hold one. (If one did, the filled-in value would land there and
        the field keep its stand-in, in plain sight; for seq or prev ``verify`` reports the break.)"""
        fills = [(body.find(self._seq_token), self._seq_token, b"%d" % (self._seq + 1)),
                 (body.find(self._prev_token), self._prev_token, self._prev.encode())]
        if data is not None:
            fills.append((body.find(self._digest_token), self._digest_token,
                          hashlib.sha256(data).hexdigest().encode()))
        fills.sort()
        if fills[0][0] < 0:
            return None
        parts: list[bytes] = []
        at = 0
        for i, token, value in fills:
            parts += (body[at:i], value)
            at = i + len(token)
        parts.append(body[at:])
        return b"".join(parts)

    def _append(self, record: dict[str, Any]) -> None:
        self._chain_fields(record, self._seq + 1, self._prev)
        self._add_line(record["type"], canonical(record))  # may raise: nothing has changed yet

    def _add_line(self, kind: str, body: bytes) -> None:
        """Write the record whose canonical bytes are ``body``: they are both what is hashed and
        (with the hash added as the last member) the line written."""
        self._seq += 1
        digest = hashlib.sha256(body).hexdigest()
        self._prev = digest
        self._pending.append(b'%s,"hash":"%s"}\n' % (body[:-1], digest.encode()))
        self._written[kind] = self._written.get(kind, 0) + 1
        if kind != "checkpoint":
            self._since_checkpoint += 1

    def _count_written(self) -> None:
        """Add what the round wrote to ``authz_audit_records_total`` (once a round, not per record)."""
        for kind, n in self._written.items():
            counter = _RECORD_COUNTERS.get(kind)
            if counter is None:
                counter = _RECORD_COUNTERS[kind] = RECORDS.labels(type=kind)
            counter.inc(n)
        self._written.clear()

    def _checkpoint(self, *, final: bool = False) -> None:
        record = {"v": 1, "seq": self._seq + 1, "instance": self.instance, "segment": self.segment,
                  "time_ms": _now_ms(), "type": "checkpoint", "kid": self.kid, "records": self._since_checkpoint,
                  "final": final, "prev": self._prev}
        record["sig"] = base64.b64encode(self.key.sign(checkpoint_message(record))).decode()
        self._add_line("checkpoint", canonical(record))
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    def _flush(self, *, sync: bool) -> None:
        data, self._pending = b"".join(self._pending), []
        if not data:
            return
        if self.cfg.sink == "stdout":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            return
        assert self._file is not None
        self._file.write(data)
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())
            if self._file.tell() >= self.cfg.rotate_bytes:
                self._rotate()


_RECORD_COUNTERS: dict[str, Any] = {}


def _now_ms() -> int:
    return int(time.time() * 1000)


def format_time(ms: int | None) -> str:
    """An audit record's time_ms as UTC ISO 8601."""
    if not isinstance(ms, int):
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


_logs: dict[tuple[str, str], AuditLog] = {}


def shared_log(cfg: AuditConfig, *, instance: str) -> AuditLog:
    """The process's writer for this directory and instance (created on first use)."""
    key = (str(Path(cfg.directory).resolve()) if cfg.sink == "file" else "stdout", instance)
    existing = _logs.get(key)
    if existing is None or (existing.users == 0 and existing._writer is None):
        existing = _logs[key] = AuditLog(cfg, instance=instance)
    elif cfg.signing_key_file:  # a reload: the key file may have been rotated in place
        existing.rotate(load_signing_key(cfg.signing_key_file))
    return existing


def all_logs() -> list[AuditLog]:
    return list(_logs.values())
