"""Gateway-signed identity assertions: what the sidecar proves to the backend about a request.

The sidecar verifies the caller's token, then signs a short-lived JWT (ES256 or EdDSA) saying
who the caller is and which request it is for, and sends it upstream in ``x-authz-assertion``.
A backend that verifies it knows the identity came from the gateway, for this very request,
within the last minute; it never sees (or needs) the user's token.

Claims::

    {"iss": "<sidecar issuer>", "aud": "<backend, if configured>", "sub": "<subject>",
     "iat": ..., "exp": iat + 60, "jti": "<random>",
     "cred": "jwt" | "api_key", "idp": "<the token's issuer>", "client": "<azp/client_id>",
     "email": ..., "tenant": ..., "roles": [...], "scope": "a b c",
     "req": {"method": "POST", "host": "mcp.example.com", "path": "/mcp", "id": "<x-request-id>"}}

The header has ``typ: authz-assertion+jwt`` so an assertion can never pass for an access token
(or the other way round). ``req.path`` is the path without its query string.

Backend side (standard library plus ``cryptography``; no asyncio, no pydantic)::

    from authz.identity.assertion import verify, InvalidAssertion
    claims = verify(request.headers["x-authz-assertion"],
                    jwks_url="http://127.0.0.1:9002/.well-known/jwks.json",
                    issuer="urn:authz:sidecar", method=request.method,
                    host=request.host, path=request.path, request_id=request.headers["x-request-id"])

Keys rotate without downtime through ``KeyRing``: installing a new active key keeps publishing
the previous one until every assertion it signed has expired.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from authz.identity.jose import (
    ALGORITHMS,
    JoseError,
    KeySet,
    b64url_encode,
    dump_json,
    is_number,
    jwk_thumbprint,
    parse_jwks,
    public_jwk,
    sign,
    split_compact,
    verify_signature,
)
from authz.identity.shared_keys import shared_pem
from authz.model import Principal, Request

log = logging.getLogger("authz.identity.assertion")

# A JSON string literal as dump_json writes one (UTF-8 kept, quotes and controls escaped).
_json_str = json.encoder.encode_basestring

ASSERTION_TYP = "authz-assertion+jwt"
SIGNING_ALGORITHMS = ("ES256", "EdDSA")
DEFAULT_LIFETIME = 60
MAX_ASSERTION_BYTES = 16 * 1024

__all__ = [
    "ASSERTION_TYP",
    "AssertionSigner",
    "AssertionVerifier",
    "InvalidAssertion",
    "KeyRing",
    "SigningKey",
    "verify",
]


class InvalidAssertion(Exception):
    """The assertion was refused. ``reason`` is a stable code such as ``assertion.expired`` or
    ``assertion.binding_mismatch``; ``field`` names the request-binding field that differed."""

    def __init__(self, reason: str, message: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{reason}: {message}")


# --- signing keys --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: str
    private_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey = dataclasses.field(repr=False)

    @classmethod
    def from_private_key(cls, private_key: Any) -> SigningKey:
        if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
                private_key.curve, ec.SECP256R1):
            alg = "ES256"
        elif isinstance(private_key, ed25519.Ed25519PrivateKey):
            alg = "EdDSA"
        else:
            raise ValueError("assertion keys must be EC P-256 (ES256) or Ed25519 (EdDSA)")
        return cls(kid=jwk_thumbprint(public_jwk(private_key)), alg=alg, private_key=private_key)

    @classmethod
    def from_pem(cls, data: bytes, password: bytes | None = None) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a usable PEM private key: {exc}") from None
        return cls.from_private_key(key)

    @classmethod
    def generate(cls, alg: str = "ES256") -> SigningKey:
        if alg == "ES256":
            return cls.from_private_key(ec.generate_private_key(ec.SECP256R1()))
        if alg == "EdDSA":
            return cls.from_private_key(ed25519.Ed25519PrivateKey.generate())
        raise ValueError(f"unsupported assertion algorithm {alg!r}")

    def public_jwk(self) -> dict[str, str]:
        return {**public_jwk(self.private_key), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())


class KeyRing:
    """The sidecar's signing keys: one active, others published.

    Published are: the active key, the extra configured keys (the next key, pre-published so
    backends have it before it signs), and each previously active key until ``retire_after``
    seconds after it stopped signing. A ring outlives config reloads, so changing the key file
    in the config rotates without downtime, and a generated key survives reloads.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, name: str = "assertion") -> None:
        self._clock = clock
        self.name = name  # of a generated key shared by workers (SHARED_KEYS_ENV)
        self._lock = threading.Lock()
        self._active: SigningKey | None = None
        self._published: tuple[SigningKey, ...] = ()
        self._retiring: dict[str, tuple[SigningKey, float]] = {}
        self._generated: dict[str, SigningKey] = {}

    @property
    def active(self) -> SigningKey | None:
        return self._active

    def install(self, active: SigningKey, published: Sequence[SigningKey] = (), *,
                retire_after: float) -> None:
        with self._lock:
            old = self._active
            if old is not None and old.kid != active.kid:
                self._retiring[old.kid] = (old, self._clock() + retire_after)
            self._retiring.pop(active.kid, None)
            self._active = active
            self._published = tuple(k for k in published if k.kid != active.kid)

    def generated(self, alg: str) -> SigningKey:
        """The in-memory key for ``alg`` (generated once per ring). Workers of one supervisor
        share it (``authz.identity.shared_keys``): a token one signs, every other verifies."""
        with self._lock:
            key = self._generated.get(alg)
            if key is None:
                pem = shared_pem(f"{self.name}-{alg}.pem", lambda: SigningKey.generate(alg).private_pem())
                key = SigningKey.from_pem(pem) if pem is not None else SigningKey.generate(alg)
                self._generated[alg] = key
            return key

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        now = self._clock()
        with self._lock:
            for kid in [k for k, (_, until) in self._retiring.items() if until <= now]:
                del self._retiring[kid]
            keys = [self._active] if self._active else []
            keys += self._published
            keys += [k for k, _ in self._retiring.values()]
        seen: set[str] = set()
        out = []
        for key in keys:
            if key.kid not in seen:
                seen.add(key.kid)
                out.append(key.public_jwk())
        return {"keys": out}


