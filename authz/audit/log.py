"""The audit log: a hash chain of JSON lines, sealed by Ed25519-signed checkpoints.

Every record carries ``seq`` (1, 2, 3 ... per instance, across files and restarts), ``prev`` (the
hash of the record before it) and ``hash`` (SHA-256 of its RFC 8785 canonical form without
``hash``). Every N records or T seconds a ``checkpoint`` record signs the chain up to itself, and
the file is flushed and fsynced: a crash loses at most what came after the last checkpoint, and
``authz audit verify`` says exactly what that is. A process start opens a new *segment* whose
first record links to the last record the directory already holds, so a restart continues the
chain; a clean stop writes a final checkpoint that closes the segment.

Requests never wait for the disk: they put a dict on a bounded queue; one writer task hashes,
signs and writes (file I/O in a thread). With ``audit.redis_stream.url`` set, the lines written
are also handed to a Redis Stream sink (``authz.audit.redis_stream``), best effort and never
waited for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client import Counter, Gauge

from authz.audit.canonical import canonical
from authz.audit.config import AuditConfig

if TYPE_CHECKING:
    from authz.audit.redis_stream import RedisStreamSink

log = logging.getLogger("authz.audit")

# What the request path queues: a record, or (build, args) for the writer to call build(*args).
Pending = dict[str, Any] | tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]

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
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(cfg.queue_size)
        self.segment = secrets.token_hex(8)
        self.dir = Path(cfg.directory) / instance
        self._file: Any = None
        self._path: Path | None = None
        self._seq = 0
        self._prev = GENESIS
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._writer: asyncio.Task | None = None
        self._pending: list[bytes] = []
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
        await self.queue.join()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
        self._checkpoint(final=True)
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

    def offer(self, record: Pending) -> bool:
        """Queue a record without waiting. False when the queue is full.

        ``record`` is the record, or ``(build, args)``: the writer calls ``build(*args)`` for it.
        The request path then only queues what the record is made of, and the building runs
        in the writer's batch, off the request's critical path and with a warm cache."""
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            return False
        return True

    async def put(self, record: Pending, *, wait_ms: int) -> bool:
        if self.offer(record):
            return True
        if wait_ms <= 0:
            return False
        try:
            await asyncio.wait_for(self.queue.put(record), wait_ms / 1000)
            return True
        except TimeoutError:
            return False

    # --- the writer --------------------------------------------------------------------------------

    # Records reach the file within this long (and are fsynced at each checkpoint). Each round
    # costs the request path more than its records do (a thread hop, GIL handovers, a wake-up):
    # at 20 ms, audit took 8-25% of the throughput of a CPU-bound 2-core box; at 100 ms, 0-5%.
    POLL_SECONDS = 0.1

    async def _run(self) -> None:
        # Wake ten times a second and take everything queued: the cost of the loop, the thread
        # hop and the write is shared by every record of the round instead of being paid per
        # request.
        while True:
            await asyncio.sleep(self.POLL_SECONDS)
            if self._next_key is not None:
                self._apply_rotation()
            batch = []
            while len(batch) < 10_000:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
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
                for _ in batch:
                    self.queue.task_done()
                QUEUE_DEPTH.set(self.queue.qsize())
                CHECKPOINT_LAG.set(time.monotonic() - self._last_checkpoint)

    def _to_stream(self, lines: list[bytes], last_seq: int) -> None:
        """The lines just written (consecutive seqs ending at last_seq) to the Redis Stream sink."""
        if self.stream is not None and lines:
            self.stream.submit(lines, last_seq)

    def _append_safely(self, pending: Pending) -> None:
        """Build (when deferred) and ``_append`` a record. When that fails (a bug: records hold
        only JSON values) a stand-in says which record was lost, so the chain stays whole and
        says so instead of the writer stopping."""
        record: dict[str, Any] = {}
        try:
            record = pending if isinstance(pending, dict) else pending[0](*pending[1])
            self._append(record)
        except Exception as exc:
            WRITE_FAILURES.inc()
            log.error("audit record of request %s could not be written: %r", record.get("request_id"), exc)
            self._append({"type": "unencodable", "record_type": str(record.get("type")),
                          "request_id": str(record.get("request_id")), "error": type(exc).__name__})

    def _append(self, record: dict[str, Any]) -> None:
        record = {"v": 1, "seq": self._seq + 1, "instance": self.instance, "segment": self.segment,
                  "time_ms": _now_ms(), **record, "prev": self._prev}
        # Serialize once: the canonical bytes are both what is hashed and (with the hash added
        # as the last member) the line written.
        body = canonical(record)  # may raise: nothing has changed yet
        self._seq += 1
        digest = hashlib.sha256(body).hexdigest()
        self._prev = digest
        self._pending.append(body[:-1] + b',"hash":"' + digest.encode() + b'"}\n')
        counter = _RECORD_COUNTERS.get(record["type"])
        if counter is None:
            counter = _RECORD_COUNTERS[record["type"]] = RECORDS.labels(type=record["type"])
        counter.inc()
        if record["type"] != "checkpoint":
            self._since_checkpoint += 1

    def _checkpoint(self, *, final: bool = False) -> None:
        self._seq += 1
        record = {"v": 1, "seq": self._seq, "instance": self.instance, "segment": self.segment,
                  "time_ms": _now_ms(), "type": "checkpoint", "kid": self.kid, "records": self._since_checkpoint,
                  "final": final, "prev": self._prev}
        record["sig"] = base64.b64encode(self.key.sign(checkpoint_message(record))).decode()
        record["hash"] = record_hash(record)
        self._prev = record["hash"]
        self._pending.append(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        RECORDS.labels(type="checkpoint").inc()
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
