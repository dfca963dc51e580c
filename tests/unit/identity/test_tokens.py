"""Token verification rules beyond the hostile suite: leeway, typ, per-issuer allow-lists,
required claims, audiences, and the cache in front of it all."""

from __future__ import annotations

import time

import pytest
from identity_helpers import RESOURCE, FakeClock

from authz.identity import errors
from authz.identity.cache import TokenCache
from authz.identity.config import IssuerConfig
from authz.identity.jose import KeySet, parse_jwk, public_jwk
from authz.identity.jwks import StaticKeySource
from authz.identity.testing import FakeIssuer
from authz.identity.tokens import IssuerVerifier, TokenVerifier, normalise_typ


@pytest.fixture
def issuer():
    idp = FakeIssuer(audience=RESOURCE)
    idp.issuer = "https://idp.example"
    return idp


def verifier(idp: FakeIssuer, clock=None, cache=None, **cfg) -> TokenVerifier:
    c = IssuerConfig(name="idp", issuer=idp.issuer, audiences=(RESOURCE,), **cfg)
    keys = KeySet([parse_jwk({**public_jwk(k), "kid": kid}) for kid, (_, k) in idp.keys.items()])
    iv = IssuerVerifier(c, audiences=c.audiences, keys=StaticKeySource("idp", keys))
    return TokenVerifier([iv], max_token_bytes=16384, cache=cache, clock=clock or time.time)


async def test_a_valid_token_gives_a_principal(issuer):
    v = verifier(issuer)
    result = await v.verify(issuer.mint(sub="alice", email="a@example.com", roles=["admin"]))
    p = result.principal
    assert (p.subject, p.issuer, p.email, p.client, p.credential) == (
        "alice", issuer.issuer, "a@example.com", "chatgpt", "jwt")
    assert p.roles == {"admin"} and p.scopes == {"mcp:tools"}
    assert result.issuer_name == "idp" and not result.cache_hit


async def test_leeway_applies_to_exp_nbf_and_iat(issuer):
    clock = FakeClock()
    now = int(clock.now)
    lenient, strict = verifier(issuer, clock, leeway_seconds=30), verifier(issuer, clock, leeway_seconds=0)
    token = issuer.mint(exp=now - 10, nbf=now + 10, iat=now + 10)
    await lenient.verify(token)
    with pytest.raises(errors.TokenExpired):
        await strict.verify(token)
    with pytest.raises(errors.TokenNotYetValid):
        await strict.verify(issuer.mint(nbf=now + 10))
    with pytest.raises(errors.TokenIssuedInFuture):
        await strict.verify(issuer.mint(iat=now + 10))
    with pytest.raises(errors.TokenExpired):  # exp == now is already expired
        await strict.verify(issuer.mint(exp=now, iat=now - 5))


@pytest.mark.parametrize(("typ", "ok"), [("at+jwt", True), ("application/at+JWT", True),
                                         ("JWT", False), (None, False)])
async def test_typ_when_the_issuer_requires_it(issuer, typ, ok):
    v = verifier(issuer, typ="at+jwt")
    token = issuer.mint(header={"typ": typ} if typ else {"typ": None})
    if ok:
        await v.verify(token)
    else:
        with pytest.raises(errors.TokenBadType):
            await v.verify(token)


async def test_an_assertion_typ_is_never_an_access_token(issuer):
    with pytest.raises(errors.TokenBadType):
        await verifier(issuer).verify(issuer.mint(header={"typ": "authz-assertion+jwt"}))


def test_normalise_typ():
    assert normalise_typ("Application/AT+JWT") == "at+jwt"


async def test_per_issuer_algorithm_allow_list(issuer):
    v = verifier(issuer, algorithms=("ES256",))
    with pytest.raises(errors.TokenAlgNotAllowed):
        await v.verify(issuer.mint())
    kid = issuer.rotate(alg="ES256")
    await verifier(issuer, algorithms=("ES256",)).verify(issuer.mint(kid=kid))


async def test_required_claims(issuer):
    v = verifier(issuer, required_claims=("email",))
    with pytest.raises(errors.TokenMissingClaim) as info:
        await v.verify(issuer.mint())
    assert "email" in info.value.message
    await v.verify(issuer.mint(email="a@example.com"))


async def test_audience_list_and_opt_out(issuer):
    v = verifier(issuer)
    await v.verify(issuer.mint(aud=["https://other", RESOURCE]))
    with pytest.raises(errors.TokenInvalidClaim):
        await v.verify(issuer.mint(aud=[RESOURCE, 5]))
    await verifier(issuer, verify_audience=False).verify(issuer.mint(aud="https://anything"))


async def test_iss_is_required(issuer):
    with pytest.raises(errors.TokenMissingClaim):
        await verifier(issuer).verify(issuer.mint(iss=None))


async def test_kid_less_token_uses_the_only_key(issuer):
    v = verifier(issuer)
    await v.verify(issuer.mint(header={"kid": None}))
    issuer.rotate()
    with pytest.raises(errors.TokenUnknownKid):  # two keys: the token has to name one
        await verifier(issuer).verify(issuer.mint(header={"kid": None}))


async def test_cache_hit_skips_verification_until_exp(issuer):
    clock = FakeClock()
    cache = TokenCache(100, max_ttl=600, clock=clock)
    v = verifier(issuer, clock, cache)
    token = issuer.mint(exp=int(clock.now) + 60)
    first = await v.verify(token)
    second = await v.verify(token)
    assert second.cache_hit and second.principal is first.principal
    assert second.issuer_name == "idp"
    clock.advance(61)
    with pytest.raises(errors.TokenExpired):  # the entry died at exp; leeway 0 rejects now
        await verifier(issuer, clock, cache, leeway_seconds=0).verify(token)


async def test_rejections_are_not_cached(issuer):
    cache = TokenCache(100)
    v = verifier(issuer, cache=cache)
    with pytest.raises(errors.TokenBadAudience):
        await v.verify(issuer.mint(aud="https://other"))
    assert len(cache) == 0


async def test_oversized_tokens_never_reach_the_cache(issuer):
    cache = TokenCache(100)
    v = verifier(issuer, cache=cache)
    with pytest.raises(errors.TokenTooLarge):
        await v.verify("a" * 20000)


async def test_unknown_issuer_when_none_configured(issuer):
    v = TokenVerifier([], max_token_bytes=16384)
    with pytest.raises(errors.TokenUnknownIssuer):
        await v.verify(issuer.mint())