class AssertionSigner:
    """Signs one assertion per request with the ring's active key."""

    def __init__(self, *, issuer: str, keyring: KeyRing, lifetime: int = DEFAULT_LIFETIME,
                 audience: str | None = None, clock: Callable[[], float] = time.time) -> None:
        if keyring.active is None:
            raise ValueError("the key ring has no active key")
        self.issuer = issuer
        self.keyring = keyring
        self.lifetime = lifetime
        self.audience = audience
        self._clock = clock
        self._headers: dict[str, str] = {}  # kid -> encoded protected header
        # binding "caller": id(principal) -> (principal, assertion, re-sign after, kid)
        self._caller_tokens: dict[int, tuple[Principal, str, float, str]] = {}
        self.max_callers = 65536

    def _header(self, key: SigningKey) -> str:
        encoded = self._headers.get(key.kid)
        if encoded is None:
            header = {"alg": key.alg, "kid": key.kid, "typ": ASSERTION_TYP}
            encoded = self._headers[key.kid] = b64url_encode(dump_json(header))
        return encoded

    def claims(self, principal: Principal, request: Request) -> dict[str, Any]:
        """The claims ``sign`` would sign now (with a fresh ``jti``), as a dict."""
        claims: dict[str, Any] = json.loads(
            self._payload(self.principal_claims(principal), int(self._clock()), request))
        return claims

    def principal_claims(self, principal: Principal) -> str:
        """The claims that depend only on the caller, as JSON members without braces: computed
        once per verified principal (callers cache it), so a signature costs little else."""
        claims: dict[str, Any] = {"iss": self.issuer}
        if self.audience:
            claims["aud"] = self.audience
        claims.update(sub=principal.subject, cred=principal.credential)
        for name, value in (("idp", principal.issuer), ("client", principal.client),
                            ("email", principal.email), ("tenant", principal.tenant)):
            if value:
                claims[name] = value
        if principal.roles:
            claims["roles"] = sorted(principal.roles)
        if principal.scopes:
            claims["scope"] = " ".join(sorted(principal.scopes))
        return dump_json(claims).decode()[1:-1]

    def _payload(self, principal_claims: str, now: int, request: Request | None) -> str:
        """The JSON claims: the caller's, the times, a fresh ``jti`` and (request binding) ``req``."""
        req = "" if request is None else (
            f',"req":{{"method":{_json_str(request.method)},"host":{_json_str(request.host)},'
            f'"path":{_json_str(request.path_only)},"id":{_json_str(request.id)}}}')
        return (f'{{{principal_claims},"iat":{now},"exp":{now + self.lifetime},'
                f'"jti":"{secrets.token_urlsafe(16)}"{req}}}')

    def sign(self, principal: Principal, request: Request, principal_claims: str | None = None
             ) -> str:
        """The compact JWS for ``request`` made by ``principal``; pass ``principal_claims``
        (from ``principal_claims``) to skip re-encoding what does not change per request."""
        key = self.keyring.active
        assert key is not None
        if principal_claims is None:
            principal_claims = self.principal_claims(principal)
        return self._compact(key, self._payload(principal_claims, int(self._clock()), request).encode())

    def _compact(self, key: SigningKey, payload: bytes) -> str:
        signing_input = f"{self._header(key)}.{b64url_encode(payload)}"
        signature = sign(ALGORITHMS[key.alg], key.private_key, signing_input.encode("ascii"))
        return f"{signing_input}.{b64url_encode(signature)}"

    def sign_for_caller(self, principal: Principal, principal_claims: str | None = None,
                        on_sign: Callable[[], None] | None = None) -> str:
        """An assertion about ``principal`` alone (no ``req`` claim), signed once and reused
        until half its lifetime is gone (``binding: caller``)."""
        now = self._clock()
        entry = self._caller_tokens.get(id(principal))
        key = self.keyring.active
        assert key is not None
        if entry is not None and entry[0] is principal and now < entry[2] and entry[3] == key.kid:
            return entry[1]
        if principal_claims is None:
            principal_claims = self.principal_claims(principal)
        iat = int(now)
        token = self._compact(key, self._payload(principal_claims, iat, None).encode())
        if on_sign is not None:
            on_sign()
        if len(self._caller_tokens) >= self.max_callers:
            self._caller_tokens.clear()  # live callers are re-signed on their next request
        # The entry holds ``principal``, so its id is not reused while the entry lives.
        self._caller_tokens[id(principal)] = (principal, token, iat + self.lifetime / 2, key.kid)
        return token

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return self.keyring.jwks()


