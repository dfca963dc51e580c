"""The pipelined RESP client (authz.store.resp) and RedisStore on top of it, against real
redis-servers started here (never the machine's own)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import ssl
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from authz.dev.stack import ManagedProcess, start_redis
from authz.store import RedisStore, StoreUnavailable
from authz.store.limits import RateOp, ReserveOp
from authz.store.limits_script import LIMITS_LUA
from authz.store.resp import (
    RespClient,
    RespConnectionError,
    RespError,
    Script,
    _Connection,
    encode_args,
    encode_command,
    parse_url,
)


class PrivateRedis:
    """redis-servers of one test's own (killed, flushed or reconfigured at will)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[ManagedProcess] = []

    def __call__(self, *extra: str, port: int | None = None) -> tuple[str, int]:
        url, proc = start_redis(self.tmp / f"redis{len(self.procs)}", port=port, extra=list(extra))
        self.procs.append(proc)
        return url, int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
def private_redis(tmp_path):
    servers = PrivateRedis(tmp_path)
    yield servers
    for proc in servers.procs:
        proc.stop()


# -- URLs and encoding ------------------------------------------------------------------------

def test_parse_url_forms():
    ep = parse_url("redis://127.0.0.1:7000/3")
    assert (ep.host, ep.port, ep.db, ep.username, ep.password, ep.ssl, ep.path) == ("127.0.0.1", 7000, 3, None, None,
                                                                                   None, None)
    ep = parse_url("redis://alice:p%40ss@cache.internal/2")
    assert (ep.host, ep.port, ep.db, ep.username, ep.password) == ("cache.internal", 6379, 2, "alice", "p@ss")
    ep = parse_url("redis://:secret@h:1")
    assert (ep.username, ep.password, ep.db) == (None, "secret", 0)
    ep = parse_url("redis://h/0?db=5&password=pw")
    assert (ep.db, ep.password) == (5, "pw")
    ep = parse_url("unix:///run/redis.sock?db=4")
    assert (ep.path, ep.db) == ("/run/redis.sock", 4)
    ep = parse_url("rediss://h:6380/1")
    assert isinstance(ep.ssl, ssl.SSLContext) and ep.ssl.verify_mode == ssl.CERT_REQUIRED and ep.ssl.check_hostname
    ep = parse_url("rediss://h:6380/1?ssl_cert_reqs=none")
    assert ep.ssl.verify_mode == ssl.CERT_NONE and not ep.ssl.check_hostname
    assert "secret" not in repr(parse_url("redis://:secret@h")) + str(parse_url("redis://:secret@h"))
    for bad in ("http://h", "redis://h/notanumber", "unix://"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_encoding():
    assert encode_command("SET", "k", b"v\r\n", 12, 1.5) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n12\r\n$3\r\n1.5\r\n")
    assert encode_args(["é"]) == b"$2\r\n\xc3\xa9\r\n"
    with pytest.raises(TypeError):
        encode_args([None])
    s = Script("return 1")
    sha_head, eval_head = s.heads(1, 2)
    assert s.sha == hashlib.sha1(b"return 1").hexdigest()
    assert sha_head == b"*6\r\n$7\r\nEVALSHA\r\n$40\r\n" + s.sha.encode() + b"\r\n$1\r\n1\r\n"
    assert eval_head == b"*6\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n1\r\n"


def test_limits_body_matches_redis_py_encoding():
    s = RedisStore("redis://127.0.0.1:1/0", prefix="p:")
    rates = [RateOp("r:ü", 1666.6666666666667, 10, 2), RateOp("r2", 1000, 3)]
    reserves = [ReserveOp("b", 1_000_000, 500, 86400)]
    args = ["p:r:ü", "p:r2", "p:b", 2, 1, repr(1666.6666666666667), 10, 2, repr(1000), 3, 1, 1_000_000, 500, 86400]
    assert s._limits_body(rates, reserves) == encode_args(args)


# -- pipelining -------------------------------------------------------------------------------

async def test_concurrent_calls_each_get_their_own_reply(redis_url):
    client = RespClient(redis_url, timeout=5)
    try:
        # Sizes from a few bytes to 200 KB: replies split across reads and batched into one.
        payloads = [os.urandom(1 + (i * 7919) % (200_000 if i % 50 == 0 else 300)) for i in range(1000)]
        replies = await asyncio.gather(*(client.execute("ECHO", p) for p in payloads))
        assert replies == payloads
        assert client._conn is not None and client._conn.pending == 0
    finally:
        await client.close()


async def test_a_pipeline_answers_each_command_in_order_with_errors_as_values(redis_url):
    client = RespClient(redis_url, timeout=5)
    try:
        futures = await client.pipeline([encode_command("ECHO", "a"), encode_command("NOSUCHCOMMAND"),
                                         encode_command("ECHO", "b")])
        first, error, last = [await f for f in futures]
        assert (first, last) == (b"a", b"b")
        assert "unknown command" in str(error).lower() and not isinstance(error, bytes)
    finally:
        await client.close()


async def test_store_ops_and_limits_pipelined(redis_url):
    store = RedisStore(redis_url, timeout=5, prefix="pipe:")
    try:
        await store.client.delete(*[f"pipe:n{i}" for i in range(300)], "pipe:rl")
        got = await asyncio.gather(*(store.incr(f"n{i}", i, ttl=60 if i % 2 else None) for i in range(300)))
        assert got == list(range(300))
        # 300 concurrent requests against one bucket of 100: exactly 100 pass.
        results = await asyncio.gather(*(store.apply_limits([RateOp("rl", 1_000_000.0, 100)], [])
                                         for _ in range(300)))
        assert sum(r.allowed for r in results) == 100
    finally:
        await store.close()


async def test_late_reply_after_timeout_does_not_shift_later_replies(redis_url):
    client = RespClient(redis_url, timeout=0.1)
    admin = aioredis.Redis.from_url(redis_url)
    loop = asyncio.get_running_loop()
    try:
        await admin.delete("resp:late")
        assert await client.execute("ECHO", "warm") == b"warm"
        # BLPOP holds back this connection's replies until another client pushes: it and the ECHO
        # queued behind it time out; their replies, when they come, must be dropped, not handed
        # to the calls made after.
        started = loop.time()
        slow = await asyncio.gather(client.execute("BLPOP", "resp:late", 0), client.execute("ECHO", "a"),
                                    return_exceptions=True)
        assert [type(e) for e in slow] == [TimeoutError, TimeoutError]
        assert loop.time() - started < 0.5
        waiting = asyncio.ensure_future(client.execute("ECHO", "b"))  # behind the late replies
        await asyncio.sleep(0)
        await admin.lpush("resp:late", "x")
        assert await waiting == b"b"
        assert await asyncio.gather(*(client.execute("ECHO", x) for x in "cde")) == [b"c", b"d", b"e"]
        assert client._conn.pending == 0
        assert await admin.llen("resp:late") == 0  # BLPOP's reply was read (and dropped)
    finally:
        await client.close()
        await admin.aclose()


async def test_store_timeout_is_store_unavailable(redis_url):
    store = RedisStore(redis_url, timeout=0.1, prefix="slow:")
    try:
        await store.ping()
        await store.client.delete("slow:none")
        blocker = asyncio.ensure_future(store._resp.execute("BLPOP", "slow:none", 0))
        await asyncio.sleep(0)  # sent first: the limits call waits behind it
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            await store.apply_limits([RateOp("k", 1000.0, 5)], [])
        assert loop.time() - started < 0.3
        with pytest.raises(TimeoutError):
            await blocker
        await store.client.lpush("slow:none", "x")
        assert (await store.apply_limits([RateOp("k", 1000.0, 5)], [])).allowed
    finally:
        await store.close()


# -- scripts and errors -----------------------------------------------------------------------

async def test_noscript_after_script_flush_is_recovered(private_redis):
    url, _ = private_redis()
    store = RedisStore(url, timeout=2, prefix="ns:")
    sha = hashlib.sha1(LIMITS_LUA.encode()).hexdigest()
    try:
        assert (await store.apply_limits([RateOp("a", 1000.0, 5)], [])).allowed
        assert await store.client.script_exists(sha) == [True]
        await store.client.script_flush()
        # Every call in flight gets NOSCRIPT and is sent again as EVAL, once.
        results = await asyncio.gather(*(store.apply_limits([RateOp("b", 1_000_000.0, 10)], []) for _ in range(20)))
        assert sum(r.allowed for r in results) == 10
        assert await store.client.script_exists(sha) == [True]
        assert await store.incr("c", 2, ttl=10) == 2  # the INCR script too
    finally:
        await store.close()


async def test_error_reply_is_store_unavailable_with_the_server_message(redis_url):
    store = RedisStore(redis_url, timeout=2, prefix="err:")
    try:
        await store.client.delete("err:list", "err:text")
        await store.client.rpush("err:list", "x")
        await store.set("text", b"abc")
        with pytest.raises(StoreUnavailable, match="value is not an integer"):
            await store.incr("text")
        with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
            await store.apply_limits([], [ReserveOp("list", 100, 1, 60)])
        with pytest.raises(RespError, match="unknown command"):
            await store._resp.execute("NOSUCHCOMMAND")
        assert await store.get("text") == b"abc"  # the connection is still in step
    finally:
        await store.close()


# -- connecting -------------------------------------------------------------------------------

async def test_auth_and_select(private_redis):
    _, port = private_redis("--requirepass", "s3cret")
    admin = aioredis.Redis(port=port, password="s3cret")
    try:
        await admin.execute_command("ACL", "SETUSER", "alice", "on", ">al1ce", "~*", "+@all")
        store = RedisStore(f"redis://:s3cret@127.0.0.1:{port}/3", timeout=2)
        await store.set("k", b"v3")
        await store.close()
        store = RedisStore(f"redis://alice:al1ce@127.0.0.1:{port}/4", timeout=2)
        await store.set("k", b"v4")
        await store.close()
        assert await admin.execute_command("SELECT", 3) and await admin.get("k") == b"v3"
        assert await admin.execute_command("SELECT", 4) and await admin.get("k") == b"v4"
        assert await admin.execute_command("SELECT", 0) and await admin.get("k") is None

        for bad in (f"redis://127.0.0.1:{port}/0", f"redis://:wrong@127.0.0.1:{port}/0"):
            store = RedisStore(bad, timeout=2)
            with pytest.raises(StoreUnavailable, match=r"NOAUTH|WRONGPASS"):
                await store.get("k")
            await store.close()
    finally:
        await admin.aclose()


async def test_unix_socket(private_redis, tmp_path):
    sock = tmp_path / "r.sock"
    private_redis("--unixsocket", str(sock))
    store = RedisStore(f"unix://{sock}?db=2", timeout=2)
    try:
        await store.set("u", b"1")
        admin = aioredis.Redis(unix_socket_path=str(sock), db=2)
        assert await admin.get("u") == b"1"
        await admin.aclose()
    finally:
        await store.close()


async def test_redis_killed_fails_fast_then_recovers_on_restart(private_redis):
    url, port = private_redis()
    store = RedisStore(url, timeout=2, connect_timeout=0.5)
    loop = asyncio.get_running_loop()
    ops = [RateOp("k", 1000.0, 1000)]
    try:
        assert (await store.apply_limits(ops, [])).allowed
        # A call in flight when Redis dies fails at once, not after the 2 s timeout.
        pending = asyncio.ensure_future(store._resp.execute("BLPOP", "never", 10))
        await asyncio.sleep(0.05)
        proc = private_redis.procs[0]
        proc.signal(signal.SIGKILL)
        proc.proc.wait(5)
        started = loop.time()
        with pytest.raises(RespConnectionError):
            await pending
        for _ in range(20):
            with pytest.raises(StoreUnavailable):
                await store.apply_limits(ops, [])
            await asyncio.sleep(0.01)
        assert loop.time() - started < 1.0

        private_redis(port=port)  # back, same port, empty
        back = loop.time()
        while True:
            try:
                assert (await store.apply_limits(ops, [])).allowed
                break
            except StoreUnavailable:
                assert loop.time() - back < 1.5, "not reconnected within 1.5 s"
                await asyncio.sleep(0.02)
        assert await store.incr("n", 1, ttl=5) == 1
    finally:
        await store.close()


class FakeServer:
    """A TCP server that accepts and answers with ``reply`` (bytes; None: never answers)."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply
        self.accepted = 0
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self.writers.append(writer)
            try:
                while data := await reader.read(65536):
                    if data.endswith(b"*1\r\n$4\r\nTIME\r\n"):  # the client's set-up: its clock
                        now = str(int(time.time())).encode()
                        writer.write(b"*2\r\n$%d\r\n%s\r\n$1\r\n0\r\n" % (len(now), now))
                    elif self.reply is not None:
                        writer.write(self.reply)
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.01)  # let the handlers see EOF and end


async def test_stalled_connection_is_dropped_and_reopened():
    server = FakeServer()  # accepts, never answers: a peer that vanished without a reset
    async with server as url:
        client = RespClient(url, timeout=0.05, stall_timeout=0.2)
        loop = asyncio.get_running_loop()
        try:
            started = loop.time()
            for _ in range(3):
                with pytest.raises(TimeoutError):
                    await client.execute("PING")
            assert loop.time() - started < 0.5
            first = client._conn
            await asyncio.sleep(0.3)  # the oldest command has had no reply for 0.2 s past its deadline
            assert first.error is not None and "no reply from redis" in str(first.error)
            assert client._conn is None
            with pytest.raises(TimeoutError):
                await client.execute("PING")
            assert server.accepted == 2 and client._conn is not first
        finally:
            await client.close()


async def test_garbage_from_the_server_drops_the_connection():
    fake = FakeServer(b"!garbage\r\n")
    async with fake as url:
        client = RespClient(url, timeout=1)
        try:
            with pytest.raises(RespConnectionError, match="protocol error"):
                await client.execute("PING")
            assert client._conn is None
        finally:
            await client.close()


async def test_refused_connects_back_off_and_fail_fast():
    from authz.dev.stack import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=1, connect_timeout=0.5)
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            await store.ping()
        started = loop.time()
        with pytest.raises(StoreUnavailable, match="next attempt in"):
            await store.apply_limits([RateOp("k", 1000.0, 5)], [])
        assert loop.time() - started < 0.01  # no connect attempt: refused at once
    finally:
        await store.close()


async def test_close_fails_pending_and_later_calls(redis_url):
    store = RedisStore(redis_url, timeout=5)
    await store.client.delete("close:none")
    pending = asyncio.ensure_future(store._resp.execute("BLPOP", "close:none", 0))
    await asyncio.sleep(0.05)
    await store.close()
    with pytest.raises(RespConnectionError):
        await pending
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get("x")


async def test_a_stalled_connection_waits_for_late_replies_only_so_long(monkeypatch, caplog):
    """A stalled connection with a call that wants its reply even late (a limits call) is kept
    open for that reply, not used for new calls, and closed after RETIRE_SECONDS without it
    (saying so); one without such calls is dropped at once (above)."""
    monkeypatch.setattr(_Connection, "RETIRE_SECONDS", 0.3)
    server = FakeServer()  # never answers
    late: list[object] = []
    async with server as url:
        client = RespClient(url, timeout=0.05, stall_timeout=0.2)
        try:
            with pytest.raises(TimeoutError):
                await client.eval_before(Script("return 1"), 0, 0, b"", late.append)
            stalled = client._conn
            await asyncio.sleep(0.35)  # past its deadline + the stall timeout: retired
            assert stalled.error is not None and client._conn is None
            assert client._retired == {stalled} and not stalled._transport.is_closing()
            with pytest.raises(TimeoutError):  # new calls go to a new connection
                await client.execute("PING")
            assert server.accepted == 2 and client._conn is not stalled
            await asyncio.sleep(0.4)  # RETIRE_SECONDS without the late reply
            assert client._retired == set() and late == []
            assert "whether they ran is unknown" in caplog.text
        finally:
            await client.close()
    assert client._retired == set()
