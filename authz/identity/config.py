"""The ``identity:`` section of the policy file.

Secure by default: ``iss`` and ``aud`` are always checked (an issuer without audiences takes the
protected ``resource`` URI as its audience, and a config with neither is refused), ``exp`` is
always required, only asymmetric algorithms can be named, remote key URLs must be HTTPS (plain
HTTP only for loopback addresses or with ``allow_http: true``), and with no issuer configured
every request that needs a token is answered 401.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from authz.identity import jose
from authz.identity.assertion import SigningKey
from authz.schema import Model

AlgorithmName = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                        "EdDSA"]
ALL_ALGORITHMS: tuple[AlgorithmName, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                             "ES256", "ES384", "EdDSA")

_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*$")
_PROTECTED_HEADERS = {"authorization", "host", "content-length", "transfer-encoding",
                      "connection", "te", "upgrade", "cookie"}


def is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_fetch_url(url: str, *, allow_http: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.scheme == "http" and not allow_http and not is_loopback_url(url):
        raise ValueError("must use https (set allow_http: true to allow plain http)")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    return url


def _label(value: str) -> str:
    if not _LABEL.match(value):
        raise ValueError("use 1-64 letters, digits, '_', '.' or '-'")
    return value


Label = Annotated[str, AfterValidator(_label)]  # names used as metric labels: bounded


def _header_name(value: str) -> str:
    value = value.strip().lower()
    if not _HEADER_NAME.match(value) or value.startswith(":"):
        raise ValueError(f"not a valid header name: {value!r}")
    return value


def _path_prefix(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"path prefixes start with '/': {value!r}")
    if any(seg in (".", "..") for seg in value.split("/")) or "%" in value or "\\" in value:
        raise ValueError(f"path prefix must be a plain normalised path: {value!r}")
    return value


class ClaimsMapping(Model):
    """Where the principal's fields come from. A path is a claim name, or dotted names into
    nested objects (``realm_access.roles``); a claim name that itself contains dots (Auth0's
    ``https://example.com/roles``) is found as written before the path is split."""

    subject: str = "sub"
    email: str | None = "email"
    tenant: str | None = None  # e.g. org_id, tid, tenant
    roles: tuple[str, ...] = ("roles",)  # merged; e.g. [realm_access.roles, permissions]
    scopes: tuple[str, ...] = ("scope", "scp")  # space-separated string or list; merged
    client: tuple[str, ...] = ("azp", "client_id")  # first present wins


class JwksSettings(Model):
    """How remote keys are cached and refreshed."""

    ttl_seconds: float = Field(600, gt=0, le=86400)  # when the server sends no max-age
    min_ttl_seconds: float = Field(60, ge=0, le=86400)
    max_ttl_seconds: float = Field(86400, gt=0, le=7 * 86400)
    # An unknown kid triggers a refetch at most this often per issuer, so a flood of random kids
    # cannot hammer the IdP; a failed fetch is retried no sooner either.
    refetch_interval_seconds: float = Field(15, ge=0, le=3600)
    timeout_seconds: float = Field(5, gt=0, le=60)
    max_bytes: int = Field(512 * 1024, ge=1024, le=16 * 1024 * 1024)

    @model_validator(mode="after")
    def _bounds(self) -> JwksSettings:
        if self.min_ttl_seconds > self.max_ttl_seconds:
            raise ValueError("min_ttl_seconds is larger than max_ttl_seconds")
        return self


class PemKey(Model):
    """A static public key in PEM, inline or from a file; ``kid`` is what tokens name it by
    (tokens without a kid match a kid-less key when it is the only one that fits)."""

    pem: str | None = None
    file: str | None = None
    kid: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PemKey:
        if (self.pem is None) == (self.file is None):
            raise ValueError("set exactly one of pem or file")
        try:
            jose.load_public_pem(self.read(), kid=self.kid)
        except jose.JoseError as exc:
            raise ValueError(exc.detail or exc.code) from None
        return self

    def read(self) -> bytes:
        if self.pem is not None:
            return self.pem.encode()
        assert self.file is not None
        try:
            return Path(self.file).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {self.file}: {exc.strerror or exc}") from None


class IssuerConfig(Model):
    """One trusted token issuer. Its keys come from exactly one of: ``discovery_url``,
    ``jwks_uri``, ``jwks`` (inline), ``jwks_file``, ``pem_keys``; none of them means OIDC
    discovery at ``<issuer>/.well-known/openid-configuration``."""

    name: Label  # a short label for metrics and logs (bounded, unlike URLs)
    issuer: str  # the exact "iss" value
    audiences: tuple[str, ...] = ()  # default: the identity section's resource URI
    verify_audience: bool = True
    algorithms: tuple[AlgorithmName, ...] = ALL_ALGORITHMS
    typ: str | None = None  # e.g. "at+jwt" (RFC 9068); case-insensitive, "application/" optional
    required_claims: tuple[str, ...] = ()  # in addition to iss, exp and the subject claim
    leeway_seconds: float = Field(30, ge=0, le=300)
    # exp - iat (or exp - now without iat) beyond this is refused: a correctly signed token
    # that never expires is as good as a stolen password.
    max_token_lifetime_seconds: int = Field(24 * 3600, ge=60, le=366 * 24 * 3600)
    discovery_url: str | None = None
    jwks_uri: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_file: str | None = None
    pem_keys: tuple[PemKey, ...] = ()
    allow_http: bool = False
    jwks_cache: JwksSettings = JwksSettings()
    claims: ClaimsMapping = ClaimsMapping()

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        if not v or len(v) > 2048:
            raise ValueError("must be a non-empty string")
        return v

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("allow at least one algorithm")
        return v

    @field_validator("jwks")
    @classmethod
    def _inline_jwks(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            _check_jwks_document(v)
        return v

    @field_validator("jwks_file")
    @classmethod
    def _jwks_file(cls, v: str | None) -> str | None:
        if v is not None:
            _check_jwks_document(read_jwks_file(v))
        return v

    @model_validator(mode="after")
    def _key_source(self) -> IssuerConfig:
        sources = [n for n in ("discovery_url", "jwks_uri", "jwks", "jwks_file")
                   if getattr(self, n) is not None]
        if self.pem_keys:
            sources.append("pem_keys")
        if len(sources) > 1:
            raise ValueError(f"choose one key source, not {', '.join(sources)}")
        for url in (self.discovery_url, self.jwks_uri, self.effective_discovery_url):
            if url is not None:
                check_fetch_url(url, allow_http=self.allow_http)
        return self

    @property
    def effective_discovery_url(self) -> str | None:
        if self.discovery_url is not None:
            return self.discovery_url
        if (self.jwks_uri is None and self.jwks is None and self.jwks_file is None
                and not self.pem_keys):
            return self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        return None

    @property
    def remote(self) -> bool:
        return self.effective_discovery_url is not None or self.jwks_uri is not None


def read_jwks_file(path: str) -> dict[str, Any]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        document = json.loads(data)
    except ValueError:
        raise ValueError(f"{path} is not JSON") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a JWK set")
    return document


def _check_jwks_document(document: dict[str, Any]) -> None:
    try:
        keys, problems = jose.parse_jwks(document)
    except jose.JoseError as exc:
        raise ValueError(exc.detail or exc.code) from None
    if problems:
        raise ValueError("; ".join(problems))
    if not len(keys):
        raise ValueError("the JWK set has no keys")


class ApiKey(Model):
    """A service caller's key, stored as the SHA-256 hex digest of the key (never the key)."""

    name: Label  # label for logs and audit
    sha256: str
    subject: str
    email: str | None = None
    tenant: str | None = None
    client: str | None = None
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()

    @field_validator("sha256")
    @classmethod
    def _digest(cls, v: str) -> str:
        v = v.strip().lower().removeprefix("sha256:")
        if not _SHA256_HEX.match(v):
            raise ValueError("must be the 64-character hex SHA-256 of the key")
        return v


class ApiKeysConfig(Model):
    """API keys are accepted only when at least one key is configured or ``store: redis``, so
    an LLM client's own ``x-api-key`` for an upstream provider is left alone on deployments that
    do not use them.

    ``store: redis`` also looks keys up in Redis (``authz apikeys add``), after ``keys``: a hash
    at ``<store.key_prefix>apikey:<sha256 of the key>``; it needs ``store.redis_url``. Lookups
    are cached in-process: a found key for ``cache_seconds`` (so a revoked key may still pass
    for that long), an unknown one for ``negative_cache_seconds`` (a flood of random keys costs
    Redis one lookup per key and period, not one per request), each cache up to
    ``cache_max_entries``."""

    header: str = "x-api-key"
    scheme: str = "ApiKey"  # also accepted as "Authorization: ApiKey <key>"
    keys: tuple[ApiKey, ...] = ()
    store: Literal["config", "redis"] = "config"
    cache_seconds: float = Field(30, ge=0, le=3600)
    negative_cache_seconds: float = Field(5, ge=0, le=3600)
    cache_max_entries: int = Field(10_000, ge=1, le=1_000_000)

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        return _header_name(v)

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not _SCHEME.match(v) or v.lower() == "bearer":
            raise ValueError("must be an HTTP auth scheme name other than Bearer")
        return v

    @field_validator("keys")
    @classmethod
    def _unique(cls, v: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        for attr in ("name", "sha256"):
            values = [getattr(k, attr) for k in v]
            if len(set(values)) != len(values):
                raise ValueError(f"two keys share a {attr}")
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.store == "redis"


def hash_api_key(key: str) -> str:
    """The digest to put in ``api_keys.keys[].sha256`` for a key."""
    return hashlib.sha256(key.encode()).hexdigest()


class HeaderNames(Model):
    """Headers the sidecar owns. All of them (and ``strip``) are removed from every incoming
    request before the verified values are set, so a client cannot supply its own."""

    user: str = "x-authz-user"
    email: str = "x-authz-email"
    tenant: str = "x-authz-tenant"
    roles: str = "x-authz-roles"
    scopes: str = "x-authz-scopes"
    client: str = "x-authz-client"
    issuer: str = "x-authz-issuer"
    assertion: str = "x-authz-assertion"
    strip: tuple[str, ...] = ()  # more spoofable names, e.g. x-user-id, x-forwarded-user

    @field_validator("user", "email", "tenant", "roles", "scopes", "client", "issuer",
                     "assertion")
    @classmethod
    def _name(cls, v: str) -> str:
        v = _header_name(v)
        if v in _PROTECTED_HEADERS:
            raise ValueError(f"{v} cannot be an identity header")
        return v

    @field_validator("strip")
    @classmethod
    def _strip(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(_header_name(x) for x in v)
        bad = sorted(set(names) & _PROTECTED_HEADERS)
        if bad:
            raise ValueError(f"cannot strip {', '.join(bad)}")
        return names

    @model_validator(mode="after")
    def _distinct(self) -> HeaderNames:
        names = self.owned()
        if len(set(names)) != len(names):
            raise ValueError("two identity headers share a name")
        return self

    def owned(self) -> tuple[str, ...]:
        return (self.user, self.email, self.tenant, self.roles, self.scopes, self.client,
                self.issuer, self.assertion)


class AssertionConfig(Model):
    """The gateway-signed identity assertion sent to the backend in ``headers.assertion``.

    ``key_files`` are PEM private keys: the first signs, all are published in the JWKS (list the
    next key second to pre-publish it, or the previous one to keep it published). With no files
    an in-memory key is generated (logged as a warning): fine for one replica, but backends must
    then fetch the JWKS from the same sidecar that signed.
    """

    enabled: bool = True
    issuer: str = "urn:authz:sidecar"
    audience: str | None = None
    algorithm: Literal["ES256", "EdDSA"] = "ES256"  # the first key file must match it
    key_files: tuple[str, ...] = ()
    lifetime_seconds: int = Field(60, ge=5, le=3600)
    # request: one signature per request, bound to its method, host, path and request id (a
    #   captured assertion is good for nothing else); costs one ES256/EdDSA signature per request.
    # caller: one assertion per verified caller, re-signed when half its lifetime is gone and
    #   reused meanwhile (no ``req`` claim; bind it to the backend with ``audience``): what IAP-style
    #   gateways send, at the cost of a dictionary lookup.
    binding: Literal["request", "caller"] = "request"

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _keys(self) -> AssertionConfig:
        keys = self.signing_keys()
        if keys and keys[0].alg != self.algorithm:
            raise ValueError(f"key_files[0] is a {keys[0].alg} key but algorithm is "
                             f"{self.algorithm}")
        return self

    def signing_keys(self) -> list[SigningKey]:
        """The configured keys, first one active (read again at each build, so a rotated file
        is picked up on reload)."""
        keys = []
        for index, path in enumerate(self.key_files):
            try:
                keys.append(SigningKey.from_pem(Path(path).read_bytes()))
            except OSError as exc:
                raise ValueError(f"key_files[{index}]: cannot read {path}: "
                                 f"{exc.strerror or exc}") from None
            except ValueError as exc:
                raise ValueError(f"key_files[{index}]: {exc}") from None
        return keys


class TokenCacheConfig(Model):
    enabled: bool = True
    max_entries: int = Field(10_000, ge=1, le=1_000_000)
    # An entry never outlives the token's exp; this also bounds how long a key the IdP has
    # withdrawn keeps being honoured for tokens already seen.
    max_ttl_seconds: float = Field(300, gt=0, le=86400)


class ResourceMetadataConfig(Model):
    """Extra fields of the RFC 9728 Protected Resource Metadata document."""

    authorization_servers: tuple[str, ...] = ()  # default: every configured issuer
    scopes_supported: tuple[str, ...] = ()
    resource_name: str | None = None
    resource_documentation: str | None = None
    bearer_methods_supported: tuple[Literal["header"], ...] = ("header",)


class IdentityConfig(Model):
    """The ``identity:`` section."""

    enabled: bool = True
    # The canonical URI of the protected resource (the MCP server), e.g.
    # https://mcp.example.com/mcp. It is the default audience (RFC 8707) and the "resource" of
    # the metadata document.
    resource: str | None = None
    # Advertised in WWW-Authenticate; default derived from resource (RFC 9728 §3.1).
    resource_metadata_url: str | None = None
    challenge_scopes: tuple[str, ...] = ()  # scope="..." in 401 challenges (MCP 2025-11-25)
    issuers: tuple[IssuerConfig, ...] = ()
    api_keys: ApiKeysConfig = ApiKeysConfig()
    max_token_bytes: int = Field(16 * 1024, ge=512, le=1024 * 1024)
    anonymous_paths: tuple[str, ...] = ()  # path prefixes where no credential is needed
    passthrough_authorization_paths: tuple[str, ...] = ()  # keep Authorization upstream
    # Headers whose whole value is a bearer token, read like "Authorization: Bearer <value>":
    # e.g. x-api-key for Anthropic's SDK, which sends its key there. When one of them is also
    # the API-key header, a value shaped like a JWT (three dot-separated parts) is a token and
    # anything else an API key. Removed before the upstream like Authorization.
    token_headers: tuple[str, ...] = ()
    # /readyz fails while no issuer's keys could be fetched (every bearer token would be 503):
    # false keeps a replica ready for API keys or anonymous paths during an IdP outage.
    required_for_readiness: bool = True
    headers: HeaderNames = HeaderNames()
    assertion: AssertionConfig = AssertionConfig()
    token_cache: TokenCacheConfig = TokenCacheConfig()
    metadata: ResourceMetadataConfig = ResourceMetadataConfig()

    @field_validator("resource", "resource_metadata_url")
    @classmethod
    def _absolute_url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
                raise ValueError("must be an absolute http(s) URL without a fragment")
        return v

    @field_validator("anonymous_paths", "passthrough_authorization_paths")
    @classmethod
    def _prefixes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_path_prefix(p) for p in v)

    @field_validator("token_headers")
    @classmethod
    def _token_headers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(_header_name(n) for n in v))
        if "authorization" in names:
            raise ValueError("authorization is always read; list other headers")
        return names

    @field_validator("challenge_scopes")
    @classmethod
    def _scopes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for scope in v:
            if not scope or any(c in scope for c in ' "\\') or not scope.isprintable():
                raise ValueError(f"not a valid scope token: {scope!r}")
        return v

    @model_validator(mode="after")
    def _issuers(self) -> IdentityConfig:
        names = [i.name for i in self.issuers]
        if len(set(names)) != len(names):
            raise ValueError("two issuers share a name")
        values = [i.issuer for i in self.issuers]
        if len(set(values)) != len(values):
            raise ValueError("two issuers share an issuer value")
        for i in self.issuers:
            if i.verify_audience and not i.audiences and self.resource is None:
                raise ValueError(f"issuer {i.name}: set audiences (or identity.resource), or "
                                 "verify_audience: false")
        return self

    def audiences_for(self, issuer: IssuerConfig) -> tuple[str, ...]:
        if issuer.audiences:
            return issuer.audiences
        return (self.resource,) if self.resource else ()