# --- verification (backend side) -----------------------------------------------------------------

class _UrlKeys:
    """JWKS fetched from a URL with urllib: cached ``ttl`` seconds, refetched on an unknown kid
    at most every ``refetch_interval`` seconds, last good keys kept when a fetch fails."""

    def __init__(self, url: str, *, ttl: float = 300.0, refetch_interval: float = 5.0,
                 timeout: float = 3.0, max_bytes: int = 256 * 1024) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("jwks_url must be an http(s) URL")
        self.url = url
        self.ttl = ttl
        self.refetch_interval = refetch_interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = threading.Lock()

    def keys(self, kid: str | None, now: float) -> KeySet | None:
        keys = self._keys
        stale = now - self._fetched_at >= self.ttl
        if keys is not None and not stale and keys.has_kid(kid):
            return keys
        with self._lock:  # one fetch at a time; waiters then see its result
            keys = self._keys
            if keys is not None and now - self._fetched_at < self.ttl and keys.has_kid(kid):
                return keys
            if now - self._attempted_at >= self.refetch_interval:
                self._attempted_at = now
                self._fetch(now)
            return self._keys

    def _fetch(self, now: float) -> None:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # scheme checked in __init__
                data = resp.read(self.max_bytes + 1)
            if len(data) > self.max_bytes:
                raise ValueError("JWKS too large")
            keys, _ = parse_jwks(json.loads(data))
        except (OSError, ValueError, JoseError, urllib.error.URLError) as exc:
            log.warning("fetching %s failed: %s; keeping the last good keys", self.url, exc)
            return
        self._keys, self._fetched_at = keys, now


_URL_KEYS: dict[str, _UrlKeys] = {}
_URL_KEYS_LOCK = threading.Lock()


def _url_keys(url: str) -> _UrlKeys:
    with _URL_KEYS_LOCK:
        source = _URL_KEYS.get(url)
        if source is None:
            source = _URL_KEYS[url] = _UrlKeys(url)
        return source


