"""In-process store with Redis-like semantics (TTL, atomic increments) for one replica."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from authz.store import limits as alg
from authz.store.base import Store


class MemoryStore(Store):
    backend = "memory"

    def __init__(self, *, prefix: str = "", clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, sweep_every: int = 1024) -> None:
        self._prefix = prefix
        self._clock = clock
        self._wall = wall_clock
        self._data: dict[str, tuple[bytes | int | dict[str, bytes], float | None]] = {}
        self._ops = 0
        self._sweep_every = sweep_every

    # Each method runs without awaiting, so it is atomic with respect to other coroutines.

    def _live(self, key: str) -> tuple[bytes | int | dict[str, bytes], float | None] | None:
        self._ops += 1
        if self._ops % self._sweep_every == 0:
            self._sweep()
        entry = self._data.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= self._clock():
            del self._data[key]
            return None
        return entry

    def _sweep(self) -> None:
        now = self._clock()
        for k in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
            del self._data[k]

    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._clock() + ttl

    @staticmethod
    def _scalar(value: bytes | int | dict[str, bytes], key: str) -> bytes | int:
        if isinstance(value, dict):  # Redis answers WRONGTYPE here
            raise ValueError(f"value at {key!r} is a hash")
        return value

    async def get(self, key: str) -> bytes | None:
        entry = self._live(self._prefix + key)
        if entry is None:
            return None
        value = self._scalar(entry[0], key)
        return str(value).encode() if isinstance(value, int) else value

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  only_if_absent: bool = False) -> bool:
        k = self._prefix + key
        if only_if_absent and self._live(k) is not None:
            return False
        self._data[k] = (bytes(value), self._expiry(ttl))
        return True

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        k = self._prefix + key
        entry = self._live(k)
        if entry is None:
            new, expiry = amount, self._expiry(ttl)
        else:
            value, expiry = entry
            try:
                new = int(self._scalar(value, key)) + amount
            except ValueError:
                raise ValueError(f"value at {key!r} is not an integer") from None
        self._data[k] = (new, expiry)
        return new

    async def delete(self, key: str) -> bool:
        k = self._prefix + key
        existed = self._live(k) is not None
        self._data.pop(k, None)
        return existed

    async def ttl(self, key: str) -> float | None:
        entry = self._live(self._prefix + key)
        if entry is None or entry[1] is None:
            return None
        return max(0.0, entry[1] - self._clock())

    async def apply_limits(self, rates: Sequence[alg.RateOp], reserves: Sequence[alg.ReserveOp]
                           ) -> alg.BatchResult:
        # No await inside: atomic with respect to every other coroutine, like the Lua script.
        now_us = int(self._wall() * 1_000_000)
        rate_results, new_tats = [], []
        for op in rates:
            entry = self._live(self._prefix + op.key)
            tat = float(self._scalar(entry[0], op.key)) if entry is not None else None
            result, new_tat = alg.evaluate_rate(tat, now_us, op)
            rate_results.append(result)
            new_tats.append(new_tat)
        budget_results = []
        for rop in reserves:
            entry = self._live(self._prefix + rop.key)
            budget_results.append(alg.evaluate_budget(int(self._scalar(entry[0], rop.key)) if entry else 0, rop))
        allowed = all(r.allowed for r in rate_results) and all(b.allowed for b in budget_results)
        if allowed:
            for op, new_tat in zip(rates, new_tats, strict=True):
                assert new_tat is not None
                self._data[self._prefix + op.key] = (
                    repr(new_tat).encode(), self._clock() + alg.rate_ttl_ms(new_tat, now_us) / 1000)
            for rop in reserves:
                k = self._prefix + rop.key
                entry = self._live(k)
                expiry = entry[1] if entry else self._clock() + rop.ttl_seconds
                self._data[k] = ((int(self._scalar(entry[0], rop.key)) if entry else 0) + rop.amount, expiry)
        return alg.BatchResult(allowed, tuple(rate_results), tuple(budget_results))

    async def undo_limits(self, rates: Sequence[alg.RateOp], reserves: Sequence[alg.ReserveOp]) -> None:
        now_us = int(self._wall() * 1_000_000)
        for op in rates:
            k = self._prefix + op.key
            entry = self._live(k)
            tat = alg.undo_rate(float(self._scalar(entry[0], op.key)) if entry else None, now_us, op)
            if tat is None:
                self._data.pop(k, None)
            else:
                self._data[k] = (repr(tat).encode(), self._clock() + alg.rate_ttl_ms(tat, now_us) / 1000)
        for rop in reserves:
            k = self._prefix + rop.key
            entry = self._live(k)
            if entry is not None:
                self._data[k] = (int(self._scalar(entry[0], rop.key)) - rop.amount, entry[1])

    async def hgetall(self, key: str) -> dict[str, bytes]:
        entry = self._live(self._prefix + key)
        if entry is None:
            return {}
        if not isinstance(entry[0], dict):
            raise ValueError(f"value at {key!r} is not a hash")
        return dict(entry[0])

    async def hset(self, key: str, fields: Mapping[str, bytes | str]) -> int:
        k = self._prefix + key
        entry = self._live(k)
        value = entry[0] if entry is not None else {}
        if not isinstance(value, dict):
            raise ValueError(f"value at {key!r} is not a hash")
        current = dict(value)
        added = len(fields.keys() - current.keys())
        current.update({f: v.encode() if isinstance(v, str) else bytes(v) for f, v in fields.items()})
        self._data[k] = (current, entry[1] if entry is not None else None)
        return added

    async def hdel(self, key: str, *fields: str) -> int:
        k = self._prefix + key
        entry = self._live(k)
        if entry is None or not isinstance(entry[0], dict):
            return 0
        current = dict(entry[0])
        removed = sum(current.pop(f, None) is not None for f in fields)
        if current:
            self._data[k] = (current, entry[1])
        else:
            del self._data[k]
        return removed

    async def time_us(self) -> int:
        return int(self._wall() * 1_000_000)

    async def ping(self) -> None:
        return None

    def size(self) -> int:
        """Live keys (not __len__: an empty store must not be falsy)."""
        self._sweep()
        return len(self._data)
