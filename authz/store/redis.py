"""Redis store, every operation bounded by a timeout.

Every operation goes through ``authz.store.resp``'s pipelined client: one connection to a single
Redis, or one per master of a Redis Cluster (``authz.store.cluster`` routes each key to the master
of its slot). Any failure (a timeout, a refused or broken connection, an error reply, a redirect
during a failover) is ``StoreUnavailable``, and callers apply their configured policy.

The limits of one request are one script call per slot: one round trip on a single Redis, one per
slot (sent concurrently) on a Cluster. Each call carries a deadline in Redis's clock, so Redis
never applies it after the sidecar gave up (a paused Redis running its backlog); a reply that
still comes back after the sidecar gave up, and says it applied, is undone. On a Cluster the
slots are all-or-nothing too: when one slot refuses or fails, what the others took is undone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from authz import metrics
from authz.store import limits as alg
from authz.store.base import Store, StoreUnavailable
from authz.store.cluster import SlotRouter
from authz.store.limits_script import LIMITS_LUA, UNDO_LUA
from authz.store.resp import RespClient, RespError, Script, encode_args, encode_command

log = logging.getLogger("authz.store")

INCR_LUA = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"""
T = TypeVar("T")
_OPS = ("get", "set", "incr", "delete", "ttl", "limits", "undo", "time", "ping", "hgetall", "hset", "hdel")
_LIMITS = Script(LIMITS_LUA)
_UNDO = Script(UNDO_LUA)
_INCR = Script(INCR_LUA)
# Any failure of a call is "store unavailable", whatever raised it: a reply we could not read is
# no reason for a 500. (CancelledError is not an Exception: a cancelled caller stays cancelled.)
_FAILURES = (Exception,)
_EXPECTED = (RespError, OSError, TimeoutError)


