"""A small pipelined RESP2 client for the request path (single-node Redis).

redis-py checks a connection out of a pool, takes locks and builds several objects per
command: over 100 µs of CPU for one EVALSHA, several times the sidecar's whole per-request
budget. This client keeps one TCP (or TLS, or unix socket) connection per store and pipelines
every command over it:

* a command is encoded to bytes once and written at once: no lock, no pool checkout. On an
  idle connection it goes straight to the socket; while other commands are in flight (load),
  the commands of one event-loop iteration are joined into one write at the start of the next;
* replies come back in the order the commands were sent, so each is handed to the oldest
  waiting future (FIFO), parsed by ``hiredis.Reader``;
* every command has a deadline. All commands of a connection share one timeout, so deadlines
  grow along the queue and a single timer, re-armed for the oldest pending deadline, expires
  them: no timer, ``asyncio.timeout()`` or ``wait_for`` per call. A command that times out
  keeps its place in the queue; its reply, when it arrives, is read and dropped, so later
  replies still reach their own callers. While the oldest command has waited twice the timeout
  without a reply, new commands fail at once instead of queueing behind it;
* when the connection breaks, every pending command fails with ``RespConnectionError`` and
  the next command reconnects (with a short backoff after failed attempts, so a Redis that is
  down costs a refused connect every few hundred milliseconds, not one per request). If the
  oldest command has waited ``stall_timeout`` past its deadline with no reply at all, the
  connection is treated as dead (a peer that vanished without a reset) and dropped. Calls still
  waiting for a late reply (below) keep it open for reading, up to ``RETIRE_SECONDS``: a call
  Redis ran just before it stalled (a pause, a long fork) answers when it resumes, and is undone;
* scripts run with EVALSHA; on NOSCRIPT (a restarted or flushed Redis) the same call is sent
  once more as EVAL, which also caches the script again (bounded by what is left of the
  call's timeout);
* a call that must not take effect once its caller has given up (the limits script) carries a
  deadline in Redis's own clock (``eval_before``): the client learns the offset between its
  clock and Redis's ``TIME`` when it connects and from every reply that reports it, and sets the
  deadline a margin before it gives up, so the reply has time to come back. A reply that still
  arrives after the caller gave up is handed to the call's ``on_late`` (to undo what it did).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import math
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis

log = logging.getLogger("authz.store")

ReplyError = hiredis.ReplyError
_INF = math.inf


class RespError(Exception):
    """Redis answered a command with an error reply (``-ERR ...``); the message is Redis's."""


class RespConnectionError(ConnectionError):
    """No usable connection: the connect failed, the connection broke, or the client is closed."""


# -- URLs -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, from a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None            # unix socket
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ssl: ssl.SSLContext | None = dataclasses.field(default=None, repr=False)

    def __str__(self) -> str:
        where = f"unix://{self.path}" if self.path else f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}"
        return f"{where}/{self.db}"


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TRUE = {"1", "true", "yes", "on"}


