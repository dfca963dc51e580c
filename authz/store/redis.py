"""Redis store, every operation bounded by a timeout.

Single-node Redis goes through ``authz.store.resp``: one pipelined connection, a few µs of CPU
per command (the rate-limit script runs once per request). A Redis Cluster goes through
redis-py's cluster client, which routes each command to the master of its slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from authz import metrics
from authz.store import limits as alg
from authz.store.base import Store, StoreUnavailable
from authz.store.limits_script import LIMITS_LUA
from authz.store.resp import RespClient, RespError, Script, encode_command

log = logging.getLogger("authz.store")

INCR_LUA = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"""
T = TypeVar("T")
_OPS = ("get", "set", "incr", "delete", "ttl", "limits", "time", "ping", "hgetall", "hset", "hdel")
_LIMITS = Script(LIMITS_LUA)
_INCR = Script(INCR_LUA)


class RedisStore(Store):
    backend = "redis"

    def __init__(self, url: str, *, timeout: float = 0.05, connect_timeout: float = 0.5,
                 max_connections: int = 64, prefix: str = "", cluster: bool = False) -> None:
        self.url = url
        self.timeout = timeout
        self.cluster = cluster
        self._prefix = prefix
        # Label children resolved once: the request path only observes / increments.
        self._seconds = {op: metrics.STORE_SECONDS.labels(backend="redis", op=op) for op in _OPS}
        self._errors = {op: metrics.STORE_ERRORS.labels(backend="redis", op=op) for op in _OPS}
        self._limits_seconds = self._seconds["limits"]
        self._limits_errors = self._errors["limits"]
        self.client: Any
        self._resp: RespClient | None = None
        if cluster:
            self.client = RedisCluster.from_url(
                url, socket_timeout=max(timeout, 0.001), socket_connect_timeout=connect_timeout,
                max_connections=max_connections)
        else:
            # Every Store operation goes through the pipelined client. redis-py's client stays
            # for tools and tests (FLUSHDB, inspection); it opens no connection unless used.
            self._resp = RespClient(url, timeout=timeout, connect_timeout=connect_timeout)
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout,
                socket_timeout=max(timeout, 0.001), socket_connect_timeout=connect_timeout,
                health_check_interval=30)
            self.client = aioredis.Redis(connection_pool=pool)
        self._limits_script = self.client.register_script(LIMITS_LUA)
        self._incr_script = self.client.register_script(INCR_LUA)

    async def _run(self, op: str, coro: Awaitable[T]) -> T:
        """A redis-py call (Cluster, and the rarely used single-node fallbacks), bounded here."""
        return await self._resp_run(op, self._bounded(coro))

    async def _bounded(self, coro: Awaitable[T]) -> T:
        async with asyncio.timeout(self.timeout):
            return await coro

    async def _resp_run(self, op: str, call: Awaitable[T]) -> T:
        """Time ``call`` and turn any Redis failure into ``StoreUnavailable``. (The pipelined
        client bounds every command by the timeout itself.)"""
        started = time.perf_counter()
        try:
            return await call
        except (RedisError, RespError, OSError, TimeoutError) as exc:
            self._errors[op].inc()
            raise StoreUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._seconds[op].observe(time.perf_counter() - started)

    async def get(self, key: str) -> bytes | None:
        if self._resp is not None:
            return await self._resp_run("get", self._resp.request(encode_command("GET", self._prefix + key)))
        return await self._run("get", self.client.get(self._prefix + key))

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  only_if_absent: bool = False) -> bool:
        px = None if ttl is None else max(1, int(ttl * 1000))
        if self._resp is not None:
            args: list[Any] = ["SET", self._prefix + key, value]
            if px is not None:
                args += ["PX", px]
            if only_if_absent:
                args.append("NX")
            return await self._resp_run("set", self._resp.request(encode_command(*args))) is not None
        result = await self._run("set", self.client.set(self._prefix + key, value, px=px,
                                                        nx=only_if_absent))
        return bool(result)

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        k = self._prefix + key
        resp = self._resp
        if ttl is None:
            if resp is not None:
                return int(await self._resp_run("incr", resp.request(encode_command("INCRBY", k, amount))))
            return int(await self._run("incr", self.client.incrby(k, amount)))
        # One round trip, atomic: INCRBY, then an expiry only if the key has none.
        args = [amount, max(1, int(ttl * 1000))]
        if resp is not None:
            return int(await self._resp_run("incr", resp.eval(_INCR, [k], args)))
        value = await self._run("incr", self._incr_script(keys=[k], args=args))
        return int(value)

    async def delete(self, key: str) -> bool:
        if self._resp is not None:
            return bool(await self._resp_run("delete", self._resp.request(encode_command("DEL", self._prefix + key))))
        return bool(await self._run("delete", self.client.delete(self._prefix + key)))

    async def ttl(self, key: str) -> float | None:
        if self._resp is not None:
            ms = await self._resp_run("ttl", self._resp.request(encode_command("PTTL", self._prefix + key)))
        else:
            ms = await self._run("ttl", self.client.pttl(self._prefix + key))
        return None if ms is None or ms < 0 else ms / 1000

    async def apply_limits(self, rates: Sequence[alg.RateOp], reserves: Sequence[alg.ReserveOp]
                           ) -> alg.BatchResult:
        resp = self._resp
        if resp is not None:  # the request path: one EVALSHA, kept lean
            n = len(rates) + len(reserves)
            body = self._limits_body(rates, reserves)
            started = time.perf_counter()
            try:
                raw = await resp.evalsha(_LIMITS, n, 2 + 3 * n, body)
            except (RespError, OSError, TimeoutError) as exc:
                self._limits_errors.inc()
                raise StoreUnavailable(f"redis limits failed: {type(exc).__name__}: {exc}") from exc
            finally:
                self._limits_seconds.observe(time.perf_counter() - started)
            return _batch_result(raw, len(rates), len(reserves))
        # On a cluster one script may only touch one slot: keys that share a hash tag (the
        # same user, say) go together; different slots are separate calls, sent concurrently.
        slots: dict[int, tuple[list[int], list[int]]] = {}
        for i, op in enumerate(rates):
            slots.setdefault(key_slot((self._prefix + op.key).encode()), ([], []))[0].append(i)
        for j, rop in enumerate(reserves):
            slots.setdefault(key_slot((self._prefix + rop.key).encode()), ([], []))[1].append(j)
        groups = list(slots.values())
        results = await self._run("limits", asyncio.gather(*(
            self._limits_call([rates[i] for i in ri], [reserves[j] for j in bj]) for ri, bj in groups)))
        rate_out: list[Any] = [None] * len(rates)
        budget_out: list[Any] = [None] * len(reserves)
        for (ri, bj), res in zip(groups, results, strict=True):
            for i, r in zip(ri, res.rates, strict=True):
                rate_out[i] = r
            for j, b in zip(bj, res.budgets, strict=True):
                budget_out[j] = b
        return alg.BatchResult(all(r.allowed for r in results), tuple(rate_out), tuple(budget_out))

    async def _limits_call(self, rates: Sequence[alg.RateOp], reserves: Sequence[alg.ReserveOp]
                           ) -> alg.BatchResult:
        keys = [self._prefix + op.key for op in rates] + [self._prefix + op.key for op in reserves]
        args: list[Any] = [len(rates), len(reserves)]
        for op in rates:
            args += [repr(op.interval_us), op.burst, op.cost]
        for rop in reserves:
            args += [rop.limit, rop.amount, rop.ttl_seconds]
        return _batch_result(await self._limits_script(keys=keys, args=args), len(rates), len(reserves))

    def _limits_body(self, rates: Sequence[alg.RateOp], reserves: Sequence[alg.ReserveOp]) -> bytes:
        """KEYS and ARGV of the limits script as RESP bulk strings (what ``_limits_call`` passes
        redis-py, encoded the same way: numbers as ``repr``), built as one str, encoded once."""
        prefix = self._prefix
        parts = []
        for op in rates:
            k = prefix + op.key
            parts.append(f"${len(k) if k.isascii() else len(k.encode())}\r\n{k}\r\n")
        for rop in reserves:
            k = prefix + rop.key
            parts.append(f"${len(k) if k.isascii() else len(k.encode())}\r\n{k}\r\n")
        nr, nb = str(len(rates)), str(len(reserves))
        parts.append(f"${len(nr)}\r\n{nr}\r\n${len(nb)}\r\n{nb}\r\n")
        for op in rates:
            a, b, c = repr(op.interval_us), repr(op.burst), repr(op.cost)
            parts.append(f"${len(a)}\r\n{a}\r\n${len(b)}\r\n{b}\r\n${len(c)}\r\n{c}\r\n")
        for rop in reserves:
            a, b, c = repr(rop.limit), repr(rop.amount), repr(rop.ttl_seconds)
            parts.append(f"${len(a)}\r\n{a}\r\n${len(b)}\r\n{b}\r\n${len(c)}\r\n{c}\r\n")
        return "".join(parts).encode()

    async def hgetall(self, key: str) -> dict[str, bytes]:
        if self._resp is not None:
            flat = await self._resp_run("hgetall", self._resp.request(encode_command("HGETALL", self._prefix + key)))
            return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat) - 1, 2)}
        raw = await self._run("hgetall", self.client.hgetall(self._prefix + key))
        return {k.decode(): v for k, v in raw.items()}

    async def hset(self, key: str, fields: Mapping[str, bytes | str]) -> int:
        if not fields:
            return 0
        if self._resp is not None:
            args = [a for item in fields.items() for a in item]
            return int(await self._resp_run("hset", self._resp.request(
                encode_command("HSET", self._prefix + key, *args))))
        return int(await self._run("hset", self.client.hset(self._prefix + key, mapping=dict(fields))))

    async def hdel(self, key: str, *fields: str) -> int:
        if not fields:
            return 0
        if self._resp is not None:
            return int(await self._resp_run("hdel", self._resp.request(
                encode_command("HDEL", self._prefix + key, *fields))))
        return int(await self._run("hdel", self.client.hdel(self._prefix + key, *fields)))

    async def time_us(self) -> int:
        if self._resp is not None:
            seconds, micros = await self._resp_run("time", self._resp.request(b"*1\r\n$4\r\nTIME\r\n"))
        else:
            seconds, micros = await self._run("time", self.client.time())
        return int(seconds) * 1_000_000 + int(micros)

    async def ping(self) -> None:
        if self._resp is not None:
            await self._resp_run("ping", self._resp.request(b"*1\r\n$4\r\nPING\r\n"))
        else:
            await self._run("ping", self.client.ping())

    async def close(self) -> None:
        closers = [self.client.aclose] if self._resp is None else [self._resp.close, self.client.aclose]
        for closer in closers:
            try:
                await closer()
            except Exception:  # closing must never raise during shutdown
                log.debug("error closing redis client", exc_info=True)


def _batch_result(reply: Sequence[Any], n_rates: int, n_budgets: int) -> alg.BatchResult:
    """The limits script's reply (see ``authz.store.limits_script``) as a ``BatchResult``."""
    raw = list(map(int, reply))
    rate_results = tuple([alg.RateResult(raw[k] == 1, raw[k + 1], raw[k + 2], raw[k + 3])
                          for k in range(2, 2 + 4 * n_rates, 4)]) if n_rates else ()
    base = 2 + 4 * n_rates
    budget_results = tuple([alg.BudgetResult(raw[k] == 1, raw[k + 1], raw[k + 2])
                            for k in range(base, base + 3 * n_budgets, 3)]) if n_budgets else ()
    return alg.BatchResult(raw[0] == 1, rate_results, budget_results)
