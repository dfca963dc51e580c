"""The audit log: a hash chain of JSON lines, sealed by Ed25519-signed checkpoints.

Every record carries ``instance``, ``seq`` (1, 2, 3 ... per instance, across files and
restarts), ``prev`` (the hash of the record before it) and ``hash`` (SHA-256 of its RFC 8785
canonical form without ``hash``). Every N records or T seconds (idle or not) a ``checkpoint``
record signs the chain up to itself and says how many records the chain holds (``total``) and
the segment (``segment_records``); the file is flushed and fsynced, and the checkpoint becomes
the published *head* (``/audit/head``, the decision log, the Redis Stream), so deleting the
newest files is seen by ``verify --head``. A process start opens a new *segment* with a signed
``segment`` record naming its first seq and the hash it continues from (the last record the
directory already holds, across all its files, or the genesis), so a restart continues the
chain; a clean stop writes a final checkpoint that closes the segment.

When a record is safe is ``audit.durability``: ``queued`` records are written by one writer
task within ``POLL_SECONDS`` (a Check's decision is handed over as its fields and encoded by the
writer; other records are encoded when offered, in canonical form with stand-ins for ``seq`` and
``prev``); with ``answered``, ``committed()`` writes what is queued itself when the writer
is between rounds, and otherwise (and always with ``fsync``) wakes the writer and waits for its
write (group commit: one write for every record queued meanwhile). With
``audit.redis_stream.url`` set, the lines written are also handed to a Redis Stream sink
(``authz.audit.redis_stream``), best effort and never waited for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client import Counter, Gauge

from authz import metrics
from authz.audit.canonical import canonical
from authz.audit.config import AuditConfig
from authz.audit.digests import BodyDigester, digest_key_id, load_digest_key
from authz.identity.shared_keys import shared_pem
from authz.metrics import COMPONENT_UP

if TYPE_CHECKING:
    from authz.audit.redis_stream import RedisStreamSink

log = logging.getLogger("authz.audit")
_decision_log = logging.getLogger("authz.decision")  # where the published heads go (with the decisions)

# What waits for the writer: (type, the record's canonical bytes with the seq, prev and digest
# still to fill in, the bytes to digest or None), a decision's fields (``DecisionFields``: the
# writer encodes it), or the record itself when orjson could not encode it.
Pending = tuple[Any, ...] | dict[str, Any]
# A Check's decision record as the request path hands it over: (time_ms, request_id, method,
# host, path, the Principal or None when anonymous, the Action or None, decision, status,
# reason, the facts' canonical JSON, the body to digest): strings, numbers, bytes and the two
# immutable objects the request already had (no new object for the garbage collector to trace
# while it waits). See ``AuditLog.offer_decision``.
DecisionFields = tuple[Any, ...]
# A digest a record holds: (key, bytes); the record gets the keyed digest (HMAC-SHA256 hex,
# authz.audit.digests) of the bytes, or None for none.
Digest = tuple[str, bytes | None]

RECORDS = Counter("authz_audit_records_total", "Audit records written, by type.", ["type"])
QUEUE_DEPTH = Gauge("authz_audit_queue_depth", "Audit records waiting for the writer.")
CHECKPOINT_LAG = Gauge("authz_audit_checkpoint_lag_seconds",
                       "Seconds since the last signed checkpoint (records after it are unsealed).")
WRITE_FAILURES = Counter("authz_audit_write_failures_total", "Audit writes that failed.")
WRITER_UP = Gauge("authz_audit_writer_up", "1 while the audit writer runs and its writes succeed; 0 when "
                  "it stopped or its writes fail (see /readyz components.audit.detail).")
REFUSED = Counter("authz_audit_refused_total",
                  "Requests refused, or records lost after the answer: the queue was full (when=check, "
                  "outcome) or a decision record could not be written before the answer (when=write).",
                  ["when"])
STREAM_FAILURES = Counter("authz_audit_stream_failures_total",
                          "Audit lines not written to the Redis Stream (audit.redis_stream): failed "
                          "(sent again later) or dropped (its buffer was full; the files hold them).", ["what"])
STREAM_BACKLOG = Gauge("authz_audit_stream_backlog", "Audit lines waiting to be sent to the Redis Stream.")

GENESIS = "0" * 64
FILE_PREFIX = "audit-"
# Each instance directory's newest signed record on disk (the segment's opening record, then each
# checkpoint), replaced once that record is synced: verify without --head compares the chain's
# end with it, so deleting the newest files shows unless the head file is rolled back too (README:
# what verify cannot see without --head).
HEAD_FILE = "head.json"


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def checkpoint_message(record: dict[str, Any]) -> bytes:
    """What a signed record's (checkpoint, segment, trim) ``sig`` signs."""
    return canonical({k: v for k, v in record.items() if k not in ("hash", "sig")})


