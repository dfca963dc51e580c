"""Redis store: one asyncio connection pool, every operation bounded by a timeout."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from authz import metrics
from authz.store.base import Store, StoreUnavailable

log = logging.getLogger("authz.store")
T = TypeVar("T")


class RedisStore(Store):
    backend = "redis"

    def __init__(self, url: str, *, timeout: float = 0.05, connect_timeout: float = 0.5,
                 max_connections: int = 64, prefix: str = "") -> None:
        self.url = url
        self.timeout = timeout
        self._prefix = prefix
        # A blocking pool waits (up to the op timeout) for a free connection instead of failing
        # at once when a burst exceeds max_connections.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout,
            socket_timeout=max(timeout, 0.001), socket_connect_timeout=connect_timeout,
            health_check_interval=30)
        self.client = aioredis.Redis(connection_pool=pool)

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
        # One round trip: INCRBY then set the expiry only if the key has none (NX, Redis >= 7).
        async def pipeline() -> int:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.incrby(k, amount)
                pipe.execute_command("PEXPIRE", k, max(1, int(ttl * 1000)), "NX")
                value, _ = await pipe.execute()
                return int(value)
        return await self._run("incr", pipeline())

    async def delete(self, key: str) -> bool:
        return bool(await self._run("delete", self.client.delete(self._prefix + key)))

    async def ttl(self, key: str) -> float | None:
        ms = await self._run("ttl", self.client.pttl(self._prefix + key))
        return None if ms is None or ms < 0 else ms / 1000

    async def ping(self) -> None:
        await self._run("ping", self.client.ping())

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # closing must never raise during shutdown
            log.debug("error closing redis client", exc_info=True)
