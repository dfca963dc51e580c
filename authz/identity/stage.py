"""The identity stage: who is calling, proven to the backend.

For every request, in this order:

1. remove every identity header the sidecar owns (and the configured spoofable extras), so a
   client that sends ``x-authz-user: ceo`` or ``x-user-id: ceo`` gets nothing for it;
2. RFC 9728 metadata paths pass without credentials;
3. read exactly one credential: ``Authorization: Bearer <jwt>`` (scheme case-insensitive),
   ``Authorization: <api_keys.scheme> <key>`` or the API-key header. None on an anonymous path
   is fine; none elsewhere, two, or a comma inside one (Envoy joins repeated headers with ",")
   is a 401. A credential sent to an anonymous path is still checked;
4. set ``ctx.principal``, the verified identity headers and the signed assertion;
5. remove ``Authorization`` (and our API-key header) before the upstream, unless the path opts in
   to passthrough: MCP forbids token passthrough.

Rejections carry ``WWW-Authenticate: Bearer resource_metadata=..., error=..., error_description=...``
with fixed texts; ``ctx.facts["identity"]`` records safe facts for audit, never the credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from authz import metrics
from authz.errors import ConfigError
from authz.identity.apikeys import (
    ApiKeyStore,
    ChainApiKeys,
    ConfigApiKeys,
    StoreApiKeys,
    check_key_syntax,
)
from authz.identity.assertion import AssertionSigner, KeyRing
from authz.identity.cache import TokenCache
from authz.identity.challenge import bearer_challenge
from authz.identity.config import AssertionConfig, IdentityConfig
from authz.identity.errors import (
    ApiKeyInvalid,
    CredentialsBadScheme,
    CredentialsMalformed,
    CredentialsMissing,
    CredentialsMultiple,
    IdentityError,
    TokenMalformed,
    TokenTooLarge,
)
from authz.identity.jwks import HttpClient, SessionFactory, build_key_source
from authz.identity.metadata import is_metadata_path, metadata_url
from authz.identity.paths import path_matches
from authz.identity.tokens import IssuerVerifier, TokenVerifier
from authz.model import ANONYMOUS, Context, Mutations, Principal, Request
from authz.pipeline import Stage
from authz.store.base import Store

log = logging.getLogger("authz.identity")

# RFC 6750 §2.1 b64token
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
# Header values we pass as they are; anything else is percent-encoded (UTF-8).
_PLAIN_VALUE = re.compile(r"^[ -$&-~]*$")  # printable ASCII without "%"
_PLAIN_ITEM = re.compile(r"^[!-$&-+\--~]*$")  # ... and without "," and space (list items)

# Signing keys outlive config generations: a reload that changes the key rotates it (the old one
# stays published until its assertions expired) and a generated key survives reloads.


def header_value(value: str) -> str:
    """A header-safe rendering: printable ASCII stays, "%" / control / non-ASCII are
    percent-encoded (the signed assertion carries the exact values)."""
    return value if _PLAIN_VALUE.match(value) else quote(value, safe=" !\"#$&'()*+,/:;<=>?@[\\]^_`{|}~")


def header_list(values: frozenset[str]) -> str:
    """A comma-separated list; items containing "," or whitespace are percent-encoded."""
    return ",".join(v if _PLAIN_ITEM.match(v) else quote(v, safe="!\"#$&'()*+/:;<=>?@[\\]^_`{|}~")
                    for v in sorted(values))


class IdentityStage(Stage):
    name = "identity"

    def __init__(self, cfg: IdentityConfig, *, verifier: TokenVerifier,
                 api_keys: ApiKeyStore | None = None, signer: AssertionSigner | None = None,
                 http: HttpClient | None = None) -> None:
        self.cfg = cfg
        self.verifier = verifier
        self.api_keys = api_keys
        self.signer = signer
        self._http = http
        h = cfg.headers
        self._owned = tuple(dict.fromkeys((*h.owned(), *h.strip)))
        self._owned_set = frozenset(self._owned)
        self._api_header = cfg.api_keys.header if api_keys is not None else None
        self._api_scheme = cfg.api_keys.scheme.lower() if api_keys is not None else None
        self._token_headers = tuple(n for n in cfg.token_headers if n != self._api_header)
        self._api_header_tokens = self._api_header is not None and self._api_header in cfg.token_headers
        self._metadata_url = metadata_url(cfg)
        self._scope = " ".join(cfg.challenge_scopes) or None
        self._max_header = cfg.max_token_bytes + 64
        self._prepared: dict[int, tuple[Principal, tuple[tuple[str, str], ...], str | None]] = {}
        self._prepared_max = max(1024, cfg.token_cache.max_entries)
        self._bind_request = cfg.assertion.binding == "request"
        self._warming: asyncio.Task[None] | None = None
        self._warm_interval = max(1.0, min((i.jwks_cache.refetch_interval_seconds for i in cfg.issuers),
                                           default=5.0))

    # --- the hook --------------------------------------------------------------------------------

    async def on_request(self, ctx: Context) -> None:
        m = ctx.mutations
        for name in self._owned_set & m.set_headers.keys():
            del m.set_headers[name]
        m.remove_headers.update(self._owned)
        request = ctx.request
        path = request.path_only
        if not self.cfg.enabled or is_metadata_path(path):
            self._strip_credentials(m, path)
            ctx.principal = ANONYMOUS
            ctx.facts["identity"] = {"credential": "anonymous"}
            return
        try:
            principal, facts = await self._authenticate(request, path)
        except IdentityError as exc:
            exc.headers["www-authenticate"] = self.challenge(exc)
            raise
        ctx.principal = principal
        ctx.facts["identity"] = facts
        if not principal.anonymous:
            self._set_identity(m, principal, request)
        self._strip_credentials(m, path)

    def challenge(self, exc: IdentityError) -> str:
        return bearer_challenge(resource_metadata=self._metadata_url, error=exc.error_code,
                                description=exc.message, scope=self._scope)

    # --- credentials -----------------------------------------------------------------------------

    async def _authenticate(self, request: Request, path: str) -> tuple[Principal, dict[str, Any]]:
        authorization = request.header_values("authorization")
        api_values = request.header_values(self._api_header) if self._api_header else ()
        token_values: tuple[str, ...] = ()
        for name in self._token_headers:
            token_values += request.header_values(name)
        count = len(authorization) + len(api_values) + len(token_values)
        if count == 0:
            if path_matches(path, self.cfg.anonymous_paths):
                return ANONYMOUS, {"credential": "anonymous"}
            raise CredentialsMissing()
        if count > 1:
            raise CredentialsMultiple()
        if token_values:
            return await self._bearer(self._token_value(token_values[0]))
        if api_values:
            value = api_values[0].strip(" \t")
            if self._api_header_tokens and value.count(".") == 2:  # a JWT, not an API key
                return await self._bearer(self._token_value(value))
            return await self._api_key(value)
        value = authorization[0]
        if len(value) > self._max_header:
            raise TokenTooLarge()
        scheme, _, credentials = value.strip(" \t").partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip(" ")
        if scheme == "bearer":
            return await self._bearer(credentials)
        if scheme and scheme == self._api_scheme:
            if not credentials:
                raise CredentialsMalformed()
            return await self._api_key(credentials)
        if not value.strip():
            raise CredentialsMalformed()
        raise CredentialsBadScheme()

    def _token_value(self, value: str) -> str:
        """A token header's value as the token (a "Bearer " prefix is tolerated)."""
        if len(value) > self._max_header:
            raise TokenTooLarge()
        value = value.strip(" \t")
        scheme, sep, rest = value.partition(" ")
        return rest.strip(" ") if sep and scheme.lower() == "bearer" else value

    async def _bearer(self, token: str) -> tuple[Principal, dict[str, Any]]:
        if not token:
            raise CredentialsMalformed("the Bearer scheme needs a token")
        if "," in token:  # Envoy joined two Authorization headers
            raise CredentialsMultiple()
        # A token verified before passed every check below: the cache answers first (the
        # character check alone costs more than the lookup on a 1 KB token).
        verified = self.verifier.cached(token)
        if verified is None:
            if not _B64TOKEN.match(token):
                # RFC 6750 §3.1: a malformed token is invalid_token; whitespace inside the
                # credential is a malformed request (two tokens, a header split) invalid_request.
                if any(c.isspace() for c in token):
                    raise CredentialsMalformed("the bearer credential contains whitespace")
                raise TokenMalformed("the bearer token has invalid characters")
            verified = await self.verifier.verify_fresh(token)
        p = verified.principal
        facts: dict[str, Any] = {"credential": "jwt", "issuer": verified.issuer_name,
                                 "subject": p.subject, "cache_hit": verified.cache_hit}
        if p.client:
            facts["client"] = p.client
        return p, facts

    async def _api_key(self, key: str) -> tuple[Principal, dict[str, Any]]:
        assert self.api_keys is not None
        if "," in key:
            raise CredentialsMultiple()
        check_key_syntax(key)
        match = await self.api_keys.lookup(key)
        if match is None:
            raise ApiKeyInvalid()
        p = match.principal
        facts: dict[str, Any] = {"credential": "api_key", "api_key": match.name,
                                 "subject": p.subject}
        if p.client:
            facts["client"] = p.client
        return p, facts

    # --- mutations -------------------------------------------------------------------------------

    def _set_identity(self, m: Mutations, p: Principal, request: Request) -> None:
        headers, claims = self._prepared_for(p)
        set_headers = m.set_headers
        for name, value in headers:
            set_headers[name] = value
        if self.signer is not None:
            if self._bind_request:
                set_headers[self.cfg.headers.assertion] = self.signer.sign(p, request, claims)
                metrics.ASSERTIONS_SIGNED.inc()
            else:
                set_headers[self.cfg.headers.assertion] = self.signer.sign_for_caller(
                    p, claims, metrics.ASSERTIONS_SIGNED.inc)
        if m.remove_headers:
            m.remove_headers.difference_update(set_headers)

    def _prepared_for(self, p: Principal) -> tuple[tuple[tuple[str, str], ...], str | None]:
        """The identity headers and the assertion's caller claims for ``p``, worked out once per
        verified principal: the token cache hands back the same ``Principal`` object for the
        same token, so a steady stream of requests pays for neither again."""
        entry = self._prepared.get(id(p))
        if entry is not None and entry[0] is p:
            return entry[1], entry[2]
        h = self.cfg.headers
        headers = [(h.user, header_value(p.subject))]
        for name, value in ((h.issuer, p.issuer), (h.email, p.email), (h.tenant, p.tenant),
                            (h.client, p.client)):
            if value:
                headers.append((name, header_value(value)))
        if p.roles:
            headers.append((h.roles, header_list(p.roles)))
        if p.scopes:
            headers.append((h.scopes, header_list(p.scopes)))
        prepared = tuple((name.lower(), value) for name, value in headers)
        claims = self.signer.principal_claims(p) if self.signer is not None else None
        if len(self._prepared) >= self._prepared_max:
            self._prepared.clear()  # the live principals come back on their next request
        # The entry keeps ``p`` alive, so its id cannot be reused by another object meanwhile.
        self._prepared[id(p)] = (p, prepared, claims)
        return prepared, claims

    def _strip_credentials(self, m: Mutations, path: str) -> None:
        if path_matches(path, self.cfg.passthrough_authorization_paths):
            return
        m.remove_header("authorization")
        if self._api_header:
            m.remove_header(self._api_header)
        for name in self._token_headers:
            m.remove_header(name)

    # --- lifecycle -------------------------------------------------------------------------------

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The assertion signing keys as a JWKS (empty when assertions are off)."""
        return self.signer.jwks() if self.signer is not None else {"keys": []}

    async def warm(self) -> None:
        """Fetch every remote issuer's keys now, all at once (bounded by each issuer's fetch
        timeouts; never raises)."""
        await asyncio.gather(*(issuer.keys.warm() for issuer in self.verifier.issuers))

    async def start(self) -> None:
        """At start (and for each new config generation): fetch the keys, and keep trying in
        the background for issuers that did not answer, so readiness does not wait for a
        token that a not-ready sidecar will never get."""
        if not self.cfg.enabled:
            return
        await self.warm()
        if not self._all_keys():
            self._warming = asyncio.get_running_loop().create_task(self._keep_warming())

    def _all_keys(self) -> bool:
        return all(i.keys.state()["ok"] for i in self.verifier.issuers)

    async def _keep_warming(self) -> None:
        while not self._all_keys():
            await asyncio.sleep(self._warm_interval)
            await self.warm()

    def health(self) -> dict[str, object]:
        """Readiness: each issuer's key state; ok when tokens of at least one issuer can be
        verified (or when there is nothing to verify: identity off, or no issuer configured)."""
        issuers = {i.name: i.keys.state() for i in self.verifier.issuers}
        ok = not self.cfg.enabled or not issuers or any(s["ok"] for s in issuers.values())
        return {"ok": ok, "required": self.cfg.required_for_readiness, "issuers": issuers}

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._warming
        await self.verifier.close()
        if self._http is not None:
            await self._http.close()


def build_signer(cfg: AssertionConfig, *, keyring: KeyRing,
                 clock: Callable[[], float] = time.time) -> AssertionSigner:
    try:
        keys = cfg.signing_keys()
    except ValueError as exc:
        raise ConfigError("identity.assertion", [("identity.assertion.key_files", str(exc))]) from None
    if keys:
        active, published = keys[0], keys[1:]
    else:
        had = keyring.active
        active, published = keyring.generated(cfg.algorithm), []
        if had is None or had.kid != active.kid:
            log.warning("identity.assertion.key_files is empty: signing assertions with an "
                        "in-memory %s key (kid %s); it changes when the process restarts",
                        cfg.algorithm, active.kid)
    # Keep the previous key published until the last assertion it signed has expired.
    keyring.install(active, published, retire_after=cfg.lifetime_seconds + 60)
    return AssertionSigner(issuer=cfg.issuer, keyring=keyring, lifetime=cfg.lifetime_seconds,
                           audience=cfg.audience, clock=clock)


def build_api_keys(cfg: IdentityConfig, store: Store | None, *,
                   clock: Callable[[], float] = time.time) -> ApiKeyStore | None:
    """Config keys, then (``api_keys.store: redis``) the shared store's; None when off."""
    ak = cfg.api_keys
    if not ak.enabled:
        return None
    config_keys = ConfigApiKeys(ak.keys)
    if ak.store != "redis":
        return config_keys
    if store is None:
        raise ConfigError("identity.api_keys", [("identity.api_keys.store",
                                                 "redis needs the shared store (store.redis_url)")])
    stored = StoreApiKeys(store, cache_seconds=ak.cache_seconds,
                          negative_cache_seconds=ak.negative_cache_seconds,
                          max_entries=ak.cache_max_entries, clock=clock)
    return ChainApiKeys(config_keys, stored) if len(config_keys) else stored


