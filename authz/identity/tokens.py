"""Access-token (JWT) verification across the configured issuers.

The order of checks is part of the contract:

1. size, before anything else is done with the token;
2. the verified-token cache (a hit ends here);
3. structure: three strict base64url segments, header and payload strict JSON objects;
4. header: ``alg`` must name an asymmetric algorithm we implement; any ``crit`` is refused (we
   implement no extensions); ``kid`` must be a short string if present. ``jku``, ``x5u``,
   ``jwk`` and ``x5c`` are never read: keys come only from the issuer's configured source;
5. the issuer is picked by the exact, still unverified ``iss``; from here on only that issuer's
   config counts: its algorithm allow-list, its ``typ``, its keys (a token claiming issuer A
   but signed with issuer B's key finds no key, or a key that does not verify);
6. the signature, with a key whose type fits the algorithm;
7. claims: ``exp`` (required), ``nbf``, ``iat`` with leeway; ``aud`` against the resource;
   required claims; then the mapping to a principal.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from authz.identity.assertion import ASSERTION_TYP
from authz.identity.cache import TokenCache
from authz.identity.claims import ClaimMapper
from authz.identity.config import IssuerConfig
from authz.identity.errors import (
    JOSE_CODES,
    TokenAlgNotAllowed,
    TokenBadAudience,
    TokenBadType,
    TokenCritUnsupported,
    TokenExpired,
    TokenInvalidClaim,
    TokenIssuedInFuture,
    TokenLifetimeTooLong,
    TokenMalformed,
    TokenMissingClaim,
    TokenNotYetValid,
    TokenTooLarge,
    TokenUnknownIssuer,
)
from authz.identity.jose import ALGORITHMS, Algorithm, JoseError, is_number, split_compact, verify_signature
from authz.identity.jwks import KeySource
from authz.model import Principal

MAX_KID_CHARS = 256


def normalise_typ(value: str) -> str:
    """RFC 7515 §4.1.9: media types compare case-insensitively, ``application/`` optional."""
    value = value.lower()
    return value.removeprefix("application/")


@dataclasses.dataclass(frozen=True, slots=True)
class Verified:
    principal: Principal
    issuer_name: str
    cache_hit: bool


class IssuerVerifier:
    """Everything needed to check tokens of one issuer, compiled from its config."""

    def __init__(self, cfg: IssuerConfig, *, audiences: Sequence[str], keys: KeySource) -> None:
        self.name = cfg.name
        self.issuer = cfg.issuer
        self.algorithms: Mapping[str, Algorithm] = {a: ALGORITHMS[a] for a in cfg.algorithms}
        self.verify_audience = cfg.verify_audience
        self.audiences = frozenset(audiences)
        if self.verify_audience and not self.audiences:
            raise ValueError(f"issuer {cfg.name}: no audience to verify")
        self.leeway = cfg.leeway_seconds
        self.max_lifetime = cfg.max_token_lifetime_seconds
        self.typ = normalise_typ(cfg.typ) if cfg.typ else None
        self.required_claims = cfg.required_claims
        self.mapper = ClaimMapper(cfg.claims)
        self.keys = keys

    def check_claims(self, claims: Mapping[str, Any], now: float) -> float:
        """Validate the registered claims; returns ``exp``."""
        exp = claims.get("exp")
        if exp is None:
            raise TokenMissingClaim("the access token has no exp claim")
        if not is_number(exp):
            raise TokenInvalidClaim("the exp claim is not a number")
        if now >= exp + self.leeway:
            raise TokenExpired()
        nbf = claims.get("nbf")
        if nbf is not None:
            if not is_number(nbf):
                raise TokenInvalidClaim("the nbf claim is not a number")
            if now + self.leeway < nbf:
                raise TokenNotYetValid()
        iat = claims.get("iat")
        if iat is not None:
            if not is_number(iat):
                raise TokenInvalidClaim("the iat claim is not a number")
            if iat > now + self.leeway:
                raise TokenIssuedInFuture()
        if exp - (iat if iat is not None else now) > self.max_lifetime + self.leeway:
            raise TokenLifetimeTooLong()
        if self.verify_audience:
            self._check_audience(claims.get("aud"))
        for name in self.required_claims:
            if claims.get(name) is None:
                raise TokenMissingClaim(f"the access token has no {name} claim")
        return float(exp)

    def _check_audience(self, aud: Any) -> None:
        if aud is None:
            raise TokenMissingClaim("the access token has no aud claim")
        if isinstance(aud, str):
            values = {aud}
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            values = set(aud)
        else:
            raise TokenInvalidClaim("the aud claim is not a string or a list of strings")
        if not values & self.audiences:
            raise TokenBadAudience()


class TokenVerifier:
    def __init__(self, issuers: Sequence[IssuerVerifier], *, max_token_bytes: int,
                 cache: TokenCache | None = None, clock: Callable[[], float] = time.time) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        self._names = {i.issuer: i.name for i in issuers}
        self.max_token_bytes = max_token_bytes
        self.cache = cache
        self._clock = clock

    @property
    def issuers(self) -> tuple[IssuerVerifier, ...]:
        return tuple(self._issuers.values())

    def cached(self, token: str) -> Verified | None:
        """The earlier verification of this very token, while it is still good; else None."""
        if self.cache is None or len(token) > self.max_token_bytes:
            return None
        principal = self.cache.get(token)
        if principal is None:
            return None
        return Verified(principal, self._names.get(principal.issuer, ""), True)

    async def verify(self, token: str) -> Verified:
        """Verify an access token or raise a ``TokenInvalid`` subclass (or ``KeysUnavailable``)."""
        verified = self.cached(token)
        if verified is not None:
            return verified
        return await self.verify_fresh(token)

    async def verify_fresh(self, token: str) -> Verified:
        """``verify`` for a token the cache has just been asked about (and did not have)."""
        if len(token) > self.max_token_bytes:
            raise TokenTooLarge()
        try:
            jws = split_compact(token, max_bytes=self.max_token_bytes)
        except JoseError as exc:
            raise JOSE_CODES.get(exc.code, TokenMalformed)() from None
        header, claims = jws.header, jws.payload

        alg_name = header.get("alg")
        if not isinstance(alg_name, str):
            raise TokenMalformed("the access token header has no alg")
        alg = ALGORITHMS.get(alg_name)  # "none" and HS* are simply not in the table
        if alg is None:
            raise TokenAlgNotAllowed()
        if "crit" in header:
            raise TokenCritUnsupported()
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS):
            raise TokenMalformed("the access token header has an invalid kid")

        iss = claims.get("iss")
        if iss is None:
            raise TokenMissingClaim("the access token has no iss claim")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise TokenUnknownIssuer()
        if alg.name not in issuer.algorithms:
            raise TokenAlgNotAllowed()
        typ = header.get("typ")
        if issuer.typ is not None:
            if not isinstance(typ, str) or normalise_typ(typ) != issuer.typ:
                raise TokenBadType()
        elif isinstance(typ, str) and normalise_typ(typ) == ASSERTION_TYP:
            raise TokenBadType()  # our own assertions are never access tokens

        key = await issuer.keys.key_for(kid, alg)
        try:
            verify_signature(alg, key, jws.signing_input, jws.signature)
        except JoseError as exc:
            raise JOSE_CODES.get(exc.code, TokenMalformed)() from None

        exp = issuer.check_claims(claims, self._clock())
        principal = issuer.mapper.principal(claims, issuer=issuer.issuer, expires_at=exp)
        if self.cache is not None:
            self.cache.put(token, principal, exp)
        return Verified(principal, issuer.name, False)

    async def close(self) -> None:
        for issuer in self._issuers.values():
            await issuer.keys.close()