def parse_seed(seed: str, where: str = "") -> tuple[str, int]:
    """``host:port`` or ``[v6 address]:port`` as (host, port); ``ValueError`` naming ``where``."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9_.-]+):(\d{1,5})", seed)
    port = int(m.group(2) or m.group(4)) if m else 0
    if m is None or not 1 <= port <= 65535:
        raise ValueError(f"{where} {seed!r} is not host:port (an IPv6 address as [addr]:port)".strip())
    return (m.group(1) or m.group(3)), port


def parse_url(url: str) -> Endpoint:
    """The URL forms redis-py's ``from_url`` accepts: ``redis://[[user]:pass@]host[:port][/db]``,
    ``rediss://`` (TLS, verified with the system's CAs), ``unix://[[user]:pass@]/path``; the
    query may give ``db``, ``username``, ``password``, and for TLS ``ssl_cert_reqs``
    (none|optional|required), ``ssl_ca_certs`` and ``ssl_check_hostname``."""
    parsed = urlparse(url)
    query = {name: values[0] for name, values in parse_qs(parsed.query).items() if values}
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("Redis URL must start with redis://, rediss:// or unix://")
    fields: dict[str, Any] = {}
    username = unquote(parsed.username) if parsed.username else query.pop("username", None)
    password = unquote(parsed.password) if parsed.password else query.pop("password", None)
    query.pop("username", None)
    query.pop("password", None)
    fields["username"], fields["password"] = username or None, password or None
    db: str | None = query.pop("db", None)
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ValueError(f"unix:// Redis URL without a socket path: {url!r}")
        fields["path"] = unquote(parsed.path)
    else:
        if parsed.hostname:
            fields["host"] = unquote(parsed.hostname)
        if parsed.port:
            fields["port"] = parsed.port
        if db is None and parsed.path.strip("/"):
            db = unquote(parsed.path).strip("/")
    if db is not None:
        try:
            fields["db"] = int(db)
        except ValueError:
            raise ValueError(f"Redis URL database is not a number: {db!r}") from None
    cert_reqs = query.pop("ssl_cert_reqs", None)
    ca_certs = query.pop("ssl_ca_certs", None)
    check_hostname = query.pop("ssl_check_hostname", None)
    if parsed.scheme == "rediss":
        ctx = ssl.create_default_context(cafile=ca_certs)
        if cert_reqs is not None:
            if cert_reqs.lower() not in _CERT_REQS:
                raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {cert_reqs!r}")
            if cert_reqs.lower() == "none" or (check_hostname is not None and check_hostname.lower() not in _TRUE):
                ctx.check_hostname = False
            ctx.verify_mode = _CERT_REQS[cert_reqs.lower()]
        elif check_hostname is not None and check_hostname.lower() not in _TRUE:
            ctx.check_hostname = False
        fields["ssl"] = ctx
    if query:
        log.warning("redis URL options not used by the pipelined client: %s", ", ".join(sorted(query)))
    return Endpoint(**fields)


# -- encoding ---------------------------------------------------------------------------------

def encode_args(args: Iterable[Any]) -> bytes:
    """RESP bulk strings for ``args`` (str, bytes, int, float), without the array header."""
    parts = []
    for a in args:
        t = type(a)
        if t is bytes:
            b = a
        elif t is str:
            b = a.encode()
        elif t is int:
            b = b"%d" % a
        elif t is float:
            b = repr(a).encode()
        elif t is bytearray or t is memoryview:
            b = bytes(a)
        else:
            raise TypeError(f"cannot send a {t.__name__} to Redis: use str, bytes, int or float")
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def encode_command(*args: Any) -> bytes:
    return b"*%d\r\n" % len(args) + encode_args(args)


class Script:
    """A Lua script: its SHA1 and the encoded command heads for each shape of call."""

    __slots__ = ("_heads", "sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._heads: dict[tuple[int, int], tuple[bytes, bytes]] = {}

    def heads(self, nkeys: int, nargs: int) -> tuple[bytes, bytes]:
        """(EVALSHA head, EVAL head) for ``nkeys`` keys and ``nargs`` arguments: everything up to
        and including numkeys, so a call is a head followed by ``encode_args(keys + args)``."""
        heads = self._heads.get((nkeys, nargs))
        if heads is None:
            n = 3 + nkeys + nargs
            heads = self._heads[(nkeys, nargs)] = (
                b"*%d\r\n" % n + encode_args(("EVALSHA", self.sha, nkeys)),
                b"*%d\r\n" % n + encode_args(("EVAL", self.source, nkeys)))
        return heads


# -- the connection ---------------------------------------------------------------------------

class _Connection(asyncio.Protocol):
    """One connection: commands written in order, replies matched to futures in order."""

    # How long a connection dropped for stalling stays open to read the late replies its callers
    # still want (``on_late``); past this, whether those calls ran is unknown.
    RETIRE_SECONDS = 30.0

    def __init__(self, client: RespClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._timeout = client.timeout
        self._stall = client.stall_timeout
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._deadlines: collections.deque[float] = collections.deque()
        self._expired = 0                 # how many waiters at the head are past their deadline
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INF
        self._out: list[bytes] = []       # commands to write at the next loop iteration
        self._late: dict[asyncio.Future[Any], Callable[[Any], None]] = {}  # replies wanted even late
        self.error: Exception | None = None   # set once the connection is lost (or retired)
        self._retired = False             # no longer used; open only for the late replies wanted
        self.opened_at = loop.time()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:  # pragma: no cover - best effort
                log.debug("could not set socket options", exc_info=True)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        deadlines = self._deadlines
        try:
            while (reply := reader.gets()) is not False:
                if not waiters:
                    raise hiredis.ProtocolError("a reply arrived with no command waiting for it")
                fut = waiters.popleft()
                deadlines.popleft()
                if self._expired:
                    self._expired -= 1
                if not fut.done():
                    fut.set_result(reply)
                    if self._late:
                        self._late.pop(fut, None)
                elif self._late:  # its caller timed out or was cancelled: drop it, or hand it on
                    late = self._late.pop(fut, None)
                    if late is not None:
                        self._client._run_late(late, reply)
        except hiredis.ProtocolError as exc:
            self._fail(RespConnectionError(f"redis protocol error: {exc}"))
            return
        if self._retired and not self._late:  # every late reply wanted has come
            self._transport.abort()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = RespConnectionError(
                f"connection to redis lost: {exc}" if exc else "connection closed by redis")
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, _INF
        waiters, self._waiters = self._waiters, collections.deque()
        self._deadlines.clear()
        if self._late:
            # Whether those ran is unknown: their deadlines stop them running later, but not
            # one Redis ran before the connection ended whose reply never came.
            log.warning("redis %s: %d call(s) that would be undone if they ran after their callers "
                        "gave up ended with the connection, unanswered: whether they ran is unknown",
                        self._client.endpoint, len(self._late))
            self._late.clear()
        self._expired = 0
        for fut in waiters:
            if not fut.done():
                fut.set_exception(self.error)
        self._client._lost(self)

    # commands

    def send(self, payload: bytes, timeout: float | None = None,
             on_late: Callable[[Any], None] | None = None) -> asyncio.Future[Any]:
        """Write one encoded command; the future gets its reply (a ``ReplyError`` for ``-ERR``),
        ``TimeoutError`` after ``timeout`` (the client's when None), or ``RespConnectionError``.
        A reply that comes after the future is done (timed out, cancelled) goes to ``on_late``."""
        if self.error is not None:
            raise self.error
        loop = self._loop
        now = loop.time()
        if self._expired and now - self._deadlines[0] >= self._timeout:
            # The oldest command has waited twice the timeout with no reply: Redis is not
            # answering (paused, overloaded, gone). A new command would queue behind it (replies
            # come in order), so fail it now rather than after a whole timeout, and send nothing.
            waited = now - self._deadlines[0] + self._timeout
            raise TimeoutError(f"redis has not answered for {waited * 1000:.0f} ms")
        fut = loop.create_future()
        deadline = now + (self._timeout if timeout is None else timeout)
        waiters = self._waiters
        if waiters:
            # Commands in flight: more are likely to follow in this loop iteration (a burst of
            # requests, a batch of replies waking their callers). Buffer them and write them all
            # with one syscall at the start of the next iteration.
            out = self._out
            out.append(payload)
            if len(out) == 1:
                loop.call_soon(self._flush)
        else:
            self._transport.write(payload)  # type: ignore[union-attr]
        waiters.append(fut)
        self._deadlines.append(deadline)
        if on_late is not None:
            self._late[fut] = on_late
        if deadline < self._timer_at:
            self._arm(deadline)
        return fut

    def _flush(self) -> None:
        out = self._out
        if self.error is None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]
        out.clear()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        """Fail the commands past their deadline (their replies stay due and are dropped when they
        come); drop the connection if the oldest has had no reply for ``stall_timeout`` more."""
        self._timer, self._timer_at = None, _INF
        if self._retired:  # RETIRE_SECONDS have passed without every late reply
            self._transport.abort()  # type: ignore[union-attr]
            return
        if self.error is not None:
            return
        now = self._loop.time()
        waiters, deadlines = self._waiters, self._deadlines
        n, i = len(waiters), self._expired
        while i < n:
            if deadlines[i] > now:
                break
            fut = waiters[i]
            if not fut.done():
                fut.set_exception(TimeoutError(f"no reply from redis within {self._timeout * 1000:g} ms"))
            i += 1
        self._expired = i
        when = deadlines[i] if i < n else _INF
        if i:
            overdue = now - deadlines[0]
            if overdue >= self._stall:
                error = RespConnectionError(
                    f"no reply from redis for {overdue + self._timeout:.1f} s: dropping the connection")
                if self._late:
                    self._retire(error)
                else:
                    self._fail(error)
                return
            when = min(when, deadlines[0] + self._stall)
        if when < _INF:
            self._arm(when)

    def _retire(self, error: Exception) -> None:
        """Stop using the connection (the client opens another) but keep reading it: calls whose
        callers gave up still want their replies (``on_late``: a limits call Redis may have run
        just before it stalled, to be undone), which come, in order, if Redis resumes. It closes
        when the last of them has come, or after ``RETIRE_SECONDS``."""
        self.error = error
        self._retired = True
        waiters = self._waiters
        for _ in self._out:  # buffered, never written: no reply will come for these
            fut = waiters.pop()
            self._deadlines.pop()
            self._late.pop(fut, None)
        self._out.clear()
        for fut in waiters:
            if not fut.done():
                fut.set_exception(error)
        self._client._retire(self)
        self._arm(self._loop.time() + self.RETIRE_SECONDS)
        if not self._late:
            self._transport.abort()  # type: ignore[union-attr]

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self._transport is not None:
            self._transport.abort()  # connection_lost fails whatever is pending

    def close(self) -> None:
        self._fail(RespConnectionError("redis client closed"))

    @property
    def pending(self) -> int:
        return len(self._waiters)


# -- the client -------------------------------------------------------------------------------

class RespClient:
    """Pipelined commands over one connection, opened on first use and reopened after it breaks.

    Every command is bounded by ``timeout`` (a command that must wait for a connection being
    opened is bounded by it too; the connect itself, by ``connect_timeout``). Failures raise
    ``RespError`` (an error reply), ``RespConnectionError`` (an ``OSError``) or ``TimeoutError``.
    """

    def __init__(self, url: str = "", *, endpoint: Endpoint | None = None, timeout: float = 0.05,
                 connect_timeout: float = 0.5, stall_timeout: float | None = None,
                 backoff: tuple[float, float] = (0.05, 0.5)) -> None:
        self.endpoint = endpoint or parse_url(url)
        self.timeout = max(timeout, 0.001)
        self.connect_timeout = max(connect_timeout, 0.001)
        self.stall_timeout = max(1.0, 4 * self.timeout) if stall_timeout is None else stall_timeout
        self._backoff_min, self._backoff_max = backoff
        self._backoff = self._backoff_min
        self._conn: _Connection | None = None
        self._retired: set[_Connection] = set()  # dropped for stalling, reading late replies
        self._connecting: asyncio.Task[_Connection | None] | None = None
        self._retry_at = 0.0              # loop time before which no new connect is attempted
        self._connect_started = 0.0
        self._last_error = ""
        self._failing = False             # logged the outage already
        self._closed = False
        self.clock_offset_us = 0.0        # Redis TIME minus time.time(), as µs (see observe_time)
        self.reply_margin = min(0.005, self.timeout / 5)  # deadline this long before giving up

    # hot path

    async def request(self, payload: bytes) -> Any:
        """Send one encoded command; return its reply. Raises ``RespError`` for an error reply."""
        conn = self._conn
        if conn is None:
            conn = await self._connection()
        reply = await conn.send(payload)
        if reply.__class__ is ReplyError:
            raise RespError(str(reply))
        return reply

    async def evalsha(self, script: Script, nkeys: int, nargs: int, body: bytes) -> Any:
        """Run ``script``: ``body`` is ``encode_args(keys + args)``. One round trip, or two
        when Redis does not have the script cached (then sent as EVAL, which caches it)."""
        conn = self._conn
        if conn is None:
            conn = await self._connection()
        head = script._heads.get((nkeys, nargs)) or script.heads(nkeys, nargs)
        reply = await conn.send(head[0] + body)
        if reply.__class__ is ReplyError:
            if not str(reply).startswith("NOSCRIPT"):
                raise RespError(str(reply))
            reply = await self.request(head[1] + body)
        return reply

    async def eval_before(self, script: Script, nkeys: int, nargs: int, body: bytes,
                          on_late: Callable[[Any], None] | None = None) -> Any:
        """Run ``script`` with one more argument after ``body``: its deadline, the Redis ``TIME``
        (µs) after which the script must change nothing. It is the moment this call gives up
        (``timeout`` from now, whatever connecting takes) less ``reply_margin``, in Redis's clock.
        A reply that arrives after the call gave up goes to ``on_late``."""
        left = self.timeout
        conn = self._conn
        if conn is None:
            loop = asyncio.get_running_loop()
            give_up = loop.time() + left
            conn = await self._connection()
            left = give_up - loop.time()
            if left <= self.reply_margin:
                raise TimeoutError(f"no time left for redis within {self.timeout * 1000:g} ms")
        d = b"%d" % int((time.time() + left - self.reply_margin) * 1_000_000 + self.clock_offset_us)
        tail = b"%s$%d\r\n%s\r\n" % (body, len(d), d)
        head = script._heads.get((nkeys, nargs + 1)) or script.heads(nkeys, nargs + 1)
        reply = await conn.send(head[0] + tail, left, on_late)
        if reply.__class__ is ReplyError:
            if not str(reply).startswith("NOSCRIPT"):
                raise RespError(str(reply))
            # Sent again as EVAL (which caches the script), with the same deadline.
            conn = self._conn or await self._connection()
            reply = await conn.send(head[1] + tail, None, on_late)
            if reply.__class__ is ReplyError:
                raise RespError(str(reply))
        return reply

    def observe_time(self, redis_us: float, local_us: float) -> None:
        """A reply carried Redis's clock ``redis_us``, received at ``local_us`` (``time.time()``).
        The offset kept is the largest seen (the reply's way back only makes it look smaller),
        unless Redis's clock stepped back or the connection is new (then it restarts there)."""
        seen = redis_us - local_us
        if seen > self.clock_offset_us or seen < self.clock_offset_us - 100_000:
            self.clock_offset_us = seen

    def _run_late(self, late: Callable[[Any], None], reply: Any) -> None:
        try:
            late(reply)
        except Exception:  # a late handler must never break the connection's reply matching
            log.exception("handling a late redis reply failed")

    async def pipeline(self, payloads: Iterable[bytes]) -> list[asyncio.Future[Any]]:
        """Send encoded commands back to back without waiting between them: one future per
        reply, in order. An error reply is the future's value (a ``ReplyError``), not raised,
        so a caller can tell which of a batch went through."""
        conn = self._conn
        if conn is None:
            conn = await self._connection()
        return [conn.send(payload) for payload in payloads]

    async def execute(self, *args: Any) -> Any:
        return await self.request(encode_command(*args))

    async def eval(self, script: Script, keys: Iterable[Any], args: Iterable[Any]) -> Any:
        keys, args = list(keys), list(args)
        return await self.evalsha(script, len(keys), len(args), encode_args(keys + args))

    # connecting

    async def _connection(self) -> _Connection:
        if self._closed:
            raise RespConnectionError("redis client is closed")
        task = self._connecting
        loop = asyncio.get_running_loop()
        if task is None:
            wait = self._retry_at - loop.time()
            if wait > 0:
                raise RespConnectionError(
                    f"redis {self.endpoint} unavailable ({self._last_error}); next attempt in {wait * 1000:.0f} ms")
            task = self._connecting = loop.create_task(self._connect())
            self._connect_started = loop.time()
        elif loop.time() - self._connect_started >= self.timeout:
            # A connect that has already outlasted one call's timeout (a Redis that accepts but
            # does not answer): fail now rather than make every call wait a whole timeout for it.
            raise TimeoutError(f"still connecting to redis {self.endpoint} after "
                               f"{(loop.time() - self._connect_started) * 1000:.0f} ms")
        try:
            conn = await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except TimeoutError:
            raise TimeoutError(f"still connecting to redis {self.endpoint} after {self.timeout * 1000:g} ms") from None
        except asyncio.CancelledError:
            if self._closed and task.cancelled():  # close() stopped the connect, not our caller
                raise RespConnectionError("redis client is closed") from None
            raise
        if conn is None:
            raise RespConnectionError(f"cannot connect to redis {self.endpoint}: {self._last_error}")
        return conn

    async def _connect(self) -> _Connection | None:
        """Open a connection (never raises: the outcome is in ``_conn`` / ``_last_error``)."""
        loop = asyncio.get_running_loop()
        try:
            conn = await self._open(loop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._retry_at = loop.time() + self._backoff
            self._backoff = min(self._backoff * 2, self._backoff_max)
            if not self._failing:
                self._failing = True
                log.warning("cannot connect to redis %s: %s (retrying on demand)", self.endpoint, self._last_error)
            return None
        finally:
            self._connecting = None
        if self._closed:
            conn.close()
            return None
        self._conn = conn
        if self._failing:
            self._failing = False
            log.warning("connected to redis %s again", self.endpoint)
        return conn

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        ep = self.endpoint
        try:
            return await self._dial(loop, ep)
        except TimeoutError:
            raise TimeoutError(f"no connection within {self.connect_timeout * 1000:g} ms") from None

    async def _dial(self, loop: asyncio.AbstractEventLoop, ep: Endpoint) -> _Connection:
        async with asyncio.timeout(self.connect_timeout):
            if ep.path is not None:
                _, conn = await loop.create_unix_connection(lambda: _Connection(self, loop), ep.path)
            else:
                _, conn = await loop.create_connection(lambda: _Connection(self, loop), ep.host, ep.port, ssl=ep.ssl)
            setup = []
            if ep.password is not None:
                setup.append(encode_command("AUTH", ep.username, ep.password) if ep.username
                             else encode_command("AUTH", ep.password))
            if ep.db:
                setup.append(encode_command("SELECT", ep.db))
            setup.append(b"*1\r\n$4\r\nTIME\r\n")  # the clock the deadlines are stated in
            futures: list[asyncio.Future[Any]] = []
            try:
                futures += [conn.send(p, self.connect_timeout) for p in setup]  # pipelined
                for fut in futures:
                    reply = await fut
                    if reply.__class__ is ReplyError:
                        raise RespError(str(reply))
                seconds, micros = reply
                self.clock_offset_us = int(seconds) * 1_000_000 + int(micros) - time.time() * 1_000_000
            except BaseException:
                for fut in futures:
                    fut.cancel()
                conn.close()
                raise
        return conn

    def _retire(self, conn: _Connection) -> None:
        """``conn`` stalled: the next call opens another; it stays open for its late replies."""
        self._retired.add(conn)
        self._lost(conn)

    def _lost(self, conn: _Connection) -> None:
        if self._conn is not conn:
            self._retired.discard(conn)
            return
        self._conn = None
        if self._closed:
            return
        now = conn._loop.time()
        if now - conn.opened_at >= 1.0:
            log.warning("redis %s: %s", self.endpoint, conn.error)
            self._backoff = self._backoff_min
        else:
            # Closed right after it opened (a server refusing clients, say): counts as a failed
            # attempt, so reconnects back off instead of following every call.
            log.debug("redis %s: %s", self.endpoint, conn.error)
            self._last_error = str(conn.error)
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, self._backoff_max)

    async def close(self) -> None:
        """Close the connection; pending and later commands fail with ``RespConnectionError``."""
        self._closed = True
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
        conn, self._conn = self._conn, None
        retired, self._retired = self._retired, set()
        for c in (conn, *retired):
            if c is not None:
                c.close()
        if conn is not None or retired:
            await asyncio.sleep(0)  # let the transports deliver connection_lost
