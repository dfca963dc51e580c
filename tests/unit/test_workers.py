"""Workers (issue 22): how many, where they listen, the config rule, one /metrics from many."""

from __future__ import annotations

import pytest

from authz.config import parse_config
from authz.errors import ConfigError
from authz.workers import merge, plan
from authz.workers.peers import owner


def test_more_than_one_worker_needs_redis_said_at_load():
    with pytest.raises(ConfigError) as exc:
        parse_config("server: {workers: 2}\n")
    assert "server.workers" in str(exc.value) and "store.redis_url" in str(exc.value)
    assert parse_config("server: {workers: 2}\nstore: {redis_url: 'redis://r:6379/0'}\n").server.workers == 2
    assert parse_config("server: {workers: 1}\n").server.workers == 1


def test_unset_workers_is_one_without_redis_and_the_cpus_with_it(monkeypatch):
    monkeypatch.setattr(plan, "available_cpus", lambda: 3)
    assert plan.worker_count(parse_config("{}")) == 1
    assert plan.worker_count(parse_config("store: {redis_url: 'redis://r:6379/0'}")) == 3
    assert plan.worker_count(parse_config("{}"), override=1) == 1


def test_cpus_follow_the_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(plan.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert plan.available_cpus(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert plan.available_cpus(tmp_path) == 4
    assert plan.available_cpus(tmp_path / "missing") == 4


def test_worker_ports_skip_the_http_port():
    assert plan.worker_addresses("127.0.0.1:9001", "127.0.0.1:9002", 3) == [
        "127.0.0.1:9001", "127.0.0.1:9003", "127.0.0.1:9004"]
    assert plan.worker_addresses("127.0.0.1:9001", "0.0.0.0:9090", 2) == ["127.0.0.1:9001", "127.0.0.1:9002"]


def test_keys_name_their_worker():
    assert owner("w1.abc_def") == 1 and owner("w12.x") == 12
    assert owner("abc") is None and owner("wx.abc") is None and owner("") is None


W0 = """# HELP authz_decisions_total Check decisions.
# TYPE authz_decisions_total counter
authz_decisions_total{decision="allow",reason="ok"} 3.0
authz_decisions_created{decision="allow",reason="ok"} 100.0
# HELP authz_component_up up
# TYPE authz_component_up gauge
authz_component_up{component="store"} 1.0
# HELP authz_inflight_requests inflight
# TYPE authz_inflight_requests gauge
authz_inflight_requests{rpc="check"} 2.0
# HELP authz_rpc_duration_seconds rpc
# TYPE authz_rpc_duration_seconds histogram
authz_rpc_duration_seconds_bucket{le="0.001",rpc="check"} 1.0
authz_rpc_duration_seconds_bucket{le="+Inf",rpc="check"} 3.0
authz_rpc_duration_seconds_count{rpc="check"} 3.0
authz_rpc_duration_seconds_sum{rpc="check"} 0.5
"""
W1 = W0.replace("} 3.0", "} 4.0").replace('{component="store"} 1.0', '{component="store"} 0.0').replace(
    "100.0", "50.0")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {k: v for fam in merge.parse(text).values() for k, v in fam.samples.items()}


def test_counters_and_histograms_add_up_gauges_by_their_meaning():
    out = _samples(merge.render(merge.merge([merge.parse(W0), merge.parse(W1)])))
    assert out[("authz_decisions_total", (("decision", "allow"), ("reason", "ok")))] == 7
    assert out[("authz_decisions_created", (("decision", "allow"), ("reason", "ok")))] == 50
    assert out[("authz_rpc_duration_seconds_count", (("rpc", "check"),))] == 7
    assert out[("authz_rpc_duration_seconds_bucket", (("le", "+Inf"), ("rpc", "check")))] == 7
    assert out[("authz_component_up", (("component", "store"),))] == 0  # one worker down on it: down
    assert out[("authz_inflight_requests", (("rpc", "check"),))] == 4


def test_a_dead_workers_counts_stay_in_the_sum():
    retired = merge.counting_only(merge.parse(W0))
    assert "authz_component_up" not in retired
    out = _samples(merge.render(merge.merge([retired, merge.parse(W1)])))
    assert out[("authz_decisions_total", (("decision", "allow"), ("reason", "ok")))] == 7


def test_process_on_another_worker_adopts_what_the_owners_check_kept(tmp_path):
    import asyncio

    from aiohttp import web

    from authz.model import Handoff
    from authz.redaction.restore import PlaceholderStore
    from authz.request import BodyStash
    from authz.workers.peers import Peers, install

    async def main() -> None:
        owner_stash, owner_places = BodyStash(), PlaceholderStore()
        sockets = {0: tmp_path / "w0.sock", 1: tmp_path / "w1.sock"}
        Peers(0, sockets, owner_stash, owner_places)  # names its keys w0.
        app = web.Application()
        install(app, owner_stash, owner_places)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(sockets[0])).start()
        body_key = owner_stash.put(b"original", b"rewritten")
        restore_key = owner_places.put({"[CUSTOMER_1]": ("customer", "Acme Corp")})
        assert body_key.startswith("w0.") and restore_key.startswith("w0.")

        stash, places = BodyStash(), PlaceholderStore()
        peers = Peers(1, sockets, stash, places)
        try:
            await peers.localize(Handoff(body_key=body_key, restore_key=restore_key))
            assert stash.take(body_key, b"original") == b"rewritten"
            assert places.take(restore_key) == {"[CUSTOMER_1]": ("customer", "Acme Corp")}
            assert len(owner_stash) == 0 and len(owner_places) == 0  # handed over once
            again = BodyStash()
            peers.stash = again
            await peers.localize(Handoff(body_key=body_key))  # gone: nothing adopted, Process refuses
            assert again.take(body_key, b"original") is None
            mine = stash.put(b"a", b"b")  # this worker's own key is never fetched
            await peers.localize(Handoff(body_key=mine))
            assert stash.take(mine, b"a") == b"b"
        finally:
            await peers.close()
            await runner.cleanup()

    asyncio.run(main())


def test_a_worker_stops_when_its_supervisor_is_gone(monkeypatch):
    import asyncio
    import signal

    from authz.workers import supervisor

    parents = iter([10, 10, 1])
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(supervisor.os, "getppid", lambda: next(parents))
    monkeypatch.setattr(supervisor.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    asyncio.run(supervisor.orphan_watch(10, interval=0.001))
    assert sent == [(supervisor.os.getpid(), signal.SIGTERM)]


def test_the_front_answers_from_a_worker_with_the_callers_address_and_nothing_of_others(tmp_path):
    import asyncio

    import aiohttp
    from aiohttp import web

    from authz.workers.front import PEER_HEADER, Front, trust_front_peer

    async def echo(request: web.Request) -> web.Response:
        response = web.json_response({"remote": request.remote, "cookie": request.headers.get("cookie"),
                                      "xff": request.headers.getall("x-forwarded-for", [])})
        response.set_cookie("session", "for-the-first-caller-only")
        return response

    async def main() -> None:
        worker = web.Application(middlewares=[trust_front_peer])
        worker.router.add_route("*", "/{tail:.*}", echo)
        wrun = web.AppRunner(worker)
        await wrun.setup()
        await web.UnixSite(wrun, str(tmp_path / "w0.sock")).start()
        front = Front({0: tmp_path / "w0.sock"}, alive=lambda i: True, pid=lambda i: 1)
        frun = web.AppRunner(front.app())
        await frun.setup()
        site = web.TCPSite(frun, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
                base = f"http://127.0.0.1:{port}"
                async with http.get(f"{base}/internal/take/body/w0.x") as r:
                    assert r.status == 404  # the workers' hand-over is not on the public port
                headers = [("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "5.6.7.8"),
                           (PEER_HEADER, "6.6.6.6")]
                async with http.get(f"{base}/oauth/authorize", headers=headers) as r:
                    first = await r.json()
                    assert "session=" in r.headers["set-cookie"]
                async with http.get(f"{base}/oauth/authorize") as r:
                    second = await r.json()
            assert first["remote"] == "127.0.0.1" and first["xff"] == ["1.2.3.4", "5.6.7.8"]
            assert second["cookie"] is None  # the first caller's cookie stayed with the first caller
        finally:
            await front.close()
            await frun.cleanup()
            await wrun.cleanup()

    asyncio.run(main())
