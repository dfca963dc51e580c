from __future__ import annotations

import hashlib

from identity_helpers import FakeClock

from authz.identity.cache import TokenCache
from authz.model import Principal

ALICE = Principal(subject="alice")


def test_hit_until_exp_then_gone():
    clock = FakeClock(1000.0)
    cache = TokenCache(10, max_ttl=3600, clock=clock)
    cache.put("t", ALICE, expires_at=1060)
    assert cache.get("t") is ALICE
    clock.advance(59.9)
    assert cache.get("t") is ALICE
    clock.advance(0.1)
    assert cache.get("t") is None and len(cache) == 0


def test_entries_never_outlive_max_ttl():
    clock = FakeClock(1000.0)
    cache = TokenCache(10, max_ttl=300, clock=clock)
    cache.put("t", ALICE, expires_at=1_000_000)
    clock.advance(300)
    assert cache.get("t") is None


def test_already_expired_tokens_are_not_stored():
    clock = FakeClock(1000.0)
    cache = TokenCache(10, clock=clock)
    cache.put("t", ALICE, expires_at=999)
    assert len(cache) == 0


def test_lru_eviction_keeps_the_recently_used():
    clock = FakeClock(1000.0)
    cache = TokenCache(2, clock=clock)
    cache.put("a", ALICE, 2000)
    cache.put("b", ALICE, 2000)
    assert cache.get("a") is ALICE  # a is now the most recent
    cache.put("c", ALICE, 2000)
    assert cache.get("b") is None and cache.get("a") is ALICE and cache.get("c") is ALICE


def test_the_token_itself_is_not_kept():
    cache = TokenCache(2)
    cache.put("secret-token", ALICE, 1e12)
    assert list(cache._entries) == [hashlib.sha256(b"secret-token").digest()]
