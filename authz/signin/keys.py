"""The authorization server's signing keys, and the identity issuer that verifies its tokens.

The key ring is the runtime's (``assembly.Shared.signin_keys``) and outlives config reloads (as
the assertion keys do): a generated key survives a reload, and a key file rotated in place keeps
the old key published while its tokens live. Keys are installed into it only when a pipeline is
built from a config that passed validation, never while a config is being validated.
"""

from __future__ import annotations

import logging

from authz.identity.assertion import KeyRing, SigningKey
from authz.identity.config import ClaimsMapping, IdentityConfig, IssuerConfig
from authz.signin.config import SigninConfig

log = logging.getLogger("authz.signin")

SIGNIN_ISSUER = "signin"  # the name of the sidecar's own issuer in identity.issuers (and of its shared keys)

def install_keys(cfg: SigninConfig, ring: KeyRing) -> KeyRing:
    keys = cfg.signing_keys()
    if keys:
        active, published = keys[0], keys[1:]
    else:
        active, published = ring.generated(cfg.algorithm), []
    ring.install(active, published, retire_after=cfg.access_token_seconds + 60)
    return ring


def active_key(ring: KeyRing) -> SigningKey:
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
    # Validation checks the keys load; the issuer's key set is filled from the runtime's ring by
    # ``with_signin_keys`` when a pipeline is built.
    issuer = IssuerConfig(
        name=SIGNIN_ISSUER, issuer=signin.issuer, audiences=resources(signin, identity),
        algorithms=(signin.algorithm,), typ="at+jwt", leeway_seconds=5,
        jwks=install_keys(signin, KeyRing(name=SIGNIN_ISSUER)).jwks(),
        required_claims=("client_id", "jti"),
        claims=ClaimsMapping(subject="sub", email="email", roles=("roles",), scopes=("scope",),
                             client=("client_id",)))
    metadata = identity.metadata
    if not metadata.authorization_servers:
        metadata = metadata.model_copy(update={"authorization_servers": (signin.issuer,)})
    return identity.model_copy(update={"issuers": (*identity.issuers, issuer), "metadata": metadata})


def with_signin_keys(identity: IdentityConfig, signin: SigninConfig, ring: KeyRing) -> IdentityConfig:
    """Install the sign-in keys into the runtime's ``ring`` and have the sidecar's own issuer
    (added by ``with_signin_issuer`` at validation) trust exactly what the ring publishes."""
    jwks = install_keys(signin, ring).jwks()
    issuers = tuple(i.model_copy(update={"jwks": jwks}) if i.name == SIGNIN_ISSUER and i.issuer == signin.issuer
                    else i for i in identity.issuers)
    return identity.model_copy(update={"issuers": issuers})
