"""The store interface. Keys are namespaced by the store's prefix; values are bytes."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

from authz.errors import AuthzError
from authz.store.limits import BatchResult, RateOp, ReserveOp


class StoreUnavailable(AuthzError):
    """The store could not answer in time. Stages decide per limit whether to fail closed."""


class Store(abc.ABC):
    backend: str = "abstract"

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  only_if_absent: bool = False) -> bool:
        """Store ``value``; with ``only_if_absent`` only when the key does not exist.
        Returns whether it was written."""

    @abc.abstractmethod
    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add ``amount`` atomically and return the new value. ``ttl`` applies when the key is
        created by this call (an existing key keeps its expiry)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; None if it has no expiry or does not exist."""

    @abc.abstractmethod
    async def apply_limits(self, rates: Sequence[RateOp], reserves: Sequence[ReserveOp]
                           ) -> BatchResult:
        """Check and consume every limit of one request atomically (all or nothing), in one
        round trip. See ``authz.store.limits`` for the semantics."""

    @abc.abstractmethod
    async def undo_limits(self, rates: Sequence[RateOp], reserves: Sequence[ReserveOp]) -> None:
        """Give back what one allowed ``apply_limits`` call with these operations took."""

    @abc.abstractmethod
    async def time_us(self) -> int:
        """The clock limits are measured with (Redis: the server's ``TIME``)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    async def check_health(self) -> str:
        """For readiness: raise ``StoreUnavailable`` when nothing can be reached; else a note on
        what cannot (a Redis Cluster master whose slots fail), empty when all is well."""
        await self.ping()
        return ""

    # Hashes (API keys kept in the store). Not abstract, so a store without them still builds.

    async def hgetall(self, key: str) -> dict[str, bytes]:
        """Every field of the hash at ``key`` (empty when it does not exist)."""
        raise NotImplementedError(f"the {self.backend} store has no hashes")

    async def hset(self, key: str, fields: Mapping[str, bytes | str]) -> int:
        """Set ``fields`` of the hash at ``key``; returns how many fields were new."""
        raise NotImplementedError(f"the {self.backend} store has no hashes")

    async def hdel(self, key: str, *fields: str) -> int:
        """Remove ``fields`` from the hash at ``key``; returns how many existed."""
        raise NotImplementedError(f"the {self.backend} store has no hashes")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
