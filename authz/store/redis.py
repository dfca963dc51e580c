"""Redis store: one asyncio connection pool, every operation bounded by a timeout."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from authz import metrics
from authz.limits import algorithm as alg
from authz.limits.script import LIMITS_LUA
from authz.store.base import Store, StoreUnavailable

log = logging.getLogger("authz.store")

INCR_LUA = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"""
T = TypeVar("T")


class RedisStore(Store):
    backend = "redis"

    def __init__(self, url: str, *, timeout: float = 0.05, connect_timeout: float = 0.5,
                 max_connections: int = 64, prefix: str = "", cluster: bool = False) -> None:
        self.url = url
        self.timeout = timeout
        self.cluster = cluster
        self._prefix = prefix
        self.client: Any
        if cluster:
            self.client = RedisCluster.from_url(
                url, socket_timeout=max(timeout, 0.001), socket_connect_timeout=connect_timeout,
                max_connections=max_connections)
        else:
            # A blocking pool waits (up to the op timeout) for a free connection instead of
            # failing at once when a burst exceeds max_connections.
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout,
                socket_timeout=max(timeout, 0.001), socket_connect_timeout=connect_timeout,
                health_check_interval=30)
            self.client = aioredis.Redis(connection_pool=pool)
        self._limits_script = self.client.register_script(LIMITS_LUA)
        self._incr_script = self.client.register_script(INCR_LUA)

    async def _run(self, op: str, coro: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                return await coro
        except (RedisError, OSError, TimeoutError) as exc:
            metrics.STORE_ERRORS.labels(backend="redis", op=op).inc()
            raise StoreUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            metrics.STORE_SECONDS.labels(backend="redis", op=op).observe(
                time.perf_counter() - started)

    async def get(self, key: str) -> bytes | None:
        return await self._run("get", self.client.get(self._prefix + key))

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  only_if_absent: bool = False) -> bool:
        px = None if ttl is None else max(1, int(ttl * 1000))
        result = await self._run("set", self.client.set(self._prefix + key, value, px=px,
                                                        nx=only_if_absent))
        return bool(result)

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        k = self._prefix + key
        if ttl is None:
            return int(await self._run("incr", self.client.incrby(k, amount)))
        # One round trip, atomic: INCRBY, then an expiry only if the key has none.
        value = await self._run("incr", self._incr_script(keys=[k], args=[amount, max(1, int(ttl * 1000))]))
        return int(value)

    async def delete(self, key: str) -> bool:
        return bool(await self._run("delete", self.client.delete(self._prefix + key)))

    async def ttl(self, key: str) -> float | None:
        ms = await self._run("ttl", self.client.pttl(self._prefix + key))
        return None if ms is None or ms < 0 else ms / 1000

    async def apply_limits(self, rates: Sequence[alg.RateOp], reserves: Sequence[alg.ReserveOp]
                           ) -> alg.BatchResult:
        if not self.cluster:
            return await self._run("limits", self._limits_call(rates, reserves))
        # On a cluster one script may only touch one slot: keys that share a hash tag (the
        # same user, say) go together; different slots are separate calls, sent concurrently.
        slots: dict[int, tuple[list[int], list[int]]] = {}
        for i, op in enumerate(rates):
            slots.setdefault(key_slot((self._prefix + op.key).encode()), ([], []))[0].append(i)
        for j, op in enumerate(reserves):
            slots.setdefault(key_slot((self._prefix + op.key).encode()), ([], []))[1].append(j)
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
        for op in reserves:
            args += [op.limit, op.amount, op.ttl_seconds]
        raw = [int(x) for x in await self._limits_script(keys=keys, args=args)]
        rate_results = tuple(alg.RateResult(raw[k] == 1, raw[k + 1], raw[k + 2], raw[k + 3])
                             for k in range(2, 2 + 4 * len(rates), 4))
        base = 2 + 4 * len(rates)
        budget_results = tuple(alg.BudgetResult(raw[k] == 1, raw[k + 1], raw[k + 2])
                               for k in range(base, base + 3 * len(reserves), 3))
        return alg.BatchResult(raw[0] == 1, rate_results, budget_results)

    async def time_us(self) -> int:
        seconds, micros = await self._run("time", self.client.time())
        return int(seconds) * 1_000_000 + int(micros)

    async def ping(self) -> None:
        await self._run("ping", self.client.ping())

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # closing must never raise during shutdown
            log.debug("error closing redis client", exc_info=True)
