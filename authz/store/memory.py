"""In-process store with Redis-like semantics (TTL, atomic increments) for one replica."""

from __future__ import annotations

import time
from collections.abc import Callable

from authz.store.base import Store


class MemoryStore(Store):
    backend = "memory"

    def __init__(self, *, prefix: str = "", clock: Callable[[], float] = time.monotonic,
                 sweep_every: int = 1024) -> None:
        self._prefix = prefix
        self._clock = clock
        self._data: dict[str, tuple[bytes | int, float | None]] = {}
        self._ops = 0
        self._sweep_every = sweep_every

    # Each method runs without awaiting, so it is atomic with respect to other coroutines.

    def _live(self, key: str) -> tuple[bytes | int, float | None] | None:
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

    async def get(self, key: str) -> bytes | None:
        entry = self._live(self._prefix + key)
        if entry is None:
            return None
        value = entry[0]
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
                new = int(value) + amount
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

    async def ping(self) -> None:
        return None

    def __len__(self) -> int:
        self._sweep()
        return len(self._data)
