"""The ``signin:`` section: the sidecar as the OAuth 2.1 authorization server MCP clients sign in
with, bridged to the company's own OIDC provider (the "upstream").

Off by default. When on, the sidecar's own access tokens are verified by the identity stage as
one more issuer (``signin_issuer``), and the protected-resource metadata names this server.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from authz.identity.assertion import SigningKey
from authz.identity.config import check_fetch_url
from authz.schema import Model

_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 scope-token


def check_scope_token(value: str) -> str:
    if not _SCOPE.match(value):
        raise ValueError(f"not a valid scope token: {value!r}")
    return value


class UpstreamClaims(Model):
    """Where the user's fields come from in the upstream's ID token (and userinfo answer)."""

    subject: str = "sub"
    email: str | None = "email"
    name: str | None = "name"
    roles: tuple[str, ...] = ("roles",)  # merged; dotted paths into nested objects allowed


class UpstreamConfig(Model):
    """The company's identity provider, with a client pre-registered there for this sidecar
    (redirect URI: ``<signin.issuer>/oauth/callback``).

    ``kind: oidc`` (the default) finds its endpoints by discovery and verifies the ID token;
    ``kind: oauth2`` is for plain OAuth 2.0 providers without ID tokens (GitHub): the three
    endpoints are named here and the user comes from the userinfo endpoint alone."""

    kind: Literal["oidc", "oauth2"] = "oidc"
    issuer: str
    authorization_endpoint: str | None = None  # oauth2: required; oidc: from discovery
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    client_id: str = Field(min_length=1)
    client_secret: str = ""  # empty: a public client (PKCE only)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    discovery_url: str | None = None  # default: <issuer>/.well-known/openid-configuration
    userinfo: bool = False  # also read the userinfo endpoint (claims merged over the ID token's)
    allow_http: bool = False  # plain http only for loopback unless this is set
    timeout_seconds: float = Field(10, gt=0, le=60)
    claims: UpstreamClaims = UpstreamClaims()

    @model_validator(mode="after")
    def _urls(self) -> UpstreamConfig:
        if self.kind == "oidc":
            check_fetch_url(self.effective_discovery_url, allow_http=self.allow_http)
        else:
            missing = [n for n in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint")
                       if getattr(self, n) is None]
            if missing:
                raise ValueError(f"kind oauth2 needs {', '.join(missing)}")
        for url in (self.authorization_endpoint, self.token_endpoint, self.userinfo_endpoint):
            if url is not None:
                check_fetch_url(url, allow_http=self.allow_http)
        return self

    @property
    def effective_discovery_url(self) -> str:
        return self.discovery_url or self.issuer.rstrip("/") + "/.well-known/openid-configuration"


class RegistrationConfig(Model):
    """RFC 7591 dynamic client registration."""

    enabled: bool = True
    per_address_per_minute: int = Field(10, ge=1, le=100_000)  # by the peer address Envoy saw
    per_hour: int = Field(1000, ge=1, le=10_000_000)  # all addresses together
    client_lifetime_seconds: int = Field(90 * 86400, ge=3600)  # an unused registration expires
    max_redirect_uris: int = Field(10, ge=1, le=100)
    max_body_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)


class ClientMetadataDocumentsConfig(Model):
    """Client ID Metadata Documents: a ``client_id`` that is an HTTPS URL names its own metadata."""

    enabled: bool = True
    timeout_seconds: float = Field(3, gt=0, le=30)
    max_bytes: int = Field(5 * 1024, ge=512, le=256 * 1024)
    cache_seconds: int = Field(300, ge=0, le=86400)  # when the document says nothing (max: a day)
    # Tests only: fetch from loopback/private addresses and trust this CA bundle.
    allow_private_addresses: bool = False
    ca_file: str | None = None


class SigninConfig(Model):
    enabled: bool = False
    # The authorization server's issuer identifier: its public URL as clients reach it through
    # Envoy (metadata at <issuer>/.well-known/oauth-authorization-server, endpoints under
    # <issuer>/oauth/). Never derived from a request's Host header.
    issuer: str = ""
    # The resources tokens may be asked for (RFC 8707); default: identity.resource.
    resources: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()  # what clients may ask for; empty: any
    scope_descriptions: dict[str, str] = {}  # shown on the consent page
    # Signing keys (PEM, ES256 or Ed25519): the first signs, all are published. Empty: a key
    # generated in memory (one replica, and tokens die with the process).
    key_files: tuple[str, ...] = ()
    algorithm: Literal["ES256", "EdDSA"] = "ES256"
    access_token_seconds: int = Field(300, ge=30, le=86400)
    code_seconds: int = Field(60, ge=10, le=600)
    login_seconds: int = Field(600, ge=60, le=3600)  # from /authorize to the consent answer
    authorize_per_address_per_minute: int = Field(60, ge=1, le=100_000)  # each one is a record in the store
    refresh_tokens: Literal["always", "offline_access", "never"] = "always"
    refresh_token_seconds: int = Field(30 * 86400, ge=300, le=365 * 86400)  # a family's lifetime
    upstream: UpstreamConfig | None = None
    registration: RegistrationConfig = RegistrationConfig()
    client_metadata_documents: ClientMetadataDocumentsConfig = ClientMetadataDocumentsConfig()

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        if v:
            parts = urlsplit(v)
            if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
                raise ValueError("must be an absolute http(s) URL without query or fragment (RFC 8414)")
            if parts.path.strip("/"):
                raise ValueError("must be an origin without a path (the endpoints are served under /oauth/)")
        return v.rstrip("/")

    @field_validator("scopes_supported")
    @classmethod
    def _scopes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_scope_token(s) for s in v)

    @model_validator(mode="after")
    def _complete(self) -> SigninConfig:
        if not self.enabled:
            return self
        if not self.issuer:
            raise ValueError("signin.issuer is required when signin is enabled")
        if self.upstream is None:
            raise ValueError("signin.upstream is required when signin is enabled")
        keys = self.signing_keys()
        if keys and keys[0].alg != self.algorithm:
            raise ValueError(f"key_files[0] is a {keys[0].alg} key but algorithm is {self.algorithm}")
        return self

    def signing_keys(self) -> list[SigningKey]:
        keys = []
        for index, path in enumerate(self.key_files):
            try:
                keys.append(SigningKey.from_pem(Path(path).read_bytes()))
            except OSError as exc:
                raise ValueError(f"key_files[{index}]: cannot read {path}: {exc.strerror or exc}") from None
            except ValueError as exc:
                raise ValueError(f"key_files[{index}]: {exc}") from None
        return keys
