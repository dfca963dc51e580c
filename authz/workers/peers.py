"""What one worker's Check keeps in memory for its Process, when Process lands on another worker.

Envoy picks a worker per gRPC call: a request's Check and its Process stream often go to
different workers. The rewritten body (``BodyStash``) and the placeholders to restore
(``PlaceholderStore``) stay in the memory of the worker whose Check made them; their keys name
it (``w1.<random>``). The worker Process landed on asks the owner, over the owner's private Unix
socket, and adopts the entry before the pipeline looks for it: the entry is handed over once
(the owner forgets it), nothing crosses the pod, and nothing of it goes into Envoy's metadata or
the store. An owner that died took its entries with it: that request is refused with 503
``body.rewrite_lost``, exactly as after a restart of a single process.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web

from authz.workers.plan import socket_session

if TYPE_CHECKING:
    from authz.model import Handoff
    from authz.redaction.restore import PlaceholderStore
    from authz.request import BodyStash

log = logging.getLogger("authz.workers")

TIMEOUT_SECONDS = 1.0


def prefix(index: int) -> str:
    return f"w{index}."


def owner(key: str) -> int | None:
    """The worker a key names, or None (a key made without workers)."""
    head, dot, _ = key.partition(".")
    if not dot or not head.startswith("w") or not head[1:].isdigit():
        return None
    return int(head[1:])


class Peers:
    """This worker's view of the others: fetches what their Checks kept for our Process."""

    def __init__(self, index: int, sockets: dict[int, Path], stash: BodyStash,
                 placeholders: PlaceholderStore) -> None:
        self.index = index
        self.sockets = sockets
        self.stash = stash
        self.placeholders = placeholders
        stash.prefix = placeholders.prefix = prefix(index)
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    def _session(self, index: int) -> aiohttp.ClientSession:
        session = self._sessions.get(index)
        if session is None or session.closed:
            session = self._sessions[index] = socket_session(self.sockets[index], timeout=TIMEOUT_SECONDS)
        return session

    def foreign(self, key: str) -> int | None:
        who = owner(key) if key else None
        return who if who is not None and who != self.index and who in self.sockets else None

    async def localize(self, h: Handoff) -> None:
        """Adopt, from their owners, the entries ``h`` names that another worker holds."""
        jobs = []
        if (who := self.foreign(h.body_key)) is not None:
            jobs.append(self._fetch_body(who, h.body_key))
        if (who := self.foreign(h.restore_key)) is not None:
            jobs.append(self._fetch_placeholders(who, h.restore_key))
        if jobs:
            await asyncio.gather(*jobs)

    async def _get(self, who: int, kind: str, key: str) -> bytes | None:
        try:
            async with self._session(who).post(f"http://worker/internal/take/{kind}/{key}") as resp:
                if resp.status == 404:
                    return None
                resp.raise_for_status()
                return await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("could not fetch %s %s from worker %d: %s", kind, key, who, exc)
            return None

    async def _fetch_body(self, who: int, key: str) -> None:
        data = await self._get(who, "body", key)
        if data is not None and len(data) >= 4:
            (n,) = struct.unpack_from(">I", data)
            self.stash.adopt(key, data[4:4 + n], data[4 + n:])

    async def _fetch_placeholders(self, who: int, key: str) -> None:
        data = await self._get(who, "placeholders", key)
        if data:
            self.placeholders.adopt(key, {p: (kind, value) for p, (kind, value) in orjson.loads(data).items()})

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()


def install(app: web.Application, stash: BodyStash, placeholders: PlaceholderStore) -> None:
    """The routes of a worker's private socket that hand an entry over to the asking worker."""

    async def take_body(request: web.Request) -> web.Response:
        entry = stash.give(request.match_info["key"])
        if entry is None:
            return web.Response(status=404)
        made_from, body = entry
        return web.Response(body=struct.pack(">I", len(made_from)) + made_from + body,
                            content_type="application/octet-stream")

    async def take_placeholders(request: web.Request) -> web.Response:
        originals = placeholders.take(request.match_info["key"])
        if not originals:
            return web.Response(status=404)
        return web.Response(body=orjson.dumps(originals), content_type="application/json")

    app.router.add_post("/internal/take/body/{key}", take_body)
    app.router.add_post("/internal/take/placeholders/{key}", take_placeholders)
