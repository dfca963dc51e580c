"""Redis Cluster routing for the pipelined client: which master serves a key's slot.

One ``RespClient`` per master, each with its own connection, timeout and reconnect backoff, so a
master that hangs or dies costs only the calls for its slots (each bounded by the timeout) and
never the others. The slot map comes from ``CLUSTER SLOTS`` when the first call needs it, and
again after a node answered ``MOVED``/``ASK`` (a failover or resharding) or could not be reached;
refreshes are shared and at most one per ``refresh_every``. A refresh asks the masters of the map
it has, then the seeds (the URL's node and ``store.cluster_seeds``), then every other node it has
heard of, until one answers; when none does, it tries again in the background every
``refresh_every`` (and on demand) until one does: a seed that is down at start, or a whole
Cluster that comes back, is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot

from authz.store.resp import Endpoint, RespClient, RespConnectionError, RespError, parse_url

log = logging.getLogger("authz.store")

SLOTS = 16384
_REDIRECTS = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")


class SlotRouter:
    def __init__(self, url: str, *, timeout: float, connect_timeout: float,
                 refresh_every: float = 0.5, seeds: Sequence[tuple[str, int]] = ()) -> None:
        self.seed = parse_url(url)
        first = (self.seed.host, self.seed.port)
        self.seeds = (first, *[a for a in dict.fromkeys(seeds) if a != first])
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.refresh_every = refresh_every
        self.nodes: dict[tuple[str, int], RespClient] = {}
        self._slots: list[tuple[str, int] | None] = [None] * SLOTS
        self._mapped = False
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -1e9
        self._retry: asyncio.TimerHandle | None = None  # the next try after a refresh that failed
        self._failing_since: float | None = None
        self._warned_at = 0.0
        self._closed = False

    def node(self, address: tuple[str, int]) -> RespClient:
        client = self.nodes.get(address)
        if client is None:
            ep = dataclasses.replace(self.seed, host=address[0], port=address[1], db=0)
            client = self.nodes[address] = RespClient(endpoint=ep, timeout=self.timeout,
                                                      connect_timeout=self.connect_timeout)
        return client

    @staticmethod
    def slot(key: str) -> int:
        return int(key_slot(key.encode()))

    async def for_slot(self, slot: int) -> RespClient:
        """The client of the master serving ``slot`` (waits, within the timeout, for a first map)."""
        if not self._mapped:
            self.refresh()
            task = self._refreshing
            if task is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(task), self.timeout)
                except TimeoutError:
                    raise TimeoutError("no Redis Cluster slot map yet") from None
        address = self._slots[slot]
        if address is None:
            self.refresh()
            raise RespConnectionError(f"no Redis Cluster master known for slot {slot}")
        return self.node(address)

    def failed(self, exc: BaseException) -> None:
        """A call failed: a redirect or an unreachable node may mean the map changed."""
        if isinstance(exc, RespError) and not str(exc).startswith(_REDIRECTS):
            return
        self.refresh()

    def refresh(self) -> None:
        """Fetch the slot map in the background, unless a fetch is running or ran just now."""
        if self._closed or self._refreshing is not None:
            return
        loop = asyncio.get_running_loop()
        if self._mapped and loop.time() - self._refreshed_at < self.refresh_every:
            return
        self._refreshed_at = loop.time()
        self._refreshing = loop.create_task(self._refresh())

    def candidates(self) -> list[tuple[str, int]]:
        """Whom a refresh asks, in order: the masters of the current map, the seeds, then every
        other node heard of (a replica promoted since, a master that left the map)."""
        return list(dict.fromkeys([*self.masters(), *self.seeds, *self.nodes]))

    async def _refresh(self) -> None:
        errors: list[str] = []
        read = False
        try:
            for address in self.candidates():
                try:
                    reply = await self.node(address).execute("CLUSTER", "SLOTS")
                except (RespError, OSError, TimeoutError) as exc:
                    errors.append(f"{address[0]}:{address[1]}: {exc}")
                    continue
                self._apply(reply, address[0])
                read = True
                if self._failing_since is not None:
                    log.warning("read the Redis Cluster slot map from %s:%d again", *address)
                    self._failing_since = None
                return
            now = asyncio.get_running_loop().time()
            if self._failing_since is None or now - self._warned_at >= 60:  # once a minute at most
                self._failing_since = self._failing_since or now
                self._warned_at = now
                log.warning("cannot read the Redis Cluster slot map from any node (trying again every "
                            "%.1f s): %s", self.refresh_every, "; ".join(errors))
        finally:
            self._refreshing = None
            if not read and not self._closed and self._retry is None:  # none answered: again soon
                def again() -> None:
                    self._retry = None
                    self.refresh()
                self._retry = asyncio.get_running_loop().call_later(self.refresh_every, again)

    def _apply(self, reply: Any, fallback_host: str) -> None:
        slots: list[tuple[str, int] | None] = [None] * SLOTS
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            address = (host or fallback_host, int(master[1]))
            for s in range(start, end + 1):
                slots[s] = address
        self._slots = slots
        self._mapped = True

    def masters(self) -> list[tuple[str, int]]:
        return sorted({a for a in self._slots if a is not None})

    async def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
        for client in list(self.nodes.values()):
            await client.close()


__all__ = ["Endpoint", "SlotRouter"]
