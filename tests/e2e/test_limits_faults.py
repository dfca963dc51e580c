"""Issue 18 through real Envoy and real Redis (a single one, and a 3-master Cluster the tests
start): no phantom charges when Redis pauses under load, nothing charged for a request that never
went upstream, limits in different Cluster slots refused all-or-nothing, a dead master costing only
its slots, a stream cut short charged what was streamed."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from authz.dev.stack import REFERENCE_CONFIG, Stack, free_port, start_redis

from .conftest import Running

DAY_US = 86400 * 1_000_000


def write_config(tmp: Path, redis_url: str, limits: dict, *, cluster: bool = False, timeout_ms: int = 50,
                 edit=None) -> tuple[Path, str]:
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    cfg["server"]["debug_headers"] = False
    cfg["log"] = {"format": "json", "decisions": False}
    prefix = f"e2e{free_port()}:"
    cfg["store"] = {"redis_url": redis_url, "cluster": cluster, "timeout_ms": timeout_ms,
                    "key_prefix": prefix, "health_interval_seconds": 0.5}
    cfg["limits"] = limits
    # What these tests time is the store's bound, not the disk: with `answered`, a Check also waits
    # for its audit record's write, which a box still writing back a fresh venv can stall.
    cfg["audit"]["durability"] = "queued"
    if edit is not None:
        edit(cfg)
    path = tmp / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, prefix


def client_for(url: str, cluster: bool) -> redis.Redis | redis.RedisCluster:
    return redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)


def snapshot(url: str, cluster: bool, prefix: str) -> dict[str, str]:
    client = client_for(url, cluster)
    try:
        if cluster:
            keys = [k for node in client.get_primaries() for k in client.keys(f"{prefix}*", target_nodes=node)]
        else:
            keys = client.keys(f"{prefix}*")
        keys = [k for k in keys if k.startswith((f"{prefix}rl:".encode(), f"{prefix}bg:".encode()))]
        return {k.decode(): client.get(k).decode() for k in keys}
    finally:
        client.close()


def same_counters(before: dict[str, str], after: dict[str, str]) -> bool:
    if before.keys() != after.keys():
        return False
    return all(abs(float(before[k]) - float(after[k])) < 1 for k in before)  # TATs are µs floats


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- a paused Redis -----------------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(len(values) * q) - 1)]


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
def test_redis_paused_under_load_leaves_no_phantom_charges(policy, tmp_path):
    """SIGSTOP Redis for 1.5 s during load, then SIGCONT, twice: the counter equals the requests
    answered with a checked allow (Redis ran the backlog of calls the sidecar had given up on, and
    applied none of them), and the answers during a pause came within timeout_ms + 20 ms (p99) of
    what they cost in the second before it."""
    url, proc = start_redis(tmp_path / "redis")
    timeout_ms = 50
    limits = {"rate_limits": [{"id": "per-user", "key": ["user"], "rate": "1/day", "burst": 1_000_000,
                               "on_store_error": policy}]}
    cfg, prefix = write_config(tmp_path, url, limits, timeout_ms=timeout_ms)
    stalls: list[tuple[float, float]] = []  # (when, how late) the probe thread woke, > 50 ms late
    probing = threading.Event()

    def probe() -> None:
        while not probing.is_set():
            asleep = time.monotonic()
            time.sleep(0.005)
            late = time.monotonic() - asleep - 0.005
            if late > 0.05:
                stalls.append((asleep, late))

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        with Stack(authz_config=cfg) as stack:
            s = Running(stack)
            token = s.token("oscar", roles=["accounting"])
            assert s.http.get("/v1/models", headers=s.auth(token)).status_code == 200
            samples: list[tuple[float, float, int, bool]] = []  # started, seconds, status, checked
            pauses: list[tuple[float, float]] = []  # (SIGSTOP, SIGCONT) times

            async def load(http: httpx.AsyncClient, until: float) -> None:
                while time.monotonic() < until:
                    started = time.monotonic()
                    r = await http.get("/v1/models", headers=s.auth(token))
                    samples.append((started, time.monotonic() - started, r.status_code, "ratelimit" in r.headers))

            async def pause() -> None:
                for _ in range(2):
                    await asyncio.sleep(1.0)
                    proc.signal(signal.SIGSTOP)
                    stop = time.monotonic()
                    await asyncio.sleep(1.5)
                    pauses.append((stop, time.monotonic()))
                    proc.signal(signal.SIGCONT)

            async def run() -> None:
                limits_ = httpx.Limits(max_connections=8, max_keepalive_connections=8)
                async with httpx.AsyncClient(base_url=stack.url, timeout=10, limits=limits_) as http:
                    until = time.monotonic() + 6.5
                    await asyncio.gather(pause(), *(load(http, until) for _ in range(8)))

            asyncio.run(run())
            time.sleep(1.0)  # Redis has run whatever was queued
            client = redis.Redis.from_url(url)
            try:
                tat = float(client.get(f"{prefix}rl:{{user=oscar}}:per-user"))
                seconds, micros = client.time()
            finally:
                client.close()
            now = seconds * 1_000_000 + micros
            charged = round((tat - now) / DAY_US)
            checked = 1 + sum(1 for _, _, status, has in samples if status == 200 and has)
            statuses = {status for _, _, status, _ in samples}
            print(f"{policy}: {len(samples)} answers, {checked} checked allows, counter {charged}, statuses {statuses}")
            assert charged == checked, (charged, checked)
            if policy == "fail_closed":
                assert any(st == 503 for _, _, st, _ in samples)
            else:
                assert any(st == 200 and not has for _, _, st, has in samples)  # served unchecked
            assert 500 not in statuses

            # The pause adds at most the store's timeout + 20 ms to what an answer costs on this
            # machine anyway (a shared 2-core box: Envoy, the sidecar and this client compete).
            # The tail is judged on the better of the two pauses: a sidecar that waits on a hung
            # Redis misses the bound in both, a moment's stall of the machine only in one.
            bound = (timeout_ms + 20) / 1000
            verdicts = []
            for stop, cont in pauses:
                during = [secs for started, secs, _, _ in samples if stop + 0.05 < started and started + secs < cont]
                before = [secs for started, secs, _, _ in samples if stop - 1.0 <= started and started + secs < stop]
                assert len(during) > 20 and len(before) > 20, (len(before), len(during))
                p50, p99 = (_pct(before, 0.5), _pct(during, 0.5)), (_pct(before, 0.99), _pct(during, 0.99))
                print("latency ms before/during a pause: p50 {:.1f}/{:.1f} p99 {:.1f}/{:.1f}".format(
                    *(1000 * v for v in (*p50, *p99))))
                assert p50[1] <= p50[0] + bound
                stalled = max((late for when, late in stalls if stop <= when <= cont), default=0.0)
                if p99[0] > 0.1:  # the box was too busy for its tail to say anything about the sidecar's
                    verdicts.append(f"not judged: the answers before it had a p99 of {p99[0] * 1000:.0f} ms")
                elif stalled > 0.1:  # so was the whole machine, for a moment
                    verdicts.append(f"not judged: this test's own thread stalled {stalled * 1000:.0f} ms")
                else:
                    verdicts.append("met" if p99[1] <= p99[0] + bound else
                                    f"missed: p99 {p99[1] * 1000:.0f} ms > {(p99[0] + bound) * 1000:.0f} ms")
            print("p99 during the pauses:", "; ".join(verdicts))
            assert "met" in verdicts or not any(v.startswith("missed") for v in verdicts), verdicts
    finally:
        probing.set()
        proc.stop()


# -- refused later, nothing charged ---------------------------------------------------------------

def test_requests_refused_after_limits_leave_every_counter_as_it_was(redis_url, tmp_path):
    limits = {"rate_limits": [{"id": "per-user", "key": ["user"], "rate": "100/hour", "burst": 50}],
              "budgets": [{"id": "daily-tokens", "key": ["user"], "limit": 100_000},
                          {"id": "tenant-tokens", "key": ["tenant"], "limit": 100_000}]}

    def block_secrets(cfg: dict) -> None:
        rule = next(r for r in cfg["redaction"]["rules"] if r["id"] == "llm-prompts")
        rule["actions"]["secret"] = "block"

    cfg, prefix = write_config(tmp_path, redis_url, limits, edit=block_secrets)
    with Stack(authz_config=cfg) as stack:
        s = Running(stack)
        token = s.token("oscar", roles=["accounting"], tenant="acme")

        def chat(text: str) -> httpx.Response:
            return s.http.post("/v1/chat/completions", headers=s.auth(token),
                               json={"model": "gpt-general", "max_tokens": 50,
                                     "messages": [{"role": "user", "content": text}]})

        assert chat("hello").status_code == 200
        assert wait_for(lambda: len(snapshot(redis_url, False, prefix)) == 3)
        before = snapshot(redis_url, False, prefix)
        held = chat("my SSN is 536-22-1234")
        assert held.status_code == 403 and held.headers["x-authz-reason"] == "redaction.approval_required"
        blocked = chat("key AKIAIOSFODNN7EXAMPLE secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        assert blocked.status_code == 403 and blocked.headers["x-authz-reason"] == "redaction.blocked", blocked.text
        unknown = s.http.post("/v1/images/variations", headers=s.auth(token), json={"model": "gpt-general"})
        assert unknown.status_code == 400 and unknown.headers["x-authz-reason"] == "llm.unknown_api"
        assert wait_for(lambda: same_counters(before, snapshot(redis_url, False, prefix))), \
            (before, snapshot(redis_url, False, prefix))


def test_a_check_envoy_stopped_waiting_for_charges_nothing(redis_url, tmp_path):
    """Redis answers after Envoy's ext_authz timeout (0.5 s) but within the store's: Envoy answers
    503 and never forwards the request; whatever the late Check took is given back."""

    limits = {"rate_limits": [{"id": "per-user", "key": ["user"], "rate": "100/hour", "burst": 50}],
              "budgets": [{"id": "daily-tokens", "key": ["user"], "limit": 100_000}]}
    cfg, prefix = write_config(tmp_path, redis_url, limits, timeout_ms=2000)
    with Stack(authz_config=cfg) as stack:
        s = Running(stack)
        token = s.token("frank", roles=["accounting"])
        chat = {"model": "gpt-general", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
        assert s.http.post("/v1/chat/completions", headers=s.auth(token), json=chat).status_code == 200
        assert wait_for(lambda: len(snapshot(redis_url, False, prefix)) == 2)
        time.sleep(0.3)  # settled
        before = snapshot(redis_url, False, prefix)

        def busy() -> None:  # Redis runs a script for 0.9 s: the limits call waits behind it
            client = redis.Redis.from_url(redis_url)
            try:
                client.eval("local t0 = redis.call('TIME'); while true do local t = redis.call('TIME'); "
                            "if (t[1] - t0[1]) * 1e6 + t[2] - t0[2] > 900000 then return 1 end end", 0)
            finally:
                client.close()
        thread = threading.Thread(target=busy)
        thread.start()
        time.sleep(0.05)
        started = time.monotonic()
        r = s.http.post("/v1/chat/completions", headers=s.auth(token), json=chat)
        waited = time.monotonic() - started
        thread.join()
        assert r.status_code == 503 and waited < 0.85, (r.status_code, waited, r.text)  # Envoy's answer
        assert wait_for(lambda: same_counters(before, snapshot(redis_url, False, prefix))), \
            (before, snapshot(redis_url, False, prefix))


def tamper_between_check_and_process(cfg: dict) -> None:
    """A Lua filter between ext_authz and ext_proc that changes the body of requests carrying
    ``x-e2e-tamper`` (same length): Process then sees a body other than the one Check read."""
    filters = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    at = next(i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.ext_authz") + 1
    filters.insert(at, {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": (
            "function envoy_on_request(h)\n"
            "  if h:headers():get('x-e2e-tamper') == nil then return end\n"
            "  local b = h:body()\n"
            "  local text = b:getBytes(0, b:length())\n"
            "  b:setBytes((string.gsub(text, 'tamper', 'TAMPER')))\n"
            "end\n")}}})


def test_a_request_process_refuses_before_upstream_is_charged_nothing(redis_url, tmp_path):
    """Check allows and rewrites the body (an address masked), charging the rate limit and
    reserving the budget; Process then sees another body and refuses (503 body.rewrite_lost)
    before anything goes upstream: every counter is as it was."""
    limits = {"rate_limits": [{"id": "per-user", "key": ["user"], "rate": "100/hour", "burst": 50}],
              "budgets": [{"id": "daily-tokens", "key": ["user"], "limit": 100_000}]}
    cfg, prefix = write_config(tmp_path, redis_url, limits)
    with Stack(authz_config=cfg, envoy_edit=tamper_between_check_and_process) as stack:
        s = Running(stack)
        token = s.token("tess", roles=["accounting"])
        chat = {"model": "gpt-general", "max_tokens": 50,
                "messages": [{"role": "user", "content": "mail tess@acme.com, tamper"}]}
        assert s.http.post("/v1/chat/completions", headers=s.auth(token), json=chat).status_code == 200
        assert wait_for(lambda: len(snapshot(redis_url, False, prefix)) == 2)
        time.sleep(0.3)  # settled
        before = snapshot(redis_url, False, prefix)
        r = s.http.post("/v1/chat/completions", headers={**s.auth(token), "x-e2e-tamper": "1"}, json=chat)
        assert r.status_code == 503 and r.headers["x-authz-reason"] == "body.rewrite_lost", r.text
        assert wait_for(lambda: same_counters(before, snapshot(redis_url, False, prefix))), \
            (before, snapshot(redis_url, False, prefix))


# -- a stream cut short -------------------------------------------------------------------------

def test_a_stream_the_client_aborts_is_charged_what_was_streamed(redis_url, tmp_path):
    limits = {"budgets": [{"id": "daily-tokens", "key": ["user"], "limit": 1_000_000}]}
    cfg, prefix = write_config(tmp_path, redis_url, limits)
    with Stack(authz_config=cfg) as stack:
        s = Running(stack)
        token = s.token("dana", roles=["accounting"])
        body = json.dumps({"model": "gpt-general", "stream": True, "max_tokens": 4000,
                           "messages": [{"role": "user", "content": "tell me a long story"}]}).encode()
        headers = {**s.auth(token), "content-type": "application/json", "x-demo-delay-ms": "300"}
        with httpx.Client(base_url=stack.url, timeout=10) as http:
            with http.stream("POST", "/v1/chat/completions", content=body, headers=headers) as r:
                assert r.status_code == 200
                first = next(r.iter_raw())
                assert first.startswith(b"data: ")
        # The body as Check read it has include_usage added; estimate from what was sent.
        prompt = math.ceil(len(body) / 3)
        key = f"{prefix}bg:{{user=dana}}:daily-tokens:{time.strftime('%Y-%m-%d', time.gmtime())}"
        client = redis.Redis.from_url(redis_url)
        try:
            assert wait_for(lambda: int(client.get(key) or 0) < prompt + 4000, timeout=10), \
                f"the whole reservation stayed charged: {client.get(key)}"
            charged = int(client.get(key))
        finally:
            client.close()
        reply = "This is a demo answer from the general model."
        assert prompt <= charged <= prompt + 20 + math.ceil(len(reply) / 3), (prompt, charged)


# -- Redis Cluster --------------------------------------------------------------------------------

@pytest.mark.parametrize("timeout_ms", [50, 200])
def test_cluster_limits_all_or_nothing_and_a_dead_master_costs_only_its_slots(redis_cluster, tmp_path,
                                                                             timeout_ms):
    # 100/hour: a bucket's TAT stays well ahead of the clock, so "as it was" is an exact comparison.
    limits = {"rate_limits": [{"id": "per-user", "key": ["user"], "rate": "100/hour", "burst": 100}],
              "budgets": [{"id": "tenant-tokens", "key": ["tenant"], "limit": 1_000}]}
    cfg, prefix = write_config(tmp_path, redis_cluster.url, limits, cluster=True, timeout_ms=timeout_ms)
    with Stack(authz_config=cfg) as stack:
        s = Running(stack)
        # Users and a tenant whose keys live on different masters.
        def node_of(key: str) -> int:
            return redis_cluster.slot_owner(prefix + key)

        users: dict[int, str] = {}
        for i in range(500):
            users.setdefault(node_of(f"rl:{{user=u{i}}}:per-user"), f"u{i}")
            if len(users) == 3:
                break
        tenant = next(f"t{i}" for i in range(500) if node_of(f"bg:{{tenant=t{i}}}:tenant-tokens:x") != 0)
        tenant_node = node_of(f"bg:{{tenant={tenant}}}:tenant-tokens:x")
        user = users[0]
        token = s.token(user, roles=["accounting"], tenant=tenant)
        small = {"model": "gpt-general", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        big = {**small, "max_tokens": 5000}  # more than the tenant's budget: refused by it alone
        assert s.http.post("/v1/chat/completions", headers=s.auth(token), json=small).status_code == 200
        assert wait_for(lambda: len(snapshot(redis_cluster.url, True, prefix)) == 2), \
            snapshot(redis_cluster.url, True, prefix)
        time.sleep(0.5)  # settled
        before = snapshot(redis_cluster.url, True, prefix)
        refused = s.http.post("/v1/chat/completions", headers=s.auth(token), json=big)
        assert refused.status_code == 429 and refused.headers["x-authz-reason"] == "budget.exceeded"
        assert wait_for(lambda: same_counters(before, snapshot(redis_cluster.url, True, prefix))), \
            ("the refusal by the tenant's budget kept the user's rate-limit charge", before,
             snapshot(redis_cluster.url, True, prefix), stack.procs["authz"].output()[-3000:])

        # One master dies: users whose slots live elsewhere are served, within the timeout, no 500.
        victim = next(n for n in range(3) if n != tenant_node and n != 0)
        proc = redis_cluster.procs[victim]
        proc.signal(signal.SIGKILL)
        proc.proc.wait(5)
        try:
            answers: dict[int, list[tuple[int, float]]] = {0: [], victim: []}
            for _ in range(15):
                for node in (0, victim):
                    t = s.token(users[node], roles=["accounting"])
                    started = time.monotonic()
                    r = s.http.get("/v1/models", headers=s.auth(t))
                    answers[node].append((r.status_code, time.monotonic() - started))
            assert {st for st, _ in answers[0]} == {200}, answers[0]
            assert {st for st, _ in answers[victim]} == {503}, answers[victim]
            slowest = max(secs for node in answers for _, secs in answers[node])
            assert slowest < timeout_ms / 1000 + 0.15, slowest
            ready = httpx.get(f"{stack.authz_http}/readyz").json()["components"]["store"]
            assert wait_for(lambda: str(redis_cluster.ports[victim]) in
                            httpx.get(f"{stack.authz_http}/readyz").json()["components"]["store"]["detail"])
            del ready
        finally:
            redis_cluster.start_node(victim, redis_cluster.ports[victim])
        t = s.token(users[victim], roles=["accounting"])
        assert wait_for(lambda: s.http.get("/v1/models", headers=s.auth(t)).status_code == 200, timeout=15)
    redis_cluster.wait_ok()


def test_cluster_first_seed_dead_at_start_the_next_seed_serves(redis_cluster, tmp_path):
    """``redis_url`` names a node that is down when the sidecar starts: the slot map comes from the
    next of ``cluster_seeds``, and limits are counted on the Cluster from the first request."""
    dead = free_port()
    limits = {"rate_limits": [{"id": "per-user", "key": ["user"], "rate": "100/hour", "burst": 100,
                               "on_store_error": "fail_closed"}]}

    def seeds(cfg: dict) -> None:
        cfg["store"]["cluster_seeds"] = [f"127.0.0.1:{dead}", *[f"127.0.0.1:{p}" for p in redis_cluster.ports]]
    cfg, prefix = write_config(tmp_path, f"redis://127.0.0.1:{dead}/0", limits, cluster=True, edit=seeds)
    with Stack(authz_config=cfg) as stack:
        s = Running(stack)
        store = httpx.get(f"{stack.authz_http}/readyz").json()["components"]["store"]
        assert store["ok"] and not store["detail"], store
        token = s.token("sam", roles=["accounting"])
        assert [s.http.get("/v1/models", headers=s.auth(token)).status_code for _ in range(3)] == [200] * 3
        assert list(snapshot(redis_cluster.url, True, prefix)) == [f"{prefix}rl:{{user=sam}}:per-user"]


# -- the overshoot bound --------------------------------------------------------------------------

@pytest.mark.parametrize(("bytes_per_token", "given"), [
    (3.0, [1] * 300),    # token ids: 300 tokens in ~900 bytes; each id counts one: estimate = usage
    (30.0, "x" * 1200),  # an estimate of ~1/8 of the usage (300 tokens): the budget overshoots
])
def test_concurrent_embeddings_overshoot_at_most_what_exceeded_the_estimates(redis_url, tmp_path,
                                                                            bytes_per_token, given):
    """20 concurrent requests against a budget: spend ends at most the budget plus, over the
    requests served, what each used beyond its estimate (zero when the estimates cover usage)."""
    limit = 2_000
    limits = {"budgets": [{"id": "daily-tokens", "key": ["user"], "limit": limit}],
              "estimate": {"bytes_per_token": bytes_per_token}}
    cfg, prefix = write_config(tmp_path, redis_url, limits)
    with Stack(authz_config=cfg) as stack:
        s = Running(stack)
        token = s.token("erin", roles=["accounting"])
        raw = json.dumps({"model": "gpt-general", "input": given}).encode()
        estimate = max(math.ceil(len(raw) / bytes_per_token), len(given) if isinstance(given, list) else 0)

        async def one(http: httpx.AsyncClient) -> int:
            r = await http.post("/v1/embeddings", content=raw,
                                headers={**s.auth(token), "content-type": "application/json"})
            if r.status_code == 429:
                return 0
            assert r.status_code == 200, r.text
            return r.json()["usage"]["total_tokens"]

        async def run() -> list[int]:
            async with httpx.AsyncClient(base_url=stack.url, timeout=20) as http:
                return await asyncio.gather(*(one(http) for _ in range(20)))

        used = asyncio.run(run())
        served = [u for u in used if u]
        assert served and all(u == 300 for u in served), used
        key = f"{prefix}bg:{{user=erin}}:daily-tokens:{time.strftime('%Y-%m-%d', time.gmtime())}"
        client = redis.Redis.from_url(redis_url)
        try:
            assert wait_for(lambda: int(client.get(key) or 0) == sum(served)), (client.get(key), served)
            spent = int(client.get(key))
        finally:
            client.close()
        beyond = sum(max(0, u - estimate) for u in served)
        print(f"estimate {estimate}, served {len(served)}, spent {spent}, bound {limit + beyond}")
        assert spent <= limit + beyond, (spent, limit, beyond)
        if beyond == 0:
            assert len(served) < 20  # the budget did refuse
