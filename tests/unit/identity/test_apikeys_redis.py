"""API keys kept in Redis (``identity.api_keys.store: redis``), against a real redis-server."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
from identity_helpers import API_KEY, FakeClock, identity_config, make_request, run

from authz.assembly import build_pipeline
from authz.config import parse_config
from authz.dev.stack import free_port
from authz.errors import ConfigError, Unavailable
from authz.identity.apikeys import ChainApiKeys, StoreApiKeys, record_key
from authz.identity.assertion import KeyRing
from authz.identity.errors import ApiKeyInvalid
from authz.identity.stage import build_identity_stage
from authz.store import MemoryStore, RedisStore

KEY = "rk-" + "a1B2c3D4" * 5


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class CountingStore(MemoryStore):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.lookups = 0

    async def hgetall(self, key):
        self.lookups += 1
        return await super().hgetall(key)


@pytest.fixture
async def redis_store(redis_url):
    store = RedisStore(redis_url, timeout=1.0, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    yield store
    await store.close()


async def put(store, key=KEY, **fields):
    record = {"name": "ingest", "subject": "svc-ingest", "roles": "service writer",
              "scopes": "data:write", "client": "ingest-job", "tenant": "acme"}
    record.update(fields)
    await store.hset(record_key(digest(key)), record)


async def test_lookup_hit_miss_expired_revoked(redis_store):
    clock = FakeClock()
    keys = StoreApiKeys(redis_store, cache_seconds=0, negative_cache_seconds=0, clock=clock)
    assert await keys.lookup(KEY) is None  # miss
    await put(redis_store)
    m = await keys.lookup(KEY)
    assert m is not None and m.name == "ingest"
    p = m.principal
    assert (p.subject, p.client, p.tenant, p.credential) == ("svc-ingest", "ingest-job", "acme", "api_key")
    assert p.roles == {"service", "writer"} and p.scopes == {"data:write"} and p.email is None
    await put(redis_store, expires_at=str(int(clock.now) - 1))
    assert await keys.lookup(KEY) is None  # expired
    await put(redis_store, expires_at=str(int(clock.now) + 60))
    assert await keys.lookup(KEY) is not None
    clock.advance(61)
    assert await keys.lookup(KEY) is None
    await redis_store.delete(record_key(digest(KEY)))
    clock.advance(-61)
    assert await keys.lookup(KEY) is None  # revoked
    # Only the digest is stored: the raw key appears in no key or value.
    await put(redis_store)
    raw = await redis_store.client.keys("*")
    assert all(KEY.encode() not in k for k in raw)
    assert KEY.encode() not in b"".join((await redis_store.hgetall(record_key(digest(KEY)))).values())


async def test_unusable_record_is_refused(redis_store):
    keys = StoreApiKeys(redis_store, cache_seconds=0, negative_cache_seconds=0)
    await put(redis_store, subject="")
    assert await keys.lookup(KEY) is None
    await put(redis_store, subject="s", expires_at="soon")
    assert await keys.lookup(KEY) is None


async def test_positive_cache_hides_revocation_until_cache_seconds():
    clock = FakeClock()
    store = CountingStore()
    keys = StoreApiKeys(store, cache_seconds=30, negative_cache_seconds=5, clock=clock)
    await put(store)
    assert await keys.lookup(KEY) is not None
    await store.delete(record_key(digest(KEY)))
    clock.advance(29)
    assert await keys.lookup(KEY) is not None and store.lookups == 1  # cached
    clock.advance(2)
    assert await keys.lookup(KEY) is None and store.lookups == 2  # revocation seen


async def test_cached_key_still_expires_on_time():
    clock = FakeClock()
    store = CountingStore()
    keys = StoreApiKeys(store, cache_seconds=30, clock=clock)
    await put(store, expires_at=str(clock.now + 10))
    assert await keys.lookup(KEY) is not None
    clock.advance(11)
    assert await keys.lookup(KEY) is None


async def test_negative_cache_spares_redis_and_is_bounded():
    clock = FakeClock()
    store = CountingStore()
    keys = StoreApiKeys(store, negative_cache_seconds=5, max_entries=100, clock=clock)
    for _ in range(50):
        assert await keys.lookup("nope-" + "x" * 20) is None
    assert store.lookups == 1
    await put(store, key="nope-" + "x" * 20)  # created meanwhile: seen after the negative period
    clock.advance(6)
    assert await keys.lookup("nope-" + "x" * 20) is not None
    await put(store)
    assert await keys.lookup(KEY) is not None
    for i in range(1000):  # a flood of random keys
        await keys.lookup(f"random-key-{i:08d}")
    assert len(keys._missing) <= 100 and len(keys._found) <= 100
    before = store.lookups
    assert await keys.lookup(KEY) is not None and store.lookups == before  # the good key stays cached


async def test_redis_down_is_503_with_reason(build):
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, connect_timeout=0.2)
    try:
        stage = build(identity_config(api_keys={"store": "redis"}), store=dead)
        with pytest.raises(Unavailable) as err:
            await run(stage, make_request({"x-api-key": KEY}))
        assert err.value.status == 503 and err.value.reason == "identity.api_keys_unavailable"
        # A config key still works without Redis (config first).
        stage = build(identity_config(api_keys={"store": "redis", "keys": [
            {"name": "batch", "sha256": digest(API_KEY), "subject": "svc-batch"}]}), store=dead)
        ctx = await run(stage, make_request({"x-api-key": API_KEY}))
        assert ctx.principal.subject == "svc-batch"
    finally:
        await dead.close()


async def test_stage_config_keys_then_redis(build, redis_store):
    stage = build(identity_config(api_keys={"store": "redis", "keys": [
        {"name": "batch", "sha256": digest(API_KEY), "subject": "svc-batch"}]}), store=redis_store)
    assert isinstance(stage.api_keys, ChainApiKeys)
    await put(redis_store)
    ctx = await run(stage, make_request({"authorization": f"ApiKey {KEY}"}))
    assert ctx.principal.subject == "svc-ingest"
    assert ctx.facts["identity"] == {"credential": "api_key", "api_key": "ingest",
                                     "subject": "svc-ingest", "client": "ingest-job"}
    assert "x-api-key" in ctx.mutations.remove_headers or "authorization" in ctx.mutations.remove_headers
    assert (await run(stage, make_request({"x-api-key": API_KEY}))).principal.subject == "svc-batch"
    with pytest.raises(ApiKeyInvalid):
        await run(stage, make_request({"x-api-key": "unknown-" + "z" * 30}))


def test_redis_store_needs_a_redis_url():
    with pytest.raises(ConfigError) as err:
        parse_config("identity:\n  api_keys: {store: redis}\n")
    assert "store.redis_url" in str(err.value)
    with pytest.raises(ConfigError):
        build_identity_stage(identity_config(api_keys={"store": "redis"}), keyring=KeyRing())


async def test_assembly_passes_the_store(redis_url):
    config = parse_config(f"store: {{redis_url: '{redis_url}'}}\n"
                          "identity:\n  api_keys: {store: redis, cache_seconds: 7}\n")
    store = MemoryStore()
    pipeline = build_pipeline(config, store)
    try:
        keys = pipeline.stages[0].api_keys
        assert isinstance(keys, StoreApiKeys) and keys.store is store and keys._ttl == 7
    finally:
        await pipeline.close()


def test_cli_add_authenticates_then_revoke_refuses(redis_url, tmp_path, capsys):
    from authz.cli import main
    from authz.config import load_config
    from authz.store import build_store

    cfg = tmp_path / "authz.yaml"
    cfg.write_text(f"store: {{redis_url: '{redis_url}', key_prefix: 'cli-{uuid.uuid4().hex[:8]}:'}}\n"
                   "identity:\n  api_keys: {store: redis, cache_seconds: 0, negative_cache_seconds: 0}\n")
    assert main(["apikeys", "add", "-c", str(cfg), "--name", "nightly", "--subject", "svc-nightly",
                 "--roles", "service,batch", "--scopes", "data:read", "--client", "cron",
                 "--expires-in", "3600"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert len(key) >= 40 and "\n" not in key and "shown only this once" in out.err
    assert main(["apikeys", "add", "-c", str(cfg), "--name", "nightly", "--subject", "x"]) == 1

    assert main(["apikeys", "list", "-c", str(cfg)]) == 0
    listed = capsys.readouterr().out
    assert "nightly" in listed and "svc-nightly" in listed and key not in listed

    async def authenticate() -> str:
        config, _ = load_config(cfg)
        store = build_store(config.store)
        stage = build_identity_stage(config.identity, store=store, keyring=KeyRing())
        try:
            ctx = await run(stage, make_request({"x-api-key": key}))
            return ctx.principal.subject
        except ApiKeyInvalid:
            return "refused"
        finally:
            await stage.close()
            await store.close()

    assert asyncio.run(authenticate()) == "svc-nightly"
    assert main(["apikeys", "revoke", "-c", str(cfg), "--name", "nightly"]) == 0
    assert "revoked nightly" in capsys.readouterr().out
    assert asyncio.run(authenticate()) == "refused"
    assert main(["apikeys", "revoke", "-c", str(cfg), "--name", "nightly"]) == 1


def test_cli_needs_redis(tmp_path, capsys, monkeypatch):
    from authz.cli import main

    monkeypatch.delenv("REDIS_URL", raising=False)
    cfg = tmp_path / "authz.yaml"
    cfg.write_text("identity: {}\n")
    assert main(["apikeys", "list", "-c", str(cfg)]) == 2
    assert "no Redis" in capsys.readouterr().err
    assert main(["apikeys"]) == 2


def test_memory_store_hashes():
    async def go():
        s = MemoryStore(prefix="p:")
        assert await s.hgetall("h") == {}
        assert await s.hset("h", {"a": "1", "b": b"2"}) == 2
        assert await s.hset("h", {"a": "3"}) == 0
        assert await s.hgetall("h") == {"a": b"3", "b": b"2"}
        assert await s.hdel("h", "a", "zz") == 1
        assert await s.hdel("h", "b") == 1 and await s.hgetall("h") == {}

    asyncio.run(go())
