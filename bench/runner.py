"""Run one scenario: start what it needs on free ports, check one request by hand, warm up,
measure with wrk, and stop everything it started, whatever happens."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from authz.dev.stack import (
    ROOT,
    ManagedProcess,
    Ports,
    RedisNotFound,
    Stack,
    free_port,
    http_ok,
    port_open,
    start_redis,
)
from bench import cpu, envoy_bench, upstream
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
            return resp.status, resp.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(1 << 20).decode("utf-8", "replace")


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


def _start(sc: Scenario, settings: Settings, stack: Stack, *, sidecar_prefix: tuple[str, ...] = (),
           sidecar_timeout: float = 60, envoy_config_edit: Callable[[Path], None] | None = None) -> Context:
    """Start what ``sc`` needs on ``stack``'s ports. ``sidecar_prefix`` runs the sidecar (authz or
    the do-nothing servicer) under another program (valgrind: bench/instructions.py), given
    ``sidecar_timeout`` seconds to be ready; ``envoy_config_edit`` changes Envoy's config file
    before Envoy starts."""
    ports = stack.ports
    # The canned upstream starts first and is waited for last: its start overlaps the others'.
    upstream_ready = _start_upstream(sc, stack) if sc.upstream is not None else None
    redis_url = None
    if sc.redis:
        redis_url, redis_proc = start_redis(stack.workdir / "redis")
        stack.procs["redis"] = redis_proc   # registered first, stopped last
    if sc.issuer:
        stack.start_issuer()
    ctx = Context(workdir=stack.workdir, issuer_url=stack.issuer_url, redis_url=redis_url)
    if sc.backend == "noop":
        argv = [*sidecar_prefix, sys.executable, "-m", "bench.noop_authz", "--port", str(ports.authz_grpc),
                *sc.noop_args]
        noop = ManagedProcess("noop", argv, env=stack.env, cwd=ROOT).start()
        stack.procs["noop"] = noop
        noop.wait_ready(lambda: port_open(ports.authz_grpc), timeout=sidecar_timeout, cancel=stack.cancel)
    elif sc.backend == "authz":
        assert sc.config is not None
        config = stack.workdir / "authz.yaml"
        config.write_text(yaml.safe_dump(sc.config(ctx), sort_keys=False))
        if sidecar_prefix:
            _start_sidecar(stack, config, sidecar_prefix, sidecar_timeout)
        else:
            stack.start_authz(config)
    envoy_config = stack.workdir / "envoy.yaml"
    if upstream_ready is not None:
        upstream_port = upstream_ready()
        envoy_config.write_text(envoy_bench.render_path(ports, upstream_port, ext_proc=sc.ext_proc,
                                                        workers=stack.workers))
    else:
        envoy_config.write_text(envoy_bench.render(ports, ext_authz=sc.backend != "none", workers=stack.workers))
    if envoy_config_edit is not None:
        envoy_config_edit(envoy_config)
    argv = envoy_bench.envoy_argv(envoy_config, concurrency=settings.envoy_concurrency)
    envoy = ManagedProcess("envoy", argv, cwd=ROOT).start()
    stack.procs["envoy"] = envoy
    envoy.wait_ready(lambda: http_ok(f"http://127.0.0.1:{ports.envoy_admin}/ready"), timeout=60,
                     cancel=stack.cancel)
    return ctx


def _start_upstream(sc: Scenario, stack: Stack) -> Callable[[], int]:
    """Start the canned upstream (its own Envoy) answering what ``sc`` says; the returned call
    waits until it is ready and gives its port."""
    assert sc.upstream is not None
    port, admin = free_port(), free_port()
    config = stack.workdir / "upstream.yaml"
    config.write_text(upstream.render(port, admin, sc.upstream()))
    proc = ManagedProcess("upstream", upstream.envoy_argv(config), cwd=ROOT).start()
    stack.procs["upstream"] = proc

    def ready() -> int:
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), timeout=60, cancel=stack.cancel)
        return port
    return ready


def _start_sidecar(stack: Stack, config: Path, prefix: tuple[str, ...], timeout: float) -> ManagedProcess:
    """``authz serve`` as the dev stack starts it (Stack.start_authz), under ``prefix``."""
    p = stack.ports
    argv = [*prefix, sys.executable, "-m", "authz", "serve", "--config", str(config),
            "--grpc-address", f"127.0.0.1:{p.authz_grpc}", "--http-address", f"127.0.0.1:{p.authz_http}",
            "--workers", str(stack.workers)]  # unset, it would be the box's CPUs when Redis is configured
    proc = ManagedProcess("authz", argv, env=stack.env, cwd=ROOT).start()
    stack.procs["authz"] = proc
    proc.wait_ready(lambda: http_ok(f"{stack.authz_http}/readyz"), timeout=timeout, cancel=stack.cancel)
    return proc


# What each figure of a whole-path row adds up: the sidecar is whichever answers Check and Process.
SIDECARS = ("authz", "noop")
PATH_PROCESSES = ("sidecar", "envoy", "redis")


def path_totals(out: dict[str, Any]) -> None:
    """Add ``sidecar_cpu_us_per_request`` (authz or the do-nothing servicer) and
    ``path_cpu_us_per_request`` (sidecar + Envoy + Redis: not the upstream, not wrk) in place."""
    for name in SIDECARS:
        if f"{name}_cpu_us_per_request" in out:
            out["sidecar_cpu_us_per_request"] = out[f"{name}_cpu_us_per_request"]
    parts = [out.get(f"{name}_cpu_us_per_request") for name in PATH_PROCESSES]
    if out.get("sidecar_cpu_us_per_request") is not None and out.get("envoy_cpu_us_per_request") is not None:
        out["path_cpu_us_per_request"] = round(sum(p for p in parts if p is not None), 1)


def ext_proc_streams(admin: str) -> int:
    """ext_proc streams Envoy has opened (its ``ext_proc.streams_started`` counter; 0 without the
    filter)."""
    with urllib.request.urlopen(f"{admin}/stats?filter=streams_started", timeout=10) as resp:
        text = resp.read().decode()
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines()
               if line.split(":", 1)[0].endswith("ext_proc.streams_started"))


def _measure(sc: Scenario, settings: Settings, stack: Stack, ctx: Context) -> dict[str, Any]:
    req = sc.request(ctx)
    url = f"{stack.url}{req.path}"
    status, text = probe(url, req)
    if status != 200:
        raise ScenarioFailed(f"its request is answered {status} ({text.strip()[:300]}), not 200\n"
                             f"{stack.logs()}")
    wrong = [f"{w!r} missing" for w in sc.expect if w not in text] + [f"{w!r} present" for w in sc.absent if w in text]
    if wrong:
        raise ScenarioFailed(f"its answer is not the one expected ({', '.join(wrong)}): {text.strip()[:500]}\n"
                             f"{stack.logs()}")
    connections = sc.connections or settings.connections
    load = functools.partial(run_wrk, url, connections=connections, threads=settings.wrk_threads,
                             method=req.method, headers=req.headers, body=req.body)
    if settings.warmup > 0:
        load(seconds=settings.warmup)
    pids = {name: p.pid for name, p in stack.procs.items()
            if name in ("envoy", "noop", "authz", "redis", "upstream")}
    redis_counter = RedisCounter(ctx.redis_url) if ctx.redis_url else None
    admin = f"http://127.0.0.1:{stack.ports.envoy_admin}"
    streams = ext_proc_streams(admin) if sc.upstream is not None else None
    before = cpu.CpuSample.take(pids)
    started = time.monotonic()
    result = load(seconds=settings.duration)
    wall = time.monotonic() - started
    after = cpu.CpuSample.take(pids)
    out: dict[str, Any] = {"status": "ok", **dataclasses.asdict(result)}
    out.update(cpu.usage_between(before, after, wall_seconds=wall, requests=result.requests))
    path_totals(out)
    if streams is not None:
        # wrk counts the requests answered; a few in flight when it stopped opened a stream too.
        opened = ext_proc_streams(admin) - streams
        out["ext_proc_streams_per_request"] = round(opened / max(1, result.requests), 3)
    if redis_counter is not None:
        out.update(redis_counter.since(result.requests))
    dead = [name for name, p in stack.procs.items() if not p.alive()]
    if dead:
        raise ScenarioFailed(f"{', '.join(dead)} exited during the run\n{stack.logs()}")
    return out
