"""GCRA and budget semantics, the same for the memory store (Python) and Redis (Lua)."""

import asyncio

import pytest

from authz.store import MemoryStore, RedisStore
from authz.store.limits import RateOp, ReserveOp


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryStore()
        return
    s = RedisStore(request.getfixturevalue("redis_url"), timeout=2.0, prefix=f"t{id(request)}:")
    await s.client.flushdb()
    yield s
    await s.close()


HOURLY = 3600 * 1_000_000  # one request per hour: nothing refills during a test


async def test_burst_then_refusal_with_retry_after(store):
    op = RateOp("rl:{user=a}:x", interval_us=HOURLY, burst=3)
    results = [await store.apply_limits([op], []) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.rates[0].remaining for r in results[:3]] == [2, 1, 0]
    refused = results[3].rates[0]
    assert HOURLY * 0.99 < refused.retry_after_us <= HOURLY


async def test_a_refusal_consumes_nothing_anywhere(store):
    open_limit = RateOp("rl:{user=a}:open", interval_us=HOURLY, burst=100)
    tight = RateOp("rl:{user=a}:tight", interval_us=HOURLY, burst=1)
    budget = ReserveOp("bg:{user=a}:b:2026-11-22", limit=1000, amount=100, ttl_seconds=60)
    assert (await store.apply_limits([open_limit, tight], [budget])).allowed
    refused = await store.apply_limits([open_limit, tight], [budget])
    assert not refused.allowed and refused.rates[0].allowed and not refused.rates[1].allowed
    after = await store.apply_limits([open_limit], [budget])
    assert after.rates[0].remaining == 98  # only the first request consumed it
    assert after.budgets[0].used == 200


async def test_budget_reserve_refuses_what_does_not_fit(store):
    op = ReserveOp("bg:{user=b}:daily:2026-11-22", limit=1000, amount=400, ttl_seconds=60)
    r1, r2, r3 = [await store.apply_limits([], [op]) for _ in range(3)]
    assert (r1.allowed, r1.budgets[0].used, r1.budgets[0].remaining) == (True, 400, 600)
    assert r2.allowed and r2.budgets[0].used == 800
    assert not r3.allowed and r3.budgets[0].remaining == 200
    ttl = await store.ttl("bg:{user=b}:daily:2026-11-22")
    assert ttl is not None and 0 < ttl <= 60
    # settle: the first request used 100 of its 400
    assert await store.incr("bg:{user=b}:daily:2026-11-22", -300, ttl=60) == 500


async def test_exact_under_concurrency(store):
    op = RateOp("rl:{user=c}:x", interval_us=HOURLY, burst=10)
    results = await asyncio.gather(*(store.apply_limits([op], []) for _ in range(300)))
    assert sum(r.allowed for r in results) == 10


async def test_idle_keys_expire(store):
    op = RateOp("rl:{user=d}:fast", interval_us=1000, burst=1)  # full again after 1 ms
    await store.apply_limits([op], [])
    await asyncio.sleep(0.05)
    assert await store.get("rl:{user=d}:fast") is None


async def test_memory_refill_follows_the_rate():
    clock = Clock()
    s = MemoryStore(clock=clock, wall_clock=clock)
    op = RateOp("k", interval_us=600_000, burst=2)  # 100/min, burst 2
    assert [(await s.apply_limits([op], [])).allowed for _ in range(3)] == [True, True, False]
    clock.t += 0.3
    assert not (await s.apply_limits([op], [])).allowed
    clock.t += 0.3
    assert (await s.apply_limits([op], [])).allowed
    assert not (await s.apply_limits([op], [])).allowed
    clock.t += 60
    # a full minute idle refills only up to the burst, not 100
    assert [(await s.apply_limits([op], [])).allowed for _ in range(3)] == [True, True, False]


async def test_undo_gives_back_exactly_what_was_taken(store):
    rate = RateOp("rl:{user=c}:x", interval_us=HOURLY, burst=3)
    budget = ReserveOp("bg:{user=c}:b:day", limit=1000, amount=300, ttl_seconds=60)
    assert (await store.apply_limits([rate], [budget])).allowed
    second = await store.apply_limits([rate], [budget])
    assert second.allowed and second.budgets[0].used == 600 and second.rates[0].remaining == 1
    await store.undo_limits([rate], [budget])
    third = await store.apply_limits([rate], [budget])
    assert third.budgets[0].used == 600 and third.rates[0].remaining == 1  # as if the second never was
    await store.undo_limits([rate], [budget])
    await store.undo_limits([rate], [budget])
    assert await store.get(rate.key) is None  # the bucket is full again: its key is gone
    assert int(await store.get(budget.key)) == 0
