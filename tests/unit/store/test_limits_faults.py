"""Limits under faults, against a real Redis: a call that Redis runs after the sidecar gave up
changes nothing, a reply that comes back too late is undone, and what an allowed call took can
be given back exactly."""

import asyncio
import threading

import pytest
import redis

from authz.store import RedisStore, StoreUnavailable
from authz.store.limits import RateOp, ReserveOp

HOURLY = 3600 * 1_000_000
SPIN = "local t0 = redis.call('TIME'); local s = tonumber(t0[1]) + tonumber(t0[2]) / 1e6; " \
       "while true do local t = redis.call('TIME'); " \
       "if tonumber(t[1]) + tonumber(t[2]) / 1e6 - s > tonumber(ARGV[1]) then return 1 end end"


def busy(redis_url: str, seconds: float) -> threading.Thread:
    """Keep Redis busy for ``seconds`` (a script spinning: nothing else runs meanwhile), as a
    paused or overloaded Redis would be; the commands sent meanwhile queue up."""
    def run() -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            client.eval(SPIN, 0, seconds)
        finally:
            client.close()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture
async def store(redis_url, request):
    s = RedisStore(redis_url, timeout=0.05, prefix=f"faults{id(request)}:")
    await s.ping()  # the connection is open before Redis gets busy
    yield s
    await s.close()


async def test_a_call_redis_runs_after_its_deadline_changes_nothing(store, redis_url):
    rate = RateOp("rl:{user=a}:x", interval_us=HOURLY, burst=5)
    budget = ReserveOp("bg:{user=a}:b:day", limit=1000, amount=100, ttl_seconds=60)
    undone = []

    async def undo(rates, reserves):  # the script itself must refuse: nothing to undo afterwards
        undone.append((rates, reserves))
    store.undo_limits = undo
    await store.apply_limits([RateOp("warm", HOURLY, 5)], [])  # Redis has the script cached
    thread = busy(redis_url, 0.4)
    await asyncio.sleep(0.05)
    with pytest.raises(StoreUnavailable):
        await store.apply_limits([rate], [budget])
    await asyncio.to_thread(thread.join)
    await asyncio.sleep(0.05)  # Redis has run the backlog
    assert await store.get(rate.key) is None
    assert await store.get(budget.key) is None
    assert undone == []
    # And the next call is served as usual.
    result = await store.apply_limits([rate], [budget])
    assert result.allowed and result.budgets[0].used == 100 and result.rates[0].remaining == 4


async def test_a_reply_that_comes_back_after_the_caller_gave_up_is_undone(store, redis_url):
    rate = RateOp("rl:{user=b}:x", interval_us=HOURLY, burst=5)
    budget = ReserveOp("bg:{user=b}:b:day", limit=1000, amount=100, ttl_seconds=60)
    assert (await store.apply_limits([rate], [budget])).allowed
    before = (await store.get(rate.key), await store.get(budget.key))
    # A deadline well after the moment the caller gives up: Redis runs the call in time for the
    # script, but its reply reaches a caller that has already answered "unavailable".
    store._resp.reply_margin = -0.5
    thread = busy(redis_url, 0.2)
    await asyncio.sleep(0.03)
    with pytest.raises(StoreUnavailable):
        await store.apply_limits([rate], [budget])
    await asyncio.to_thread(thread.join)
    for _ in range(50):
        await asyncio.sleep(0.02)
        if (await store.get(rate.key), await store.get(budget.key)) == before:
            break
    assert int(await store.get(budget.key)) == 100
    assert float(await store.get(rate.key)) == pytest.approx(float(before[0]), abs=1)


async def test_a_reply_that_comes_back_after_the_connection_stalled_is_undone(store, redis_url):
    """Redis runs a call in time for the script but answers only after a stall longer than the
    client's stall timeout (a pause, a long fork: the connection is dropped for new calls). The
    connection is kept open for that reply, and what the call took is given back."""
    rate = RateOp("rl:{user=c}:x", interval_us=HOURLY, burst=5)
    budget = ReserveOp("bg:{user=c}:b:day", limit=1000, amount=100, ttl_seconds=60)
    assert (await store.apply_limits([rate], [budget])).allowed
    before = (await store.get(rate.key), await store.get(budget.key))
    client = store._resp
    stalled = client._conn
    store._resp.reply_margin = -5  # Redis may run the call until well after the stall
    thread = busy(redis_url, client.stall_timeout + 0.4)
    await asyncio.sleep(0.03)
    with pytest.raises(StoreUnavailable):
        await store.apply_limits([rate], [budget])
    await asyncio.sleep(client.stall_timeout + 0.1)
    assert stalled.error is not None and client._conn is not stalled  # dropped for new calls ...
    assert stalled in client._retired  # ... but still reading
    await asyncio.to_thread(thread.join)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if (await store.get(rate.key), await store.get(budget.key)) == before and not client._retired:
            break
    assert int(await store.get(budget.key)) == 100
    assert float(await store.get(rate.key)) == pytest.approx(float(before[0]), abs=1)
    assert not client._retired  # closed once the reply it waited for came
