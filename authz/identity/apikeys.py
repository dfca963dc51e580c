"""API keys for service callers, hashed at rest.

Config holds only SHA-256 digests; a presented key is hashed and looked up in a dict (the digest
of a high-entropy key reveals nothing useful, so no constant-time compare is needed). Keys can
also live in the shared store (``identity.api_keys.store: redis``, managed with ``authz
apikeys``): a hash at ``<store.key_prefix>apikey:<sha256 hex>`` with the fields of
``RECORD_FIELDS`` (roles and scopes space-separated, ``expires_at`` in unix seconds), never the
key itself. ``ChainApiKeys`` asks the config first, then the store.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from authz.errors import Unavailable
from authz.identity.config import ApiKey, hash_api_key
from authz.identity.errors import CredentialsMalformed
from authz.model import Principal
from authz.store.base import Store, StoreUnavailable

log = logging.getLogger("authz.identity")

MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 512
# Visible ASCII without "," (Envoy joins repeated headers with ","), quotes or backslash.
_KEY = re.compile(r"^[!#-+\--\[\]-~]+$")


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKeyMatch:
    name: str
    principal: Principal


class ApiKeyStore(Protocol):
    async def lookup(self, key: str) -> ApiKeyMatch | None: ...


def check_key_syntax(key: str) -> None:
    if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS or not _KEY.match(key):
        raise CredentialsMalformed("the API key is malformed")


class ConfigApiKeys:
    """Keys listed in ``identity.api_keys.keys``."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._by_digest = {
            k.sha256: ApiKeyMatch(k.name, Principal(
                subject=k.subject, issuer="", email=k.email, tenant=k.tenant, client=k.client,
                roles=frozenset(k.roles), scopes=frozenset(k.scopes), credential="api_key"))
            for k in keys}

    def __len__(self) -> int:
        return len(self._by_digest)

    async def lookup(self, key: str) -> ApiKeyMatch | None:
        return self._by_digest.get(hash_api_key(key))


# --- keys kept in the store ----------------------------------------------------------------------

RECORD_PREFIX = "apikey:"  # + sha256 hex; the store adds its key_prefix
INDEX_KEY = "apikeys"  # hash: name -> sha256 hex (for `authz apikeys list / revoke --name`)
RECORD_FIELDS = ("name", "subject", "roles", "scopes", "client", "tenant", "email", "expires_at")
UNAVAILABLE_REASON = "identity.api_keys_unavailable"


def record_key(digest: str) -> str:
    return RECORD_PREFIX + digest


def match_from_record(fields: Mapping[str, bytes], *, now: float) -> ApiKeyMatch | None:
    """The caller a stored record names, or None when it is expired or unusable (logged)."""
    try:
        values = {k: v.decode() for k, v in fields.items()}
        name, subject = values.get("name", ""), values.get("subject", "")
        expires_at = float(values["expires_at"]) if values.get("expires_at") else None
    except (UnicodeDecodeError, ValueError):
        log.warning("an API key record in the store is malformed; the key is refused")
        return None
    if not name or not subject:
        log.warning("API key record %r has no name or subject; the key is refused", name)
        return None
    if expires_at is not None and expires_at <= now:
        return None
    return ApiKeyMatch(name, Principal(
        subject=subject, issuer="", email=values.get("email") or None,
        tenant=values.get("tenant") or None, client=values.get("client") or None,
        roles=frozenset(values.get("roles", "").split()),
        scopes=frozenset(values.get("scopes", "").split()), credential="api_key"))


class StoreApiKeys:
    """Keys in the shared store (Redis), with an in-process cache.

    A found key is cached for ``cache_seconds`` (never past its ``expires_at``), an unknown,
    expired or unusable one for ``negative_cache_seconds``; each cache holds at most
    ``max_entries`` (oldest dropped first), and they are separate so a flood of random keys
    cannot push the good ones out. A store that does not answer is a 503 (fail closed).
    """

    def __init__(self, store: Store, *, cache_seconds: float = 30.0,
                 negative_cache_seconds: float = 5.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._ttl = cache_seconds
        self._negative_ttl = negative_cache_seconds
        self._max = max_entries
        self._clock = clock
        self._found: dict[str, tuple[float, float | None, ApiKeyMatch]] = {}
        self._missing: dict[str, float] = {}

    async def lookup(self, key: str) -> ApiKeyMatch | None:
        digest = hash_api_key(key)
        now = self._clock()
        hit = self._found.get(digest)
        if hit is not None:
            until, expires_at, found = hit
            if now < until and (expires_at is None or now < expires_at):
                return found
            del self._found[digest]
        until_missing = self._missing.get(digest)
        if until_missing is not None:
            if now < until_missing:
                return None
            del self._missing[digest]
        try:
            fields = await self.store.hgetall(record_key(digest))
        except StoreUnavailable as exc:
            log.warning("cannot look up an API key: %s", exc)
            raise Unavailable("API keys cannot be checked right now; try again later",
                              reason=UNAVAILABLE_REASON) from exc
        now = self._clock()
        match = match_from_record(fields, now=now) if fields else None
        if match is None:
            self._remember(self._missing, digest, now + self._negative_ttl)
            return None
        raw_exp = fields.get("expires_at")
        expires_at = float(raw_exp) if raw_exp else None
        self._remember(self._found, digest, (now + self._ttl, expires_at, match))
        return match

    def _remember(self, cache: dict[str, Any], digest: str, value: object) -> None:
        if len(cache) >= self._max:
            del cache[next(iter(cache))]
        cache[digest] = value

    def clear(self) -> None:
        self._found.clear()
        self._missing.clear()


class ChainApiKeys:
    """Ask each source in turn; the first match wins (config keys before the store)."""

    def __init__(self, *sources: ApiKeyStore) -> None:
        self.sources = sources

    async def lookup(self, key: str) -> ApiKeyMatch | None:
        for source in self.sources:
            match = await source.lookup(key)
            if match is not None:
                return match
        return None