class RedisStore(Store):
    backend = "redis"

    def __init__(self, url: str, *, timeout: float = 0.05, connect_timeout: float = 0.5,
                 max_connections: int = 64, prefix: str = "", cluster: bool = False,
                 seeds: Sequence[tuple[str, int]] = ()) -> None:
        self.url = url
        self.timeout = timeout
        self.cluster = cluster
        self._prefix = prefix
        # Label children resolved once: the request path only observes / increments.
        self._seconds = {op: metrics.STORE_SECONDS.labels(backend="redis", op=op) for op in _OPS}
        self._errors = {op: metrics.STORE_ERRORS.labels(backend="redis", op=op) for op in _OPS}
        self._limits_seconds = self._seconds["limits"]
        self._tasks: set[asyncio.Task[None]] = set()  # undos running in the background
        self._resp: RespClient | None = None
        self._router: SlotRouter | None = None
        # redis-py's client is for tools and tests (FLUSHDB, inspection): it opens no connection
        # unless used. The sidecar's own operations never go through it.
        self.client: Any
        if cluster:
            self._router = SlotRouter(url, timeout=timeout, connect_timeout=connect_timeout, seeds=seeds)
            self.client = RedisCluster.from_url(url, socket_timeout=max(timeout, 0.001),
                                                socket_connect_timeout=connect_timeout,
                                                max_connections=max_connections,
                                                startup_nodes=[ClusterNode(h, p) for h, p in seeds])
        else:
            self._resp = RespClient(url, timeout=timeout, connect_timeout=connect_timeout)
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout,
                socket_timeout=max(timeout, 0.001), socket_connect_timeout=connect_timeout)
            self.client = aioredis.Redis(connection_pool=pool)

    # --- plumbing --------------------------------------------------------------------------------

    async def _node(self, key: str) -> RespClient:
        if self._resp is not None:
            return self._resp
        assert self._router is not None
        return await self._router.for_slot(self._router.slot(key))

    async def _call(self, op: str, key: str, payload: bytes) -> Any:
        """One command about ``key``, sent to the node serving it; any failure is
        ``StoreUnavailable``."""
        started = time.perf_counter()
        try:
            return await (await self._node(key)).request(payload)
        except _FAILURES as exc:
            raise self._failed(op, exc) from exc
        finally:
            self._seconds[op].observe(time.perf_counter() - started)

    async def _script(self, op: str, key: str, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await (await self._node(key)).eval(script, keys, args)
        except _FAILURES as exc:
            raise self._failed(op, exc) from exc
        finally:
            self._seconds[op].observe(time.perf_counter() - started)

    def _failed(self, op: str, exc: BaseException) -> StoreUnavailable:
        self._errors[op].inc()
        if not isinstance(exc, _EXPECTED):
            log.error("redis %s failed unexpectedly", op, exc_info=exc)
        if self._router is not None:
            self._router.failed(exc)
        return StoreUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}")

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- key/value -------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        k = self._prefix + key
        reply: bytes | None = await self._call("get", k, encode_command("GET", k))
        return reply

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  only_if_absent: bool = False) -> bool:
        k = self._prefix + key
        args: list[Any] = ["SET", k, value]
        if ttl is not None:
            args += ["PX", max(1, int(ttl * 1000))]
        if only_if_absent:
            args.append("NX")
        return await self._call("set", k, encode_command(*args)) is not None

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        k = self._prefix + key
        if ttl is None:
            return int(await self._call("incr", k, encode_command("INCRBY", k, amount)))
        # One round trip, atomic: INCRBY, then an expiry only if the key has none.
        return int(await self._script("incr", k, _INCR, [k], [amount, max(1, int(ttl * 1000))]))

    async def delete(self, key: str) -> bool:
        k = self._prefix + key
        return bool(await self._call("delete", k, encode_command("DEL", k)))

    async def ttl(self, key: str) -> float | None:
        k = self._prefix + key
        ms = await self._call("ttl", k, encode_command("PTTL", k))
        return None if ms is None or ms < 0 else ms / 1000

    async def hgetall(self, key: str) -> dict[str, bytes]:
        k = self._prefix + key
        flat = await self._call("hgetall", k, encode_command("HGETALL", k))
        return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat) - 1, 2)}

    async def hset(self, key: str, fields: Mapping[str, bytes | str]) -> int:
        if not fields:
            return 0
        k = self._prefix + key
        args = [a for item in fields.items() for a in item]
        return int(await self._call("hset", k, encode_command("HSET", k, *args)))

    async def hdel(self, key: str, *fields: str) -> int:
        if not fields:
            return 0
        k = self._prefix + key
        return int(await self._call("hdel", k, encode_command("HDEL", k, *fields)))

    # --- limits ----------------------------------------------------------------------------------

    async def apply_limits(self, rates: Sequence[alg.RateOp], reserves: Sequence[alg.ReserveOp]
                           ) -> alg.BatchResult:
        resp = self._resp
        if resp is not None:  # the request path: one EVALSHA, kept lean (no coroutine of its own)
            started = time.perf_counter()
            try:
                return self._limits_result(resp, await self._limits_send(resp, rates, reserves), rates, reserves)
            except _FAILURES as exc:
                raise self._failed("limits", exc) from exc
            finally:
                self._limits_seconds.observe(time.perf_counter() - started)
        return await self._cluster_limits(rates, reserves)

    def _limits_send(self, client: RespClient, rates: Sequence[alg.RateOp],
                     reserves: Sequence[alg.ReserveOp]) -> Awaitable[Any]:
        """The script call of one slot, with its deadline; a reply that comes after the caller
        gave up and says it applied is undone."""
        n = len(rates) + len(reserves)

        def late(reply: Any) -> None:
            if reply.__class__ is list and reply and reply[0] == b"1":
                log.warning("redis answered a limits call after its deadline and had applied it: undoing")
                self._spawn(self.undo_limits(rates, reserves))

        return client.eval_before(_LIMITS, n, 2 + 3 * n, self._limits_body(rates, reserves), late)

    @staticmethod
    def _limits_result(client: RespClient, raw: Any, rates: Sequence[alg.RateOp],
                       reserves: Sequence[alg.ReserveOp]) -> alg.BatchResult:
        """The reply as a ``BatchResult``; ``TimeoutError`` when Redis ran the call past its
        deadline (it then changed nothing)."""
        client.observe_time(int(raw[1]), time.time() * 1_000_000)  # the reply carries Redis's clock
        if raw[0] == b"2":
            raise TimeoutError("redis ran the limits call after its deadline (nothing was applied)")
        return _batch_result(raw, len(rates), len(reserves))

    async def _cluster_limits(self, rates: Sequence[alg.RateOp], reserves: Sequence[alg.ReserveOp]
                              ) -> alg.BatchResult:
        """One script call per slot, concurrently; all-or-nothing across them: when a slot refuses
        or fails, what the others took is undone (in the background: the answer does not wait)."""
        router = self._router
        assert router is not None
        slots: dict[int, tuple[list[int], list[int]]] = {}
        for i, op in enumerate(rates):
            slots.setdefault(router.slot(self._prefix + op.key), ([], []))[0].append(i)
        for j, rop in enumerate(reserves):
            slots.setdefault(router.slot(self._prefix + rop.key), ([], []))[1].append(j)
        groups = [(slot, [rates[i] for i in ri], [reserves[j] for j in bj]) for slot, (ri, bj) in slots.items()]

        async def one(slot: int, r: list[alg.RateOp], b: list[alg.ReserveOp]) -> alg.BatchResult:
            client = await router.for_slot(slot)
            return self._limits_result(client, await self._limits_send(client, r, b), r, b)

        started = time.perf_counter()
        results = await asyncio.gather(*(one(*g) for g in groups), return_exceptions=True)
        self._limits_seconds.observe(time.perf_counter() - started)
        failures = [res for res in results if isinstance(res, BaseException)]
        refused = any(not res.allowed for res in results if isinstance(res, alg.BatchResult))
        if failures or refused:
            for (_, r, b), res in zip(groups, results, strict=True):
                if isinstance(res, alg.BatchResult) and res.allowed:
                    self._spawn(self.undo_limits(r, b))
        if failures:
            for exc in failures:
                if not isinstance(exc, _FAILURES):  # a cancelled call: the caller was cancelled
                    raise exc
                self._failed("limits", exc)
            exc = failures[0]
            raise StoreUnavailable(f"redis limits failed on {len(failures)} of {len(groups)} slots: "
                                   f"{type(exc).__name__}: {exc}") from exc
        rate_out: list[Any] = [None] * len(rates)
        budget_out: list[Any] = [None] * len(reserves)
        for (ri, bj), res in zip(slots.values(), results, strict=True):
            assert isinstance(res, alg.BatchResult)
            for i, rr in zip(ri, res.rates, strict=True):
                rate_out[i] = rr
            for j, br in zip(bj, res.budgets, strict=True):
                budget_out[j] = br
        return alg.BatchResult(not refused, tuple(rate_out), tuple(budget_out))

    async def undo_limits(self, rates: Sequence[alg.RateOp], reserves: Sequence[alg.ReserveOp]) -> None:
        """Give back what an allowed ``apply_limits`` took: one call per slot."""
        groups: dict[str, tuple[list[alg.RateOp], list[alg.ReserveOp]]] = {}
        router = self._router
        for op in rates:
            k = self._prefix + op.key
            groups.setdefault("" if router is None else str(router.slot(k)), ([], []))[0].append(op)
        for rop in reserves:
            k = self._prefix + rop.key
            groups.setdefault("" if router is None else str(router.slot(k)), ([], []))[1].append(rop)
        for r, b in groups.values():
            keys = [self._prefix + op.key for op in r] + [self._prefix + op.key for op in b]
            args: list[Any] = [len(r), len(b), *[repr(op.interval_us * op.cost) for op in r],
                               *[op.amount for op in b]]
            await self._script("undo", keys[0], _UNDO, keys, args)

    def _limits_body(self, rates: Sequence[alg.RateOp], reserves: Sequence[alg.ReserveOp]) -> bytes:
        """KEYS and ARGV of the limits script (all but the deadline, which the client adds) as
        RESP bulk strings, numbers as ``repr``: built as one str, encoded once."""
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

    # --- health ----------------------------------------------------------------------------------

    async def time_us(self) -> int:
        seconds, micros = await self._call("time", "", b"*1\r\n$4\r\nTIME\r\n")
        return int(seconds) * 1_000_000 + int(micros)

    async def ping(self) -> None:
        await self.check_health()

    async def check_health(self) -> str:
        """Single Redis: it answers, or ``StoreUnavailable``. Cluster: every master is pinged;
        unavailable when none answers, else the masters that did not (their slots fail, the
        others serve)."""
        if self._router is None:
            await self._call("ping", "", b"*1\r\n$4\r\nPING\r\n")
            return ""
        router = self._router
        if not router.masters():
            try:
                await router.for_slot(0)  # the first slot map
            except _FAILURES as exc:
                raise self._failed("ping", exc) from exc
        masters = router.masters()
        results = await asyncio.gather(*(router.node(a).request(b"*1\r\n$4\r\nPING\r\n") for a in masters),
                                       return_exceptions=True)
        down = [f"{a[0]}:{a[1]}" for a, res in zip(masters, results, strict=True) if isinstance(res, BaseException)]
        if down:
            router.refresh()
            self._errors["ping"].inc()
        if masters and len(down) == len(masters):
            raise StoreUnavailable(f"no Redis Cluster master answers ({', '.join(down)})")
        return f"masters unreachable (their slots fail): {', '.join(down)}" if down else ""

    async def close(self) -> None:
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(asyncio.shield(task), self.timeout * 2)
            except Exception:
                task.cancel()
        closers = [self.client.aclose]
        if self._resp is not None:
            closers.append(self._resp.close)
        if self._router is not None:
            closers.append(self._router.close)
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


__all__ = ["RedisStore", "encode_args"]
