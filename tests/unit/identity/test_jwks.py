"""Remote keys over real HTTP: discovery, TTL, rotation, outage, kid floods, coalescing."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives import serialization
from identity_helpers import FakeClock

from authz import metrics
from authz.identity.config import IssuerConfig, JwksSettings
from authz.identity.errors import KeysUnavailable, TokenKeyMismatch, TokenUnknownKid
from authz.identity.jose import ALGORITHMS
from authz.identity.jwks import (
    HttpClient,
    RemoteKeySource,
    StaticKeySource,
    build_key_source,
    parse_max_age,
    static_keys,
)
from authz.identity.testing import FakeIssuer, generate_key

RS256 = ALGORITHMS["RS256"]


@pytest.fixture
async def http():
    client = HttpClient()
    yield client
    await client.close()


def source(idp: FakeIssuer, http: HttpClient, clock=None, *, discovery=True, **settings):
    s = {"refetch_interval_seconds": 10, "min_ttl_seconds": 60, **settings}
    return RemoteKeySource(
        name="test", issuer=idp.issuer,
        discovery_url=f"{idp.issuer}/.well-known/openid-configuration" if discovery else None,
        jwks_uri=None if discovery else f"{idp.issuer}/jwks",
        settings=JwksSettings(**s), http=http, clock=clock or FakeClock())


def fetches(result: str) -> float:
    return metrics.JWKS_FETCHES.labels(issuer="test", result=result)._value.get()


async def test_discovery_then_jwks_then_cached(idp, http):
    src = source(idp, http)
    key = await src.key_for(idp.current_kid, RS256)
    assert key.kid == idp.current_kid
    await src.key_for(idp.current_kid, RS256)
    assert idp.hits == {"/.well-known/openid-configuration": 1, "/jwks": 1}


async def test_explicit_jwks_uri_skips_discovery(idp, http):
    src = source(idp, http, discovery=False)
    await src.key_for(idp.current_kid, RS256)
    assert idp.hits == {"/jwks": 1}


async def test_ttl_follows_max_age_within_bounds_and_refreshes_in_background(idp, http):
    clock = FakeClock()
    idp.max_age = 5  # below min_ttl (60): clamped up
    src = source(idp, http, clock)
    await src.key_for(idp.current_kid, RS256)
    clock.advance(30)
    await src.key_for(idp.current_kid, RS256)
    assert idp.hits["/jwks"] == 1
    clock.advance(31)
    idp.delay = 0.2  # a slow IdP must not slow the request: the old keys answer
    await asyncio.wait_for(src.key_for(idp.current_kid, RS256), timeout=0.1)
    await asyncio.sleep(0.4)
    assert idp.hits["/jwks"] == 2


@pytest.mark.parametrize(("header", "expected"), [
    ("max-age=300", 300.0), ("public, max-age=60, must-revalidate", 60.0), ("no-store", 0.0),
    ("no-cache, max-age=100", 0.0), ("", None), ("s-maxage=5", None), ('max-age="42"', 42.0),
    ("max-age=abc", None)])
def test_parse_max_age(header, expected):
    assert parse_max_age(header) == expected


async def test_rotation_new_kid_is_picked_up(idp, http):
    clock = FakeClock()
    src = source(idp, http, clock)
    await src.key_for(idp.current_kid, RS256)
    clock.advance(11)
    new = idp.rotate()
    assert (await src.key_for(new, RS256)).kid == new
    assert idp.hits["/jwks"] == 2


async def test_unknown_kid_refetch_is_rate_limited(idp, http):
    clock = FakeClock()
    src = source(idp, http, clock)
    await src.key_for(idp.current_kid, RS256)
    new = idp.rotate()
    # fetched just now: the refetch for an unknown kid waits for the interval
    with pytest.raises(TokenUnknownKid):
        await src.key_for(new, RS256)
    for i in range(50):
        with pytest.raises(TokenUnknownKid):
            await src.key_for(f"flood-{i}", RS256)
    assert idp.hits["/jwks"] == 1
    clock.advance(10)
    assert (await src.key_for(new, RS256)).kid == new
    assert idp.hits["/jwks"] == 2


async def test_idp_outage_keeps_known_keys(idp, http):
    clock = FakeClock()
    src = source(idp, http, clock, max_ttl_seconds=120, ttl_seconds=100)
    await src.key_for(idp.current_kid, RS256)
    idp.down = True
    errors_before = fetches("http_error")
    clock.advance(301)  # keys are stale; the refresh fails in the background
    assert (await src.key_for(idp.current_kid, RS256)).kid == idp.current_kid
    await asyncio.sleep(0.1)
    assert fetches("http_error") == errors_before + 1
    for _ in range(20):  # retries are spaced by the refetch interval, not per request
        assert (await src.key_for(idp.current_kid, RS256)).kid == idp.current_kid
    await asyncio.sleep(0.05)
    assert fetches("http_error") == errors_before + 1
    with pytest.raises(TokenUnknownKid):
        await src.key_for("new-kid-during-outage", RS256)
    idp.down = False
    clock.advance(11)
    new = idp.rotate()
    assert (await src.key_for(new, RS256)).kid == new


async def test_no_keys_ever_is_503_and_fails_fast(idp, http):
    clock = FakeClock()
    idp.down = True
    src = source(idp, http, clock)
    with pytest.raises(KeysUnavailable) as info:
        await src.key_for(idp.current_kid, RS256)
    assert info.value.status == 503 and int(info.value.headers["Retry-After"]) >= 1
    hits = sum(idp.hits.values())
    with pytest.raises(KeysUnavailable):
        await src.key_for(idp.current_kid, RS256)
    assert sum(idp.hits.values()) == hits  # within the retry interval: no new fetch
    idp.down = False
    clock.advance(10)
    assert (await src.key_for(idp.current_kid, RS256)).kid == idp.current_kid


async def test_concurrent_fetches_coalesce(idp, http):
    idp.delay = 0.2
    src = source(idp, http)
    keys = await asyncio.gather(*(src.key_for(idp.current_kid, RS256) for _ in range(25)))
    assert {k.kid for k in keys} == {idp.current_kid}
    assert idp.hits["/jwks"] == 1 and idp.hits["/.well-known/openid-configuration"] == 1


async def test_cancelled_waiter_does_not_cancel_the_shared_fetch(idp, http):
    idp.delay = 0.2
    src = source(idp, http)
    first = asyncio.ensure_future(src.key_for(idp.current_kid, RS256))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(src.key_for(idp.current_kid, RS256))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second).kid == idp.current_kid


async def test_timeout_counts_and_leaves_no_keys(idp, http):
    idp.delay = 1.0
    src = source(idp, http, timeout_seconds=0.1)
    before = fetches("timeout")
    with pytest.raises(KeysUnavailable):
        await src.key_for(idp.current_kid, RS256)
    assert fetches("timeout") == before + 1


async def test_discovery_naming_another_issuer_is_refused(idp, http):
    src = RemoteKeySource(name="test", issuer="https://someone-else.example",
                          discovery_url=f"{idp.issuer}/.well-known/openid-configuration",
                          jwks_uri=None, settings=JwksSettings(), http=http)
    with pytest.raises(KeysUnavailable):
        await src.key_for(idp.current_kid, RS256)
    assert idp.hits["/jwks"] == 0


async def test_oversized_or_empty_jwks_is_refused(idp, http):
    src = source(idp, http, discovery=False, max_bytes=1024)
    with pytest.raises(KeysUnavailable):  # an RSA JWKS is larger than 1 KiB with two keys
        idp.rotate()
        idp.rotate()
        await src.key_for(idp.current_kid, RS256)
    idp.keys.clear()
    src2 = source(idp, http, discovery=False)
    with pytest.raises(KeysUnavailable):
        await src2.key_for("x", RS256)


async def test_a_kid_of_the_wrong_key_type_is_a_mismatch(idp, http):
    ec_kid = idp.rotate(alg="ES256")
    src = source(idp, http)
    with pytest.raises(TokenKeyMismatch):
        await src.key_for(ec_kid, RS256)


async def test_close_is_idempotent(idp, http):
    src = source(idp, http)
    await src.warm()
    assert idp.hits["/jwks"] == 1
    await src.close()
    await src.close()


async def test_static_sources_from_pem_and_inline_jwks():
    private = generate_key("ES256")
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    cfg = IssuerConfig(name="pem", issuer="https://pem.example", audiences=("a",),
                       pem_keys=({"pem": pem, "kid": "k1"},))
    src = build_key_source(cfg, http=HttpClient())
    assert isinstance(src, StaticKeySource)
    assert (await src.key_for("k1", ALGORITHMS["ES256"])).kid == "k1"
    with pytest.raises(TokenUnknownKid):
        await src.key_for("k2", ALGORITHMS["ES256"])
    fake = FakeIssuer()
    cfg2 = IssuerConfig(name="inline", issuer="https://inline.example", audiences=("a",),
                        jwks=fake.jwks())
    assert len(static_keys(cfg2)) == 1
