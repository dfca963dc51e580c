"""The authorization server's signing keys, and the identity issuer that verifies its tokens.

The key ring outlives config reloads (as the assertion keys do): a generated key survives a
reload, and a key file rotated in place keeps the old key published while its tokens live.
"""

from __future__ import annotations

import logging

from authz.identity.assertion import KeyRing, SigningKey
from authz.identity.config import ClaimsMapping, IdentityConfig, IssuerConfig
from authz.signin.config import SigninConfig

log = logging.getLogger("authz.signin")

SIGNIN_KEYRING = KeyRing(name="signin")


def install_keys(cfg: SigninConfig, ring: KeyRing = SIGNIN_KEYRING) -> KeyRing:
    keys = cfg.signing_keys()
    if keys:
        active, published = keys[0], keys[1:]
    else:
        active, published = ring.generated(cfg.algorithm), []
    ring.install(active, published, retire_after=cfg.access_token_seconds + 60)
    return ring


def active_key(ring: KeyRing = SIGNIN_KEYRING) -> SigningKey:
    key = ring.active
    assert key is not None, "signin keys not installed"
    return key


def resources(signin: SigninConfig, identity: IdentityConfig) -> tuple[str, ...]:
    if signin.resources:
        return signin.resources
    return (identity.resource,) if identity.resource else ()


def with_signin_issuer(identity: IdentityConfig, signin: SigninConfig) -> IdentityConfig:
    """The identity section with the sidecar's own tokens as one more issuer, and the
    protected-resource metadata naming this authorization server first."""
    if not resources(signin, identity):
        raise ValueError("signin.resources is empty and identity.resource is not set: "
                         "name the resource tokens are for")
    if any(i.issuer == signin.issuer for i in identity.issuers):
        raise ValueError("signin.issuer is also configured in identity.issuers: leave it out, "
                         "the sidecar adds its own issuer")
    ring = install_keys(signin)
    issuer = IssuerConfig(
        name="signin", issuer=signin.issuer, audiences=resources(signin, identity),
        algorithms=(signin.algorithm,), typ="at+jwt", jwks=ring.jwks(), leeway_seconds=5,
        required_claims=("client_id", "jti"),
        claims=ClaimsMapping(subject="sub", email="email", roles=("roles",), scopes=("scope",),
                             client=("client_id",)))
    metadata = identity.metadata
    if not metadata.authorization_servers:
        metadata = metadata.model_copy(update={"authorization_servers": (signin.issuer,)})
    return identity.model_copy(update={"issuers": (*identity.issuers, issuer), "metadata": metadata})
