"""Rewritten request bodies that ``Check`` made, held until ``Process`` forwards them.

``Check`` reads the body once and computes what goes upstream; ``Process`` (a separate stream
over which Envoy sends the body again) only swaps it in. An entry is taken once, and only for the
very body it was made from: Envoy sends the same bytes to both, so any other body means the
request is not the one that was checked. Entries expire (a request Envoy never sent on) and the
whole is bounded in bytes, oldest dropped first. It lives in this process only: a restart between
a ``Check`` and its ``Process`` loses the entry, and that request is refused with 503 to retry.
Owned by the runtime (it outlives config reloads).
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable


class BodyStash:
    def __init__(self, *, max_bytes: int = 256 << 20, ttl_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl_seconds
        self._clock = clock
        self._entries: collections.OrderedDict[str, tuple[float, bytes, bytes]] = collections.OrderedDict()
        self._bytes = 0
        # With several workers, the key names the one that holds the entry ("w1."): Process may
        # land on another worker, which then fetches the entry from its owner (authz/workers/peers.py).
        self.prefix = ""

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, original: bytes, body: bytes) -> str:
        """Keep ``body`` (made from ``original``); the key goes to Process in the hand-off."""
        key = self.prefix + secrets.token_urlsafe(12)
        self.adopt(key, original, body)
        return key

    def adopt(self, key: str, original: bytes, body: bytes) -> None:
        """Keep an entry made elsewhere (another worker's, fetched for this Process)."""
        now = self._clock()
        self._entries[key] = (now + self.ttl, original, body)
        self._bytes += len(original) + len(body)
        self._trim(now)

    def give(self, key: str) -> tuple[bytes, bytes] | None:
        """The entry under ``key`` (what it was made from, the body), removed; None when unknown
        or expired. For the worker Process landed on."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        expires, made_from, body = entry
        self._bytes -= len(made_from) + len(body)
        return None if expires < self._clock() else (made_from, body)

    def take(self, key: str, original: bytes) -> bytes | None:
        """The body kept under ``key`` if it was made from exactly ``original`` (and has not
        expired); None otherwise. Either way the entry is gone."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        expires, made_from, body = entry
        self._bytes -= len(made_from) + len(body)
        if expires < self._clock() or made_from != original:
            return None
        return body

    def _trim(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, (expires, made_from, body) = next(iter(entries.items()))
            if expires >= now and self._bytes <= self.max_bytes:
                return
            del entries[key]
            self._bytes -= len(made_from) + len(body)
