"""The verified-token cache: the next request with the same token costs a hash and a dict lookup.

Keys are SHA-256 digests of the token (the token itself is never stored). An entry lives until
the token's ``exp`` and never past it, nor past ``max_ttl`` after it was verified; the cache is
an LRU bounded by ``max_entries``. Only successful verifications are cached.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from authz import metrics
from authz.model import Principal

_HIT = metrics.TOKEN_CACHE.labels(result="hit")
_MISS = metrics.TOKEN_CACHE.labels(result="miss")


class TokenCache:
    def __init__(self, max_entries: int, *, max_ttl: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str) -> Principal | None:
        key = self.key(token)
        entry = self._entries.get(key)
        if entry is None:
            _MISS.inc()
            return None
        if self._clock() >= entry[0]:
            del self._entries[key]
            _MISS.inc()
            return None
        self._entries.move_to_end(key)
        _HIT.inc()
        return entry[1]

    def put(self, token: str, principal: Principal, expires_at: float) -> None:
        now = self._clock()
        until = min(expires_at, now + self.max_ttl)
        if until <= now:
            return
        key = self.key(token)
        self._entries[key] = (until, principal)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
