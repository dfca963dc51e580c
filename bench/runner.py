"""Run one scenario: start what it needs on free ports, check one request by hand, warm up,
measure with wrk, and stop everything it started, whatever happens."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from authz.dev.stack import ROOT, ManagedProcess, Ports, RedisNotFound, Stack, http_ok, port_open, start_redis
from bench import cpu, envoy_bench
from bench.load import run_wrk
from bench.scenarios import Context, Request, Scenario

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclasses.dataclass(frozen=True)
class Settings:
    duration: float = 5.0
    warmup: float = 2.0
    connections: int = 32
    wrk_threads: int = 1
    envoy_concurrency: int = 1
    authz_workers: int = 1


class ScenarioFailed(RuntimeError):
    """The scenario could not be measured; the message says why and carries the processes' output."""


class ScenarioSkipped(RuntimeError):
    """Something the scenario needs is not installed here (the message says how to get it)."""


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while stopping processes, so a second Ctrl-C cannot leave one
    running; a held signal arrives (and interrupts the bench) right after."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def probe(url: str, req: Request) -> tuple[int, str]:
    """Send the scenario's request once: a refused request would measure the wrong thing."""
    r = urllib.request.Request(url, data=req.body or None, headers=dict(req.headers), method=req.method)
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, resp.read(2000).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000).decode("utf-8", "replace")


class RedisCounter:
    """Round trips and commands a Redis server served between two readings.

    Round trips are the server's socket reads (``total_reads_processed``): one per request a
    client sends and waits for, however many commands it pipelines. Commands (commandstats)
    include those a Lua script runs inside its one round trip. Our own INFO calls (one
    connection, one read each) are subtracted.
    """

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.reads, self.commands = self._read()

    def _read(self) -> tuple[int, int]:
        stats = self.client.info("all")
        commands = sum(v["calls"] for k, v in stats.items()
                       if k.startswith("cmdstat_") and k != "cmdstat_info")
        return int(stats["total_reads_processed"]), commands

    def since(self, requests: int) -> dict[str, float]:
        reads, commands = self._read()
        self.client.close()
        per = max(1, requests)
        return {"redis_round_trips_per_request": round((reads - self.reads - 1) / per, 3),
                "redis_commands_per_request": round((commands - self.commands) / per, 3)}


def run_scenario(sc: Scenario, settings: Settings, workdir: Path) -> dict[str, Any]:
    """Measure ``sc``: its LoadResult fields plus CPU per request, and Redis commands per request
    when it uses Redis. Raises ScenarioFailed (processes' output included) when it cannot."""
    workers = settings.authz_workers if sc.redis else 1  # more than one needs Redis
    ports = Ports.free(workers=workers)
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(ports=ports, workdir=workdir, upstreams=False, issuer=sc.issuer, authz=False, workers=workers)
    try:
        ctx = _start(sc, settings, stack)
        return _measure(sc, settings, stack, ctx)
    except ScenarioFailed:
        raise
    except RedisNotFound as exc:
        raise ScenarioSkipped(str(exc)) from exc
    except (RuntimeError, OSError, ValueError) as exc:
        raise ScenarioFailed(f"{type(exc).__name__}: {exc}\n{stack.logs()}") from exc
    finally:
        with signals_held():
            stack.stop()


def _start(sc: Scenario, settings: Settings, stack: Stack) -> Context:
    ports = stack.ports
    redis_url = None
    if sc.redis:
        redis_url, redis_proc = start_redis(stack.workdir / "redis")
        stack.procs["redis"] = redis_proc   # registered first, stopped last
    if sc.issuer:
        stack.start_issuer()
    ctx = Context(workdir=stack.workdir, issuer_url=stack.issuer_url, redis_url=redis_url)
    if sc.backend == "noop":
        argv = [sys.executable, "-m", "bench.noop_authz", "--port", str(ports.authz_grpc), *sc.noop_args]
        noop = ManagedProcess("noop", argv, cwd=ROOT).start()
        stack.procs["noop"] = noop
        noop.wait_ready(lambda: port_open(ports.authz_grpc), cancel=stack.cancel)
    elif sc.backend == "authz":
        assert sc.config is not None
        config = stack.workdir / "authz.yaml"
        config.write_text(yaml.safe_dump(sc.config(ctx), sort_keys=False))
        stack.start_authz(config)
    envoy_config = stack.workdir / "envoy.yaml"
    envoy_config.write_text(envoy_bench.render(ports, ext_authz=sc.backend != "none", workers=stack.workers))
    argv = envoy_bench.envoy_argv(envoy_config, concurrency=settings.envoy_concurrency)
    envoy = ManagedProcess("envoy", argv, cwd=ROOT).start()
    stack.procs["envoy"] = envoy
    envoy.wait_ready(lambda: http_ok(f"http://127.0.0.1:{ports.envoy_admin}/ready"), timeout=60,
                     cancel=stack.cancel)
    return ctx


def _measure(sc: Scenario, settings: Settings, stack: Stack, ctx: Context) -> dict[str, Any]:
    req = sc.request(ctx)
    url = f"{stack.url}{req.path}"
    status, text = probe(url, req)
    if status != 200:
        raise ScenarioFailed(f"its request is answered {status} ({text.strip()[:300]}), not 200\n"
                             f"{stack.logs()}")
    connections = sc.connections or settings.connections
    load = {"url": url, "seconds": settings.warmup, "connections": connections,
            "threads": settings.wrk_threads, "method": req.method, "headers": req.headers, "body": req.body}
    if settings.warmup > 0:
        run_wrk(**load)
    pids = {name: p.pid for name, p in stack.procs.items() if name in ("envoy", "noop", "authz", "redis")}
    redis_counter = RedisCounter(ctx.redis_url) if ctx.redis_url else None
    before = cpu.CpuSample.take(pids)
    started = time.monotonic()
    result = run_wrk(**{**load, "seconds": settings.duration})
    wall = time.monotonic() - started
    after = cpu.CpuSample.take(pids)
    out: dict[str, Any] = {"status": "ok", **dataclasses.asdict(result)}
    out.update(cpu.usage_between(before, after, wall_seconds=wall, requests=result.requests))
    if redis_counter is not None:
        out.update(redis_counter.since(result.requests))
    dead = [name for name, p in stack.procs.items() if not p.alive()]
    if dead:
        raise ScenarioFailed(f"{', '.join(dead)} exited during the run\n{stack.logs()}")
    return out
