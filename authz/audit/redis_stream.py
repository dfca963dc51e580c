"""The Redis Stream sink (``audit.redis_stream``): every audit line, checkpoints included, is
XADDed to one stream shared by all replicas, for central collection; and the export that turns
the stream back into per-instance files ``authz audit verify`` checks.

The file (or stdout) sink stays the source of truth and the stream never slows it down: the
writer hands each round's lines over (no I/O, no await) once they are written, and a task of
this module sends them as one pipelined batch of ``XADD stream MAXLEN ~ N * r LINE instance I
seq S``. While Redis is down or slow the lines wait, in order, in a bounded buffer; past the
bound the oldest are skipped (counted, logged: the files still hold them), and sending resumes
by itself when Redis answers again. A batch cut by a broken connection is sent again from its
first unconfirmed line, so the stream may hold a line twice: the export drops exact duplicates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

from authz.audit.config import RedisStreamConfig
from authz.audit.log import HEAD_FILE, STREAM_BACKLOG, STREAM_FAILURES
from authz.store.resp import ReplyError, RespClient, encode_args

log = logging.getLogger("authz.audit")

_FAILED = STREAM_FAILURES.labels(what="failed")
_DROPPED = STREAM_FAILURES.labels(what="dropped")

BATCH_MAX = 5000          # lines per pipelined round
WARN_EVERY = 10.0         # seconds between warnings while the stream is failing
BACKOFF = (0.1, 2.0)      # seconds between attempts while Redis fails


class RedisStreamSink:
    def __init__(self, cfg: RedisStreamConfig, *, instance: str, timeout: float = 2.0) -> None:
        self.cfg = cfg
        self.instance = instance.encode()
        self.client = RespClient(cfg.url, timeout=timeout, connect_timeout=min(timeout, 1.0),
                                 backoff=(0.1, 1.0))
        self._buf: collections.deque[tuple[int, bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._head = b"*12\r\n" + encode_args((b"XADD", cfg.stream, b"MAXLEN", b"~", cfg.maxlen, b"*"))
        self.failing = False
        self._error = ""
        self._last_warning = 0.0
        self._skipped: list[int] = [0, 0, 0]    # count, first seq, last seq since the last warning
        self.sent = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, lines: list[bytes], last_seq: int) -> None:
        """Queue lines written by the writer (consecutive seqs ending at ``last_seq``). Never waits."""
        if not lines:
            return
        first = last_seq - len(lines) + 1
        self._buf.extend(zip(range(first, last_seq + 1), lines, strict=True))
        over = len(self._buf) - self.cfg.buffer_records
        if over > 0:
            for _ in range(over):
                seq, _line = self._buf.popleft()
                if not self._skipped[0]:
                    self._skipped[1] = seq
                self._skipped[0] += 1
                self._skipped[2] = seq
            _DROPPED.inc(over)
            self._warn(self._error if self.failing else None)
        STREAM_BACKLOG.set(len(self._buf))
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._buf)

    async def close(self, *, drain_seconds: float = 2.0) -> None:
        """Try for up to ``drain_seconds`` to send what is buffered, then stop."""
        if self._task is None:
            return
        if self.failing:  # Redis is down: one short try, do not hold the shutdown
            drain_seconds = min(drain_seconds, 0.5)
        deadline = time.monotonic() + drain_seconds
        while self._buf and time.monotonic() < deadline and not self._task.done():
            self._wake.set()
            await asyncio.sleep(0.02)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._buf:
            log.warning("audit stream %s: %d line(s) (seq %d..%d) not sent at shutdown; the audit files hold them",
                        self.cfg.stream, len(self._buf), self._buf[0][0], self._buf[-1][0])
        await self.client.close()

    # --- sending -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF[0]
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buf:
                error = await self._send_batch()
                STREAM_BACKLOG.set(len(self._buf))
                if error is None:
                    backoff = BACKOFF[0]
                    if self.failing:
                        self.failing = False
                        log.warning("audit stream %s: sending again (%d line(s) waiting)", self.cfg.stream,
                                    len(self._buf))
                    continue
                self.failing = True
                self._error = error
                self._warn(error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF[1])

    async def _send_batch(self) -> str | None:
        batch = [self._buf[i] for i in range(min(len(self._buf), BATCH_MAX))]
        futures: list[asyncio.Future[Any]] = []
        error: str | None = None
        try:
            futures = await self.client.pipeline(
                self._head + encode_args((b"r", line, b"instance", self.instance, b"seq", seq))
                for seq, line in batch)
        except (OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        ok = 0
        for fut in futures:  # replies come in order: count the confirmed prefix
            try:
                reply = await fut
            except (OSError, TimeoutError) as exc:
                error = error or f"{type(exc).__name__}: {exc}"
                continue
            if isinstance(reply, ReplyError):
                error = error or f"redis error: {reply}"
            elif error is None:
                ok += 1
        for _ in range(ok):
            self._buf.popleft()
        self.sent += ok
        if error is not None:
            _FAILED.inc(len(batch) - ok)
        return error

    def _warn(self, error: str | None) -> None:
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY:
            return
        self._last_warning = now
        msg = f"audit stream {self.cfg.stream}: "
        msg += f"cannot write to redis ({error}); " if error else "redis cannot keep up; "
        msg += f"{len(self._buf)} line(s) waiting, sent again when it answers"
        n, first, last = self._skipped
        if n:
            msg += (f"; {n} line(s) (seq {first}..{last}) skipped because the buffer "
                    f"(audit.redis_stream.buffer_records={self.cfg.buffer_records}) was full: the audit files "
                    "hold them, the stream will show a gap")
            self._skipped = [0, 0, 0]
        log.warning(msg)


# --- the export ------------------------------------------------------------------------------------

def _next_id(entry_id: bytes) -> bytes:
    ms, _, seq = entry_id.partition(b"-")
    return ms + b"-" + str(int(seq) + 1).encode()


async def read_stream(url: str, stream: str, *, instance: str | None = None,
                      page: int = 1000) -> dict[str, list[bytes]]:
    """All lines of the stream, per instance, in stream order (XRANGE in pages)."""
    client = RespClient(url, timeout=10.0, connect_timeout=5.0)
    out: dict[str, list[bytes]] = {}
    start = b"-"
    try:
        while True:
            entries = await client.execute("XRANGE", stream, start, "+", "COUNT", page)
            for _entry_id, fields in entries:
                f = dict(zip(fields[::2], fields[1::2], strict=True))
                inst = f.get(b"instance", b"").decode()
                if instance is not None and inst != instance:
                    continue
                if b"r" in f:
                    out.setdefault(inst, []).append(f[b"r"].rstrip(b"\n"))
            if len(entries) < page:
                return out
            start = _next_id(entries[-1][0])
    finally:
        await client.close()


def _seq(line: bytes) -> int:
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return 0
    return seq if isinstance(seq, int) else 0


def _newest_signed(lines: list[bytes]) -> bytes | None:
    for line in reversed(lines):
        if b'"type":"checkpoint"' in line or b'"type":"segment"' in line:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("type") in ("checkpoint", "segment"):
                return line
    return None


def write_instance_files(lines_by_instance: dict[str, list[bytes]], out: Path) -> list[str]:
    """Write ``out/<instance>/audit-<first seq>.jsonl`` files that ``authz audit verify`` reads;
    return a summary per instance (line count, seq range, gaps)."""
    summary = []
    for instance, lines in sorted(lines_by_instance.items()):
        if not instance or "/" in instance or instance in (".", ".."):
            summary.append(f"instance {instance!r}: not a usable directory name; {len(lines)} line(s) skipped")
            continue
        seen: set[bytes] = set()
        unique = []
        for line in lines:  # a batch sent again after a broken connection: the same bytes twice
            if line not in seen:
                seen.add(line)
                unique.append(line)
        # Stream order is send order; a resent batch can put a line after its successor: seq order.
        unique.sort(key=_seq)
        d = out / instance
        d.mkdir(parents=True, exist_ok=True)
        if any(d.glob("audit-*.jsonl")):
            raise FileExistsError(f"{d} already holds audit files: export into an empty directory")
        first = _seq(unique[0]) if unique else 0
        (d / f"audit-{max(first, 1):012d}.jsonl").write_bytes(b"".join(line + b"\n" for line in unique))
        newest = _newest_signed(unique)
        if newest is not None:  # what the sidecar's head file would name, as the stream saw it
            (d / HEAD_FILE).write_bytes(newest + b"\n")
        seqs = [_seq(line) for line in unique]
        gaps = [f"{a + 1}..{b - 1}" for a, b in itertools.pairwise(seqs) if b > a + 1]
        text = f"instance {instance}: {len(unique)} record(s), seq {first}..{seqs[-1] if seqs else 0}"
        if len(unique) < len(lines):
            text += f" ({len(lines) - len(unique)} duplicate(s) dropped)"
        if first > 1:
            text += f"; seq 1..{first - 1} not in the stream (trimmed by MAXLEN, or sent before the stream was on)"
        if gaps:
            text += f"; missing from the stream: seq {', '.join(gaps)}"
        summary.append(text)
    return summary


def export_stream(url: str, stream: str, out: Path, *, instance: str | None = None) -> list[str]:
    return write_instance_files(asyncio.run(read_stream(url, stream, instance=instance)), out)

