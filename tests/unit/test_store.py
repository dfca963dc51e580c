"""The same behaviour from both stores: memory (embedded default) and real Redis."""

import asyncio

import pytest

from authz.store import MemoryStore, RedisStore, StoreUnavailable


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryStore(prefix="t:")
        return
    url = request.getfixturevalue("redis_url")
    s = RedisStore(url, timeout=1.0, prefix=f"test:{id(request)}:")
    await s.client.flushdb()
    yield s
    await s.close()


async def test_set_get_delete(store):
    assert await store.get("a") is None
    assert await store.set("a", b"1")
    assert await store.get("a") == b"1"
    assert await store.delete("a") is True
    assert await store.delete("a") is False
    assert await store.get("a") is None


async def test_set_only_if_absent(store):
    assert await store.set("k", b"first", only_if_absent=True)
    assert not await store.set("k", b"second", only_if_absent=True)
    assert await store.get("k") == b"first"


async def test_incr_is_atomic_under_concurrency(store):
    results = await asyncio.gather(*(store.incr("n", 1, ttl=60) for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await store.get("n") == b"200"


async def test_incr_ttl_is_set_on_creation_only(store):
    await store.incr("c", 5, ttl=30)
    first = await store.ttl("c")
    assert first is not None and 0 < first <= 30
    await store.incr("c", 1, ttl=1000)
    again = await store.ttl("c")
    assert again is not None and again <= 30


async def test_ping(store):
    await store.ping()


async def test_memory_expiry_with_fake_clock():
    clock = FakeClock()
    s = MemoryStore(clock=clock)
    await s.set("x", b"v", ttl=10)
    await s.incr("n", 1, ttl=5)
    clock.now += 5
    assert await s.get("n") is None
    assert await s.get("x") == b"v"
    clock.now += 5
    assert await s.get("x") is None
    assert s.size() == 0


async def test_memory_incr_on_non_integer_fails_clearly():
    s = MemoryStore()
    await s.set("x", b"abc")
    with pytest.raises(ValueError, match="not an integer"):
        await s.incr("x")


async def test_memory_hash_read_as_a_scalar_fails_clearly():
    s = MemoryStore()
    await s.hset("h", {"f": b"v"})
    with pytest.raises(ValueError, match="is a hash"):
        await s.get("h")
    with pytest.raises(ValueError, match="not an integer"):
        await s.incr("h")
    assert await s.hgetall("h") == {"f": b"v"}


async def test_unreachable_redis_raises_store_unavailable_within_timeout():
    from authz.dev.stack import free_port

    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, connect_timeout=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailable):
        await s.get("x")
    with pytest.raises(StoreUnavailable):
        await s.ping()
    assert loop.time() - started < 2
    await s.close()