def build_identity_stage(cfg: IdentityConfig, *, http_session_factory: SessionFactory | None = None,
                         keyring: KeyRing | None = None, clock: Callable[[], float] = time.time,
                         store: Store | None = None) -> IdentityStage:
    """Build the stage from its config section. Nothing touches the network here; remote keys
    are fetched on first use (or by ``await stage.warm()``). The stage owns the HTTP session it
    creates from ``http_session_factory`` and closes it in ``close()``; ``store`` (needed for
    ``api_keys.store: redis``) is borrowed, not closed."""
    http = HttpClient(http_session_factory)
    issuers = [IssuerVerifier(i, audiences=cfg.audiences_for(i),
                              keys=build_key_source(i, http=http, clock=clock))
               for i in cfg.issuers]
    tc = cfg.token_cache
    cache = TokenCache(tc.max_entries, max_ttl=tc.max_ttl_seconds, clock=clock) if tc.enabled else None
    verifier = TokenVerifier(issuers, max_token_bytes=cfg.max_token_bytes, cache=cache, clock=clock)
    api_keys = build_api_keys(cfg, store, clock=clock)
    signer = None
    if cfg.enabled and cfg.assertion.enabled:
        signer = build_signer(cfg.assertion, keyring=keyring or KeyRing(), clock=clock)
    return IdentityStage(cfg, verifier=verifier, api_keys=api_keys, signer=signer, http=http)