def sign(record: dict[str, Any], key: ed25519.Ed25519PrivateKey) -> dict[str, Any]:
    record["sig"] = base64.b64encode(key.sign(checkpoint_message(record))).decode()
    return record


class AuditLogBusy(OSError):
    """Another process writes this directory and instance (two sidecars with one instance_id).
    An OSError, so `authz serve` refuses to start with the message, not a traceback."""


def public_jwk(key: ed25519.Ed25519PublicKey, kid: str) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
            "kid": kid, "use": "sig", "alg": "EdDSA"}


def key_id(key: ed25519.Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "audit-" + hashlib.sha256(raw).hexdigest()[:16]


def load_signing_key(path: str | None) -> ed25519.Ed25519PrivateKey:
    if path is None:
        pem = shared_pem("audit-Ed25519.pem", lambda: ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        if pem is not None:  # one of several workers: the key they share, for the supervisor's life
            shared = serialization.load_pem_private_key(pem, password=None)
            assert isinstance(shared, ed25519.Ed25519PrivateKey)
            return shared
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
        self.digest_key = load_digest_key(cfg.digest_key_file, self.key)
        self.digest_kid = digest_key_id(self.digest_key)
        self._digest = BodyDigester(self.digest_key).hex
        self.dir = Path(cfg.directory) / instance
        self._lock: int | None = None  # an flock on the instance directory: one writer per chain
        self._file: Any = None
        self._path: Path | None = None
        self._seq = 0
        self._prev = GENESIS
        self._since_checkpoint = 0
        self._segment_records = 0
        self._last_checkpoint = time.monotonic()
        self.head: dict[str, Any] | None = None  # the last checkpoint written (published)
        self._sealed: dict[str, Any] | None = None  # a checkpoint not yet flushed
        self._newest_signed: dict[str, Any] | None = None  # for the head file, once synced
        # Group commit (durability answered/fsync): the future the records queued since the
        # writer's last take wait for, and the one of the batch it is writing.
        self._commit: asyncio.Future[bool] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._stopped = ""  # why the writer stopped (a bug), for readiness
        self._write_error = ""  # the last write's error while writes fail (disk full, unwritable)
        self._failing_since = 0.0  # time.time() of the first of the failing writes
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
        self._open_segment()
        if self.stream is not None:
            self.stream.start()
        if self.cfg.sink == "file":  # the opening record synced, and named in the head file, first
            lines, last_seq = self._pending, self._seq
            try:
                await asyncio.to_thread(self._flush, sync=True)
            finally:
                self._to_stream(lines, last_seq)
        self._writer = asyncio.get_running_loop().create_task(self._run())
        self._writer.add_done_callback(self._writer_ended)
        WRITER_UP.set(1)
        COMPONENT_UP.labels(component="audit").set(1)

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        """Requests waiting for a write that will not come (the writer died: a bug) are told,
        and so are readiness, the metrics and the log."""
        if task.cancelled():  # close() did it, and writes what is queued itself
            return
        self._stopped = repr(task.exception())
        WRITER_UP.set(0)
        COMPONENT_UP.labels(component="audit").set(0)
        log.error("the audit writer of %s stopped: %s; no record is written from now on (%s), /readyz "
                  "reports it; restart the sidecar", self.instance, self._stopped, self._consequence())
        commit, self._commit = self._commit, None
        _resolve(commit, False)

    def _consequence(self) -> str:
        if self.cfg.durability != "queued":
            return "every allowed request is refused with 503 audit.unavailable"
        return "records queue until the queue is full, then requests are refused with 503 audit.unavailable"

    def _write_failed(self, exc: OSError) -> None:
        WRITE_FAILURES.inc()
        if not self._write_error:
            self._failing_since = time.time()
            WRITER_UP.set(0)
            COMPONENT_UP.labels(component="audit").set(0)
            log.error("audit writes to %s fail (%s): %s; /readyz reports it until a write succeeds",
                      self.dir, exc, self._consequence())
        else:
            log.debug("audit write failed again", exc_info=exc)
        self._write_error = f"{type(exc).__name__}: {exc}"

    def _write_succeeded(self) -> None:
        if self._write_error:
            log.warning("audit writes to %s succeed again (they failed for %.1f s: %s)", self.dir,
                        time.time() - self._failing_since, self._write_error)
            self._write_error = ""
            WRITER_UP.set(1)
            COMPONENT_UP.labels(component="audit").set(1)

    def health(self) -> dict[str, object]:
        """For ``/readyz``: ok while the writer runs and its writes succeed."""
        state: dict[str, object] = {"ok": True, "instance": self.instance, "durability": self.cfg.durability,
                                    "queue": len(self._queue)}
        if self._writer is None:
            state.update(ok=self._stopped == "", detail="the audit writer is not running")
        elif self._writer.done():
            state.update(ok=False, detail=f"the audit writer stopped: {self._stopped or 'cancelled'}; "
                                         f"{self._consequence()}; restart the sidecar")
        elif self._write_error:
            state.update(ok=False, detail=f"audit writes fail since {format_time(int(self._failing_since * 1000))}: "
                                         f"{self._write_error}; {self._consequence()}")
        return state

    def _open_segment(self) -> None:
        """The segment's signed opening record: where it starts (its own seq) and what it
        continues (``prev``: the last hash the directory held, or the genesis)."""
        record = {"type": "segment", "segment": self.segment, "instance": self.instance, "kid": self.kid,
                  "pid": os.getpid(), "continues": self._seq > 0, "first_seq": self._seq + 1,
                  "previous_hash": self._prev, "digest_kid": self.digest_kid}
        if self.cfg.sink == "file":
            record["head_file"] = HEAD_FILE  # signed: verify expects the file from this segment on
        self._chain_fields(record, self._seq + 1, self._prev)
        self._add_line("segment", canonical(sign(record, self.key)))
        self._newest_signed = {**record, "hash": self._prev}

    def _open_directory(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._seq, self._prev = chain_end(self.dir)
        self._rotate()

    def _take_lock(self) -> None:
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditLogBusy(f"{self.dir} is written by another process: give each sidecar its own "
                               "server.instance_id (the default, host-pid, is unique)") from None
        self._lock = fd

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

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
        commit, self._commit = self._commit, None
        while self._queue:  # offered while the writer was stopping (or after it stopped)
            for pending in self._take():
                self._append_safely(pending)
        self._checkpoint(final=True)
        self._count_written()
        lines, last_seq = self._pending, self._seq
        written = False
        try:
            self._flush(sync=True)
            written = True
        finally:
            self._to_stream(lines, last_seq)
            _resolve(commit, written)
            self._publish_head()
        if self._file is not None:
            self._file.close()
            self._file = None
        self._release_lock()
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
                record[digest[0]] = self._digest(data)  # type: ignore[index]
            self._queue.append(record)
        return True

    async def committed(self) -> bool:
        """Wait until everything offered so far is written (``answered``: handed to the OS;
        ``fsync``: synced). False when the write failed. With ``queued``, at once.

        With ``answered``, when the writer is between rounds, the caller writes everything
        queued itself (``_write_through``): a write to the page cache costs less than the two
        task switches of waiting for the writer. Otherwise (a round in progress, a checkpoint
        due, ``fsync``) group commit: every request that offers before the writer's next take
        waits for the same future, and the writer, woken by the first, writes them all with one
        write."""
        if self.cfg.durability == "queued":
            return True
        if self._writer is None or self._writer.done():  # not started, closed, or stopped (a bug)
            return False
        if self.cfg.durability == "answered":
            written = self._write_through()
            if written is not None:
                return written
        commit = self._commit
        if commit is None:
            commit = self._commit = asyncio.get_running_loop().create_future()
            self._wake_writer()
        return await asyncio.shield(commit)

    def _write_through(self) -> bool | None:
        """Link and write everything queued, now, in the caller's task: whether it was written,
        or None when this is the writer's to do (a round in progress, a key rotation, a
        checkpoint due: it fsyncs in a thread). Records are still counted by the writer's round."""
        if (self._busy or self._next_key is not None or self._pending or len(self._queue) > self.BATCH
                or self._since_checkpoint + len(self._queue) >= self.cfg.checkpoint_every_records
                or time.monotonic() - self._last_checkpoint >= self.cfg.checkpoint_every_seconds):
            return None
        batch, self._queue = self._queue, []
        if len(batch) >= self.cfg.queue_size:
            self._signal_round()  # room again for requests waiting in put()
        for pending in batch:
            self._append_safely(pending)
        lines, last_seq = self._pending, self._seq
        try:
            self._flush(sync=False)
        except OSError as exc:
            self._write_failed(exc)
            return False
        finally:
            self._to_stream(lines, last_seq)
        self._write_succeeded()
        commit, self._commit = self._commit, None  # requests waiting for the writer: written too
        _resolve(commit, True)
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

    def offer_decision(self, fields: DecisionFields) -> bool:
        """Queue a decision record given as its fields (``DecisionFields``) without waiting.
        False when the queue is full.

        The request path only gathers the fields (and encodes the facts, the one part that is a
        live dict); the writer builds the canonical line from them with the seq, prev and digest
        it knows, in one encoding, byte for byte what ``offer`` of the record would have written."""
        if len(self._queue) >= self.cfg.queue_size:
            self._wake_writer()
            return False
        self._queue.append(fields)
        return True

    async def put_decision(self, fields: DecisionFields, *, wait_ms: int) -> bool:
        """``offer_decision``, waiting up to ``wait_ms`` for room when the queue is full."""
        if self.offer_decision(fields):
            return True
        return await self._wait_to_offer(lambda: self.offer_decision(fields), wait_ms)

    async def put(self, record: dict[str, Any], *, wait_ms: int, digest: Digest | None = None) -> bool:
        """``offer``, waiting up to ``wait_ms`` for room when the queue is full."""
        if self.offer(record, digest=digest):
            return True
        return await self._wait_to_offer(lambda: self.offer(record, digest=digest), wait_ms)

    async def _wait_to_offer(self, offer: Callable[[], bool], wait_ms: int) -> bool:
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
            if offer():
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
        if self._commit is not None:  # a request waits for its record: no sleeping (group commit)
            await asyncio.sleep(0)
            return
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
        # Wake ten times a second (or at once when the queue is full, or when a request waits
        # for its record: durability answered/fsync) and take everything queued: the cost of the
        # loop, the write (and the thread hop, for queued and fsync) is shared by every record of
        # the round instead of being paid per request.
        while True:
            await self._sleep()
            if self._next_key is not None:
                self._apply_rotation()
            batch = self._take()
            commit = None
            if not self._queue:  # every record the waiting requests offered is in this batch
                commit, self._commit = self._commit, None
            self._busy = True
            self._signal_round()  # room again for requests waiting in put()
            sealed = written = False
            try:
                for r in batch:
                    self._append_safely(r)
                    if self._since_checkpoint >= self.cfg.checkpoint_every_records:
                        self._checkpoint()
                        sealed = True
                # On schedule even when idle: the lag then measures staleness, and the published
                # head stays fresh (a missing newest file shows against it).
                if time.monotonic() - self._last_checkpoint >= self.cfg.checkpoint_every_seconds:
                    self._checkpoint()
                    sealed = True
                sealed = sealed or self._sealed is not None  # a rotation's checkpoint too
                if self._pending:
                    lines, last_seq = self._pending, self._seq
                    try:
                        if sealed or self.cfg.durability != "answered":
                            await asyncio.to_thread(self._flush, sync=sealed or self.cfg.durability == "fsync")
                        else:  # a write to the page cache, microseconds: not worth a thread hop
                            self._flush(sync=False)
                    finally:  # _flush took the list: hand the same lines to the stream
                        self._to_stream(lines, last_seq)
                written = True
                self._write_succeeded()
                self._publish_head()
            except OSError as exc:
                self._write_failed(exc)
            finally:
                _resolve(commit, written)
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
        try:
            if isinstance(pending, tuple) and len(pending) == len(_DECISION_KEYS):
                self._add_decision(pending)
            elif isinstance(pending, tuple):
                kind, body, data = pending
                linked = self._link(body, data)
                if linked is None:  # offer put them there: a bug; the stand-in below names the request
                    raise ValueError("a queued audit record lost its stand-ins")
                self._add_line(kind, linked)
            else:
                self._append(pending)
        except Exception as exc:
            record = _named(pending)
            WRITE_FAILURES.inc()
            log.error("audit record of request %s could not be written: %r", record.get("request_id"), exc)
            self._append({"type": "unencodable", "record_type": str(record.get("type")),
                          "request_id": str(record.get("request_id")), "error": type(exc).__name__})

    def _add_decision(self, fields: DecisionFields) -> None:
        """Write a decision record from its fields: the keys in canonical (sorted) order, the
        facts already canonical, so one orjson call makes the canonical line."""
        (time_ms, request_id, method, host, path, principal, action, decision, status, reason,
         facts, body) = fields
        record = {
            "action": None if action is None else _action(action),
            "body_hmac": self._digest(body) if body else None,
            "decision": decision, "facts": orjson.Fragment(facts), "host": host, "instance": self.instance,
            "method": method, "path": path, "prev": self._prev,
            "principal": None if principal is None else {
                "client": principal.client, "credential": principal.credential, "issuer": principal.issuer,
                "subject": principal.subject, "tenant": principal.tenant},
            "reason": reason, "request_id": request_id, "segment": self.segment, "seq": self._seq + 1,
            "status": status, "time_ms": time_ms, "type": "decision", "v": 1,
        }
        try:
            line = orjson.dumps(record)
        except TypeError:  # a string orjson refuses (a lone surrogate in a claim): the slow encoder
            record["facts"] = orjson.loads(facts)
            line = canonical(record)
        self._add_line("decision", line)

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
                          self._digest(data).encode()))
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
        self._segment_records += 1
        if kind != "checkpoint":
            self._since_checkpoint += 1

    def _count_written(self) -> None:
        """Add what the round wrote to ``authz_audit_records_total`` (once a round, not per record)."""
        for kind, n in self._written.items():
            metrics.child(RECORDS, type=kind).inc(n)
        self._written.clear()

    def _checkpoint(self, *, final: bool = False) -> None:
        # total: records in the chain through this one (seq counts from the genesis, trims
        # included); segment_records: the segment's, its opening record and this one included.
        record = {"v": 1, "seq": self._seq + 1, "instance": self.instance, "segment": self.segment,
                  "time_ms": _now_ms(), "type": "checkpoint", "kid": self.kid, "records": self._since_checkpoint,
                  "total": self._seq + 1, "segment_records": self._segment_records + 1,
                  "final": final, "prev": self._prev}
        body = canonical(sign(record, self.key))
        self._add_line("checkpoint", body)
        record["hash"] = self._prev
        self._sealed = self._newest_signed = record
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    def _publish_head(self) -> None:
        """The checkpoint just written (flushed) becomes the head: served on ``/audit/head``
        and logged, outside the directory an intruder could prune."""
        head, self._sealed = self._sealed, None
        if head is None:
            return
        self.head = head
        _decision_log.info("audit checkpoint %s seq %d", self.instance, head["seq"],
                           extra={"fields": {"event": "audit_checkpoint", "audit_head": head}})

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
            if self._newest_signed is not None:  # on disk now: the head file names it
                head, self._newest_signed = self._newest_signed, None
                self._write_head_file(head)
            if self._file.tell() >= self.cfg.rotate_bytes:
                self._rotate()

    def _write_head_file(self, head: dict[str, Any]) -> None:
        """Replace the instance directory's head file with ``head`` (synced, then renamed over the
        old one: a crash leaves the old head or the new one, never a torn file)."""
        tmp = self.dir / f".{HEAD_FILE}.tmp"
        with open(tmp, "wb") as f:
            f.write(canonical(head) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / HEAD_FILE)


_DECISION_KEYS = ("time_ms", "request_id", "method", "host", "path", "principal", "action", "decision",
                  "status", "reason", "facts", "body")


def _named(pending: Pending) -> dict[str, Any]:
    """What the stand-in for a record that could not be written says of it (type, request id)."""
    if isinstance(pending, dict):
        return pending
    if len(pending) == len(_DECISION_KEYS):
        return {"type": "decision", "request_id": pending[1]}
    with contextlib.suppress(ValueError, TypeError):
        named = orjson.loads(pending[1])
        if isinstance(named, dict):
            return named
    return {"type": pending[0]}


def _action(action: Any) -> dict[str, Any]:
    """``Action.describe()``, its keys in canonical order."""
    out: dict[str, Any] = {"kind": action.kind}
    if action.model is not None:
        out["model"] = action.model
    if action.name is not None:
        out["name"] = action.name
    out["protocol"] = action.protocol
    return out


def _resolve(commit: asyncio.Future[bool] | None, written: bool) -> None:
    if commit is not None and not commit.done():
        commit.set_result(written)


def last_record(path: Path) -> dict[str, Any] | None:
    """The last complete record of one file (a line cut by a crash is skipped)."""
    for line in reversed(path.read_bytes().splitlines()):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("seq"), int) and isinstance(record.get("hash"), str):
                return record
    return None


