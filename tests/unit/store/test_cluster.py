"""The Redis store on a real 3-master Redis Cluster (started by the tests): keys routed to the
master of their slot, a request's limits all-or-nothing across slots, and a master that dies or
hangs costing only its own slots, each call bounded by the timeout, with recovery by itself."""

import asyncio
import signal
import time
import uuid

import pytest

from authz.dev.stack import free_port, port_open
from authz.store import RedisStore, StoreUnavailable
from authz.store.limits import RateOp, ReserveOp

HOURLY = 3600 * 1_000_000


@pytest.fixture
async def store(redis_cluster):
    s = RedisStore(redis_cluster.url, timeout=0.05, connect_timeout=0.2, cluster=True,
                   prefix=f"c{uuid.uuid4().hex[:6]}:")
    await s.ping()
    yield s
    await s.close()


def on_node(store: RedisStore, cluster, node: int, template: str) -> str:
    """A key made from ``template`` (with ``{}`` for a value) whose slot is on ``node``."""
    router = store._router
    for i in range(10_000):
        key = template.format(f"v{i}")
        address = router._slots[router.slot(store._prefix + key)]
        if address is not None and address[1] == cluster.ports[node]:
            return key
    raise AssertionError("no key found for the node")


async def test_keys_go_to_the_master_of_their_slot(store, redis_cluster):
    keys = [on_node(store, redis_cluster, n, "k:{{{}}}") for n in range(3)]
    for i, k in enumerate(keys):
        assert await store.set(k, b"v%d" % i, ttl=60)
        assert await store.incr(k + ":n", 5, ttl=60) == 5
        assert await store.hset(k + ":h", {"a": "1"}) == 1
    assert [await store.get(k) for k in keys] == [b"v0", b"v1", b"v2"]
    assert [await store.hgetall(k + ":h") for k in keys] == [{"a": b"1"}] * 3
    assert 0 < await store.ttl(keys[0]) <= 60
    assert await store.time_us() > 1_700_000_000_000_000
    assert await store.check_health() == ""


async def test_limits_in_different_slots_are_all_or_nothing(store, redis_cluster):
    user = on_node(store, redis_cluster, 0, "rl:{{user={}}}:per-user")
    tenant = on_node(store, redis_cluster, 1, "bg:{{tenant={}}}:monthly:2026-11")
    rate = RateOp(user, interval_us=HOURLY, burst=10)
    budget = ReserveOp(tenant, limit=250, amount=100, ttl_seconds=60)
    first = await store.apply_limits([rate], [budget])
    second = await store.apply_limits([rate], [budget])
    assert first.allowed and second.allowed and second.rates[0].remaining == 8
    refused = await store.apply_limits([rate], [budget])  # the tenant's budget is spent
    assert not refused.allowed and refused.rates[0].allowed and not refused.budgets[0].allowed
    tat = float(await store.get(user))
    for _ in range(50):  # what the user's slot took is given back (in the background)
        await asyncio.sleep(0.02)
        if float(await store.get(user)) < tat:
            break
    after = await store.apply_limits([rate], [])
    assert after.rates[0].remaining == 7, "the refused request kept its rate-limit charge"
    assert int(await store.get(tenant)) == 200


@pytest.mark.parametrize("timeout_ms", [50, 200])
@pytest.mark.parametrize("fault", ["hang", "kill"])
async def test_a_failing_master_costs_only_its_slots(redis_cluster, fault, timeout_ms):
    store = RedisStore(redis_cluster.url, timeout=timeout_ms / 1000, connect_timeout=0.2, cluster=True,
                       prefix=f"f{uuid.uuid4().hex[:6]}:")
    victim = 2
    proc = redis_cluster.procs[victim]
    port = redis_cluster.ports[victim]
    try:
        await store.ping()
        healthy = [on_node(store, redis_cluster, n, "rl:{{user={}}}:x") for n in (0, 1)]
        doomed = on_node(store, redis_cluster, victim, "rl:{{user={}}}:x")
        mixed_budget = on_node(store, redis_cluster, 0, "bg:{{tenant={}}}:b:day")
        assert (await store.apply_limits([RateOp(doomed, HOURLY, 100)], [])).allowed
        proc.signal(signal.SIGSTOP if fault == "hang" else signal.SIGKILL)
        if fault == "kill":
            proc.proc.wait(5)
        latencies = []
        for _ in range(10):
            for key in healthy:
                started = time.perf_counter()
                assert (await store.apply_limits([RateOp(key, HOURLY, 100)], [])).allowed
                latencies.append(time.perf_counter() - started)
            started = time.perf_counter()
            with pytest.raises(StoreUnavailable):
                # A request touching the failed master fails, and takes nothing anywhere else.
                await store.apply_limits([RateOp(doomed, HOURLY, 100)],
                                         [ReserveOp(mixed_budget, 10_000, 7, 60)])
            latencies.append(time.perf_counter() - started)
        assert max(latencies) < timeout_ms / 1000 + 0.1, latencies
        await asyncio.sleep(0.1)
        assert await store.get(mixed_budget) in (None, b"0")
        detail = await store.check_health()  # still serving: only that master's slots fail
        assert f"127.0.0.1:{port}" in detail
    finally:
        if fault == "hang":
            proc.signal(signal.SIGCONT)
        else:
            redis_cluster.start_node(victim, port)
    try:
        assert port_open(port)
        deadline = time.monotonic() + 15
        while True:  # recovery without a new client
            try:
                if (await store.apply_limits([RateOp(doomed, HOURLY, 100)], [])).allowed:
                    break
            except StoreUnavailable:
                pass
            assert time.monotonic() < deadline, "the store did not recover"
            await asyncio.sleep(0.1)
        assert await store.check_health() == ""
    finally:
        await store.close()
    redis_cluster.wait_ok()


async def test_a_dead_first_seed_is_passed_over_for_the_next(redis_cluster):
    dead = free_port()
    s = RedisStore(f"redis://127.0.0.1:{dead}/0", timeout=0.05, connect_timeout=0.2, cluster=True,
                   seeds=[("127.0.0.1", dead), ("127.0.0.1", redis_cluster.ports[1])],
                   prefix=f"c{uuid.uuid4().hex[:6]}:")
    try:
        assert await s.check_health() == ""
        assert len(s._router.masters()) == 3
        assert s._router._retry is None  # read: no background retry left running for the dead seed
        assert await s.incr("seeded", 2, ttl=60) == 2
    finally:
        await s.close()


async def test_with_no_seed_answering_the_map_is_read_once_one_does_without_a_call(redis_cluster):
    """No seed answers at start: calls fail (store unavailable, within the timeout); the router
    keeps trying in the background, so once a seed answers the map arrives with no call asking."""
    late = free_port()
    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.05, connect_timeout=0.2,
                   cluster=True, seeds=[("127.0.0.1", late)], prefix=f"c{uuid.uuid4().hex[:6]}:")
    s._router.refresh_every = 0.2

    async def forward(reader, writer):  # a seed that comes up later: a proxy to a real node
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", redis_cluster.ports[2])

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    server = None
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.incr("late", 1, ttl=60)
        assert time.monotonic() - started < 0.5
        await asyncio.sleep(0.5)
        assert s._router.masters() == []
        server = await asyncio.start_server(forward, "127.0.0.1", late)
        for _ in range(100):
            if s._router.masters():
                break
            await asyncio.sleep(0.05)
        assert len(s._router.masters()) == 3  # no call asked: the background retry found it
        assert await s.incr("late", 1, ttl=60) == 1
    finally:
        await s.close()
        if server is not None:
            server.close()