class AssertionVerifier:
    """Reusable verifier (parses a static JWKS once). ``verify()`` below is the one-call form."""

    def __init__(self, *, issuer: str, jwks: Mapping[str, Any] | str | None = None,
                 jwks_url: str | None = None, audience: str | None = None,
                 leeway: float = 5.0, algorithms: Sequence[str] = SIGNING_ALGORITHMS,
                 max_bytes: int = MAX_ASSERTION_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        if (jwks is None) == (jwks_url is None):
            raise ValueError("pass exactly one of jwks and jwks_url")
        if not issuer:
            raise ValueError("issuer is required")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.algorithms = {a: ALGORITHMS[a] for a in algorithms if a in SIGNING_ALGORITHMS}
        if not self.algorithms:
            raise ValueError(f"algorithms must be among {SIGNING_ALGORITHMS}")
        self.max_bytes = max_bytes
        self._clock = clock
        self._static: KeySet | None = None
        self._remote = _url_keys(jwks_url) if jwks_url is not None else None
        if jwks is not None:
            document = json.loads(jwks) if isinstance(jwks, str) else jwks
            self._static, problems = parse_jwks(document)
            if problems:
                log.warning("ignoring unusable assertion keys: %s", "; ".join(problems))

    def verify(self, token: str, *, method: str | None = None, host: str | None = None,
               path: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        now = self._clock()
        try:
            jws = split_compact(token, max_bytes=self.max_bytes)
        except JoseError as exc:
            raise InvalidAssertion(f"assertion.{exc.code}", "not a well-formed assertion") from None
        header, claims = jws.header, jws.payload
        alg_name = header.get("alg")
        alg = self.algorithms.get(alg_name) if isinstance(alg_name, str) else None
        if alg is None:
            raise InvalidAssertion("assertion.alg_not_allowed", "signing algorithm not allowed")
        if "crit" in header:
            raise InvalidAssertion("assertion.crit_unsupported", "unsupported crit extension")
        if header.get("typ") != ASSERTION_TYP:
            raise InvalidAssertion("assertion.bad_type", f"typ is not {ASSERTION_TYP}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidAssertion("assertion.malformed", "no kid")
        if self._remote is not None:
            keys = self._remote.keys(kid, now)
            if keys is None:
                raise InvalidAssertion("assertion.keys_unavailable", "cannot fetch the JWKS")
        else:
            assert self._static is not None
            keys = self._static
        key = keys.find(kid, alg)
        if key is None:
            raise InvalidAssertion("assertion.unknown_kid", "signing key not known")
        try:
            verify_signature(alg, key, jws.signing_input, jws.signature)
        except JoseError:
            raise InvalidAssertion("assertion.bad_signature", "signature does not verify") from None

        if claims.get("iss") != self.issuer:
            raise InvalidAssertion("assertion.bad_issuer", "issued by someone else")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not is_number(exp) or not is_number(iat):
            raise InvalidAssertion("assertion.missing_claim", "exp and iat are required")
        if now >= exp + self.leeway:
            raise InvalidAssertion("assertion.expired", "the assertion has expired")
        if iat > now + self.leeway:
            raise InvalidAssertion("assertion.issued_in_future", "iat is in the future")
        aud = claims.get("aud")
        if self.audience is not None:
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if self.audience not in auds:
                raise InvalidAssertion("assertion.bad_audience", "not for this audience")
        elif aud is not None:
            raise InvalidAssertion("assertion.bad_audience",
                                   "the assertion names an audience; pass audience= to accept it")
        if not isinstance(claims.get("sub"), str):
            raise InvalidAssertion("assertion.missing_claim", "sub is required")
        _check_binding(claims.get("req"), method=method, host=host, path=path,
                       request_id=request_id)
        return claims


def _check_binding(req: Any, *, method: str | None, host: str | None, path: str | None,
                   request_id: str | None) -> None:
    if not isinstance(req, dict):
        if any(v is not None for v in (method, host, path, request_id)):
            raise InvalidAssertion("assertion.missing_claim", "no request binding")
        return
    expected = {
        "method": method.upper() if method is not None else None,
        "host": host.lower() if host is not None else None,
        "path": path.split("?", 1)[0] if path is not None else None,
        "id": request_id,
    }
    for name, want in expected.items():
        if want is None:
            continue
        got = req.get(name)
        if isinstance(got, str) and name == "method":
            got = got.upper()
        elif isinstance(got, str) and name == "host":
            got = got.lower()
        if got != want:
            raise InvalidAssertion("assertion.binding_mismatch",
                                   f"the assertion is for another request ({name} differs)",
                                   field=name)


def verify(token: str, *, issuer: str, jwks: Mapping[str, Any] | str | None = None,
           jwks_url: str | None = None, audience: str | None = None, method: str | None = None,
           host: str | None = None, path: str | None = None, request_id: str | None = None,
           leeway: float = 5.0, algorithms: Sequence[str] = SIGNING_ALGORITHMS,
           now: float | None = None) -> dict[str, Any]:
    """Verify an identity assertion and return its claims, or raise ``InvalidAssertion``.

    Give the sidecar's JWKS as ``jwks`` (a dict or JSON text) or ``jwks_url`` (fetched with
    urllib and cached per URL in this process). Each of ``method``, ``host``, ``path`` and
    ``request_id`` that is given must match the request the assertion was signed for.
    """
    verifier = AssertionVerifier(issuer=issuer, jwks=jwks, jwks_url=jwks_url, audience=audience,
                                 leeway=leeway, algorithms=algorithms,
                                 clock=(lambda: now) if now is not None else time.time)
    return verifier.verify(token, method=method, host=host, path=path, request_id=request_id)
