"""Where an issuer's verification keys come from: static (inline JWKS, file, PEM) or remote
(OIDC discovery or an explicit ``jwks_uri``) with an async cache.

The remote cache follows these rules, all per issuer:

- keys live for the server's ``Cache-Control: max-age`` clamped to ``[min_ttl, max_ttl]``
  (``ttl_seconds`` when the server sends none); past that they are refreshed in the background
  while the old keys keep answering, so no request waits for a routine refresh;
- a token naming an unknown ``kid`` triggers a refetch, but at most one per
  ``refetch_interval_seconds``: a flood of random kids costs the IdP one request per interval;
- concurrent refetches coalesce into one fetch that every waiter shares;
- a failed fetch keeps the last good keys (an IdP outage does not break known keys) and is
  retried no sooner than ``refetch_interval_seconds`` later; only an issuer whose keys were
  never obtained answers ``KeysUnavailable`` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp

from authz import __version__, metrics
from authz.identity.config import IssuerConfig, JwksSettings, check_fetch_url, read_jwks_file
from authz.identity.errors import KeysUnavailable, TokenKeyMismatch, TokenUnknownKid
from authz.identity.jose import Algorithm, JoseError, KeySet, VerificationKey, load_public_pem, parse_jwks

log = logging.getLogger("authz.identity.jwks")

SessionFactory = Callable[[], aiohttp.ClientSession]
Clock = Callable[[], float]

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)


class KeySource(Protocol):
    name: str

    async def key_for(self, kid: str | None, alg: Algorithm) -> VerificationKey:
        """The key that verifies a token with this ``kid`` and ``alg``, or raise
        ``TokenUnknownKid`` / ``TokenKeyMismatch`` / ``KeysUnavailable``."""
        ...

    async def warm(self) -> None: ...

    def state(self) -> dict[str, object]:
        """For readiness: whether tokens of this issuer can be verified now, and why not."""
        ...

    async def close(self) -> None: ...


def _pick(keys: KeySet, kid: str | None, alg: Algorithm) -> VerificationKey | None:
    key = keys.find(kid, alg)
    if key is None and kid is not None and keys.has_kid(kid):
        raise TokenKeyMismatch()  # the kid exists, but its key type cannot do this algorithm
    return key


class StaticKeySource:
    """Keys fixed in the config: never fetched, never refreshed."""

    def __init__(self, name: str, keys: KeySet) -> None:
        self.name = name
        self.keys = keys
        metrics.JWKS_KEYS.labels(issuer=name).set(len(keys))

    async def key_for(self, kid: str | None, alg: Algorithm) -> VerificationKey:
        key = _pick(self.keys, kid, alg)
        if key is None:
            raise TokenUnknownKid()
        return key

    async def warm(self) -> None:
        return None

    def state(self) -> dict[str, object]:
        return {"ok": True, "keys": len(self.keys), "source": "config"}

    async def close(self) -> None:
        return None


def static_keys(cfg: IssuerConfig) -> KeySet:
    """The key set of an issuer configured with ``jwks``, ``jwks_file`` or ``pem_keys``."""
    if cfg.pem_keys:
        return KeySet([load_public_pem(k.read(), kid=k.kid) for k in cfg.pem_keys])
    document = cfg.jwks if cfg.jwks is not None else read_jwks_file(cfg.jwks_file or "")
    keys, _ = parse_jwks(document)
    return keys


class HttpClient:
    """One lazily created aiohttp session shared by an identity stage's key sources."""

    def __init__(self, session_factory: SessionFactory | None = None) -> None:
        self._factory = session_factory or default_session
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._factory()
        return self._session

    async def get_json(self, url: str, *, timeout_seconds: float, max_bytes: int
                       ) -> tuple[object, float | None]:
        """GET a JSON document. Returns it with the response's max-age (None if not given;
        0 for no-store/no-cache). Raises ``FetchError``."""
        try:
            async with self.session().get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_seconds), allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as resp:
                if resp.status != 200:
                    raise FetchError("http_error", f"HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise FetchError("invalid", f"larger than {max_bytes} bytes")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError("invalid", f"larger than {max_bytes} bytes")
                    chunks.append(chunk)
                max_age = parse_max_age(resp.headers.get("Cache-Control", ""))
        except TimeoutError:
            raise FetchError("timeout", f"no answer within {timeout_seconds:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError("network_error", type(exc).__name__) from None
        try:
            return json.loads(b"".join(chunks)), max_age
        except (ValueError, RecursionError):
            raise FetchError("invalid", "not JSON") from None

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def default_session() -> aiohttp.ClientSession:
    # trust_env=False: proxy variables are not consulted unless a deployment passes its own
    # session factory; an IdP reached through an unexpected proxy is a surprise we avoid.
    return aiohttp.ClientSession(headers={"User-Agent": f"authz/{__version__}"}, trust_env=False)


class FetchError(Exception):
    def __init__(self, result: str, detail: str) -> None:
        self.result = result  # metric label: http_error | timeout | network_error | invalid
        super().__init__(detail)


def parse_max_age(cache_control: str) -> float | None:
    if _NO_CACHE.search(cache_control):
        return 0.0
    m = _MAX_AGE.search(cache_control)
    return float(m.group(1)) if m else None


class RemoteKeySource:
    """Keys fetched from the issuer over HTTP(S), cached as described in the module doc."""

    def __init__(self, *, name: str, issuer: str, discovery_url: str | None,
                 jwks_uri: str | None, settings: JwksSettings, http: HttpClient,
                 allow_http: bool = False, clock: Clock = time.time) -> None:
        if (discovery_url is None) == (jwks_uri is None):
            raise ValueError("give exactly one of discovery_url and jwks_uri")
        self.name = name
        self.issuer = issuer
        self._discovery_url = discovery_url
        self._jwks_uri = jwks_uri
        self._discovered_at = 0.0
        self._settings = settings
        self._http = http
        self._allow_http = allow_http
        self._clock = clock
        self._keys: KeySet | None = None
        self._expires_at = 0.0  # keys are fresh until then
        self._last_attempt = float("-inf")  # when the last fetch started
        self._retry_at = float("-inf")  # no fetch before then (set after a failure)
        self._inflight: asyncio.Task[bool] | None = None
        self._last_error = "not fetched yet"

    # --- request path ----------------------------------------------------------------------------

    async def key_for(self, kid: str | None, alg: Algorithm) -> VerificationKey:
        keys = await self._current_keys()
        key = _pick(keys, kid, alg)
        if key is not None:
            return key
        if await self._refetch_for_unknown_kid():
            keys = self._keys or keys
            key = _pick(keys, kid, alg)
            if key is not None:
                return key
        raise TokenUnknownKid()

    async def _current_keys(self) -> KeySet:
        now = self._clock()
        if self._keys is None:
            if self._inflight is not None:
                await asyncio.shield(self._inflight)
            elif now >= self._retry_at:
                await self._refresh()
            if self._keys is None:
                raise KeysUnavailable(headers={"Retry-After": str(self._retry_after(now))})
        elif now >= self._expires_at and self._inflight is None and now >= self._retry_at:
            self._start_refresh()  # stale-while-revalidate: this request uses the old keys
        return self._keys

    def _retry_after(self, now: float) -> int:
        return max(1, int(self._retry_at - now + 0.999)) if self._retry_at > now else 1

    async def _refetch_for_unknown_kid(self) -> bool:
        """Refetch (or join a fetch in flight) unless one started too recently."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return True
        now = self._clock()
        if now - self._last_attempt < self._settings.refetch_interval_seconds or now < self._retry_at:
            metrics.JWKS_REFETCH_SUPPRESSED.labels(issuer=self.name).inc()
            return False
        await self._refresh()
        return True

    # --- fetching --------------------------------------------------------------------------------

    def _start_refresh(self) -> asyncio.Task[bool]:
        if self._inflight is None:
            self._last_attempt = self._clock()
            task = asyncio.get_running_loop().create_task(self._fetch_and_store())
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _refresh(self) -> bool:
        # shield: a waiter whose request is cancelled must not cancel the shared fetch.
        return await asyncio.shield(self._start_refresh())

    async def warm(self) -> None:
        """Fetch the keys now if none are held (e.g. at startup); never raises."""
        if self._keys is None:
            with contextlib.suppress(Exception):
                await self._refresh()

    def state(self) -> dict[str, object]:
        keys = self._keys
        out: dict[str, object] = {"ok": keys is not None, "keys": len(keys) if keys is not None else 0,
                                  "source": "remote"}
        if self._last_error:
            out["last_error"] = self._last_error
        return out

    async def _fetch_and_store(self) -> bool:
        started = self._clock()
        try:
            keys, max_age = await self._fetch()
        except FetchError as exc:
            self._last_error = f"{exc.result}: {exc}"
            metrics.JWKS_FETCHES.labels(issuer=self.name, result=exc.result).inc()
            self._retry_at = started + self._settings.refetch_interval_seconds
            log.warning("issuer %s: fetching keys failed (%s: %s); %s", self.name, exc.result, exc,
                        "keeping the last good keys" if self._keys is not None else "no keys yet")
            return False
        except Exception as exc:
            self._last_error = f"invalid: {type(exc).__name__}"
            metrics.JWKS_FETCHES.labels(issuer=self.name, result="invalid").inc()
            self._retry_at = started + self._settings.refetch_interval_seconds
            log.exception("issuer %s: fetching keys failed unexpectedly", self.name)
            return False
        s = self._settings
        ttl = s.ttl_seconds if max_age is None else max_age
        ttl = min(max(ttl, s.min_ttl_seconds), s.max_ttl_seconds)
        now = self._clock()
        self._keys = keys
        self._last_error = ""
        self._expires_at = now + ttl
        self._retry_at = float("-inf")
        metrics.JWKS_FETCHES.labels(issuer=self.name, result="ok").inc()
        metrics.JWKS_KEYS.labels(issuer=self.name).set(len(keys))
        metrics.JWKS_LAST_SUCCESS.labels(issuer=self.name).set(time.time())
        return True

    async def _fetch(self) -> tuple[KeySet, float | None]:
        s = self._settings
        now = self._clock()
        jwks_uri = self._jwks_uri
        if self._discovery_url is not None and (
                jwks_uri is None or now - self._discovered_at >= s.ttl_seconds):
            jwks_uri = await self._discover(self._discovery_url)
            self._jwks_uri, self._discovered_at = jwks_uri, now
        assert jwks_uri is not None
        document, max_age = await self._http.get_json(jwks_uri, timeout_seconds=s.timeout_seconds,
                                                      max_bytes=s.max_bytes)
        try:
            keys, problems = parse_jwks(document)
        except JoseError as exc:
            raise FetchError("invalid", exc.detail or exc.code) from None
        for problem in problems:
            log.info("issuer %s: ignoring %s", self.name, problem)
        if not len(keys):
            raise FetchError("invalid", "the JWK set has no usable keys")
        return keys, max_age

    async def _discover(self, url: str) -> str:
        s = self._settings
        document, _ = await self._http.get_json(url, timeout_seconds=s.timeout_seconds,
                                                max_bytes=s.max_bytes)
        if not isinstance(document, dict):
            raise FetchError("invalid", "discovery document is not an object")
        # OIDC Discovery §4.3: the document must name exactly the issuer we trust.
        if document.get("issuer") != self.issuer:
            raise FetchError("invalid", "discovery document names a different issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise FetchError("invalid", "discovery document has no jwks_uri")
        try:
            return check_fetch_url(jwks_uri, allow_http=self._allow_http)
        except ValueError as exc:
            raise FetchError("invalid", f"jwks_uri {exc}") from None

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def build_key_source(cfg: IssuerConfig, *, http: HttpClient, clock: Clock = time.time) -> KeySource:
    if cfg.remote:
        return RemoteKeySource(
            name=cfg.name, issuer=cfg.issuer,
            discovery_url=cfg.effective_discovery_url if cfg.jwks_uri is None else None,
            jwks_uri=cfg.jwks_uri, settings=cfg.jwks_cache, http=http,
            allow_http=cfg.allow_http, clock=clock)
    return StaticKeySource(cfg.name, static_keys(cfg))