def chain_end(directory: Path) -> tuple[int, str]:
    """(seq, hash) of the last record the directory holds, across all its files: the newest
    may be empty (a sealing flush rotated just before a stop) or hold only a cut line."""
    for path in sorted(directory.glob(f"{FILE_PREFIX}*.jsonl"), reverse=True):
        record = last_record(path)
        if record is not None:
            return int(record["seq"]), str(record["hash"])
    return 0, GENESIS


def _now_ms() -> int:
    return int(time.time() * 1000)


def format_time(ms: int | None) -> str:
    """An audit record's time_ms as UTC ISO 8601."""
    if not isinstance(ms, int):
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class AuditLogs:
    """The process's audit writers, one per directory (or stdout) and instance: a reload's new
    stage shares the running writer, so the chain goes on. Owned by the runtime (it outlives every
    config generation) and handed to each pipeline it builds."""

    def __init__(self) -> None:
        self._logs: dict[tuple[str, str], AuditLog] = {}

    def __iter__(self) -> Iterator[AuditLog]:
        return iter(list(self._logs.values()))

    def get(self, cfg: AuditConfig, *, instance: str) -> AuditLog:
        """The writer for this directory and instance (created on first use)."""
        key = (str(Path(cfg.directory).resolve()) if cfg.sink == "file" else "stdout", instance)
        existing = self._logs.get(key)
        if existing is None or (existing.users == 0 and existing._writer is None):
            created = self._logs[key] = AuditLog(cfg, instance=instance)
            return created
        return _reconfigured(existing, cfg)


def _reconfigured(existing: AuditLog, cfg: AuditConfig) -> AuditLog:
    # A reload: the running writer takes the new settings (durability, checkpoints, rotation,
    # queue) from its next round; the Redis Stream sink and the digest key stay as started.
    existing.cfg = cfg.model_copy(update={"redis_stream": existing.cfg.redis_stream,
                                          "digest_key_file": existing.cfg.digest_key_file})
    if cfg.signing_key_file:  # the key file may have been rotated in place
        existing.rotate(load_signing_key(cfg.signing_key_file))
    return existing
