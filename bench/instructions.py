"""Instructions per request under callgrind: a figure that does not move with the neighbours.

Throughput and CPU time on a shared two-core box move by 5-30% from minute to minute; the
number of instructions the sidecar executes for one request does not. The scenario's stack is
started as usual except that the sidecar runs under ``valgrind --tool=callgrind`` with
instrumentation off (so it starts in seconds, not minutes). The bench then sends requests one at
a time through Envoy: a warm-up with instrumentation off (caches, lazily built regex DFAs,
connections), instrumentation on and a few more requests (callgrind's own first-time costs stay
out of the count), the counters zeroed, ``requests`` requests counted, the counters dumped. The
figure is the instructions (callgrind's Ir: every thread of the sidecar, gRPC's and the event
loop's) per request. Envoy, Redis and the client are not counted.

Run to run it moves by well under 1% (README "Benchmarks" shows three runs); a change of 5% in
what the sidecar does per request shows plainly.

``python -m bench.instructions [--scenario NAME] [--requests N] [--runs K]``; ``make bench``
counts the scenarios marked ``instructions=True`` once.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from authz.dev.stack import RedisNotFound, Stack
from bench import envoy_bench
from bench.runner import ScenarioFailed, ScenarioSkipped, Settings, _start, signals_held
from bench.scenarios import SCENARIOS, Scenario

REQUESTS = 200          # counted per run (~30 s under callgrind for the LLM path); at 100, the
                        # time-driven work (timers, idle wake-ups) moved the figure by up to 1%
WARMUP = 100            # before instrumentation (native speed, nearly)
WARMUP_INSTRUMENTED = 20
IDLE = 3.0              # seconds the idle sidecar is counted, for its rate
# Under callgrind the sidecar runs ~50x slower: Envoy's timeouts for the sidecar (0.5 s for
# Check, 2 s per Process message) are raised for these runs so that no request fails on time.
SLOW_TIMEOUT = "30s"


class ValgrindMissing(RuntimeError):
    """valgrind is not installed (the message says how to get it)."""


def ensure_valgrind(*, install: bool = True) -> tuple[str, str]:
    """valgrind and callgrind_control; installed with apt-get when missing and we are root."""
    found = shutil.which("valgrind"), shutil.which("callgrind_control")
    if all(found):
        return found[0] or "", found[1] or ""
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: valgrind is not on PATH; running `apt-get install -y valgrind`", flush=True)
        done = subprocess.run(["apt-get", "install", "-y", "-q", "valgrind"], capture_output=True, text=True)
        if done.returncode != 0:  # perhaps a stale package index
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "valgrind"], capture_output=True)
        return ensure_valgrind(install=False)
    raise ValgrindMissing("valgrind is not installed, so instructions per request are not counted: "
                          "Debian/Ubuntu `sudo apt-get install valgrind`, Fedora `sudo dnf install valgrind`")


def slow_sidecar_edit(cfg: dict[str, Any]) -> None:
    """Raise Envoy's timeouts for the sidecar (ext_authz, ext_proc) in a parsed config."""
    hcm = envoy_bench._connection_manager(cfg)
    for f in hcm["http_filters"]:
        tc = f.get("typed_config", {})
        inner = tc.get("extension_config", {}).get("typed_config", tc)
        if f["name"] == envoy_bench.EXT_AUTHZ:
            inner["grpc_service"]["timeout"] = SLOW_TIMEOUT
        elif f["name"] == envoy_bench.EXT_PROC:
            inner["grpc_service"]["timeout"] = SLOW_TIMEOUT
            inner["message_timeout"] = SLOW_TIMEOUT


def slow_store(cfg: dict[str, Any]) -> dict[str, Any]:
    """authz's config with a store timeout a sidecar under valgrind can meet (the scenario's
    100 ms would refuse some requests with 503)."""
    if isinstance(cfg.get("store"), dict) and cfg["store"].get("redis_url"):
        cfg["store"]["timeout_ms"] = 10_000
    return cfg


def _under_valgrind(sc: Scenario) -> Scenario:
    config = sc.config
    if config is None:
        return sc
    return dataclasses.replace(sc, config=lambda ctx: slow_store(config(ctx)))


def _slow_down(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    slow_sidecar_edit(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _send(conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str],
          body: bytes) -> int:
    conn.request(method, path, body=body or None, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def count(sc: Scenario, workdir: Path, *, requests: int = REQUESTS, warmup: int = WARMUP) -> dict[str, Any]:
    """Instructions per request of ``sc``'s sidecar (authz or the do-nothing servicer)."""
    if sc.backend == "none":
        raise ValueError(f"scenario {sc.name} has no sidecar to count")
    valgrind, control = ensure_valgrind()
    sc = _under_valgrind(sc)
    workdir.mkdir(parents=True, exist_ok=True)
    out_file = workdir / "callgrind.out"
    prefix = (valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}.%p",
              "--trace-children=yes")
    stack = Stack(workdir=workdir, upstreams=False, issuer=sc.issuer, authz=False)
    # Same hash seed every run: set and dict-of-str iteration orders then repeat.
    stack.env["PYTHONHASHSEED"] = "0"
    t0 = time.monotonic()
    try:
        if sc.backend == "authz":
            ctx = _start(sc, Settings(), stack, sidecar_prefix=prefix, sidecar_timeout=300,
                         envoy_config_edit=_slow_down)
        else:
            ctx = _start(sc, Settings(), stack, sidecar_prefix=prefix, envoy_config_edit=_slow_down)
        req = sc.request(ctx)
        t1 = time.monotonic()
        sidecar = stack.procs["authz" if sc.backend == "authz" else "noop"]
        conn = http.client.HTTPConnection("127.0.0.1", stack.ports.envoy, timeout=120)
        headers = dict(req.headers)

        def send(n: int) -> list[int]:
            return [s for s in (_send(conn, req.method, req.path, headers, req.body) for _ in range(n))
                    if s != 200]

        bad = send(warmup)
        t2 = time.monotonic()
        subprocess.run([control, "--instr=on", str(sidecar.pid)], check=True, capture_output=True, timeout=60)
        bad += send(WARMUP_INSTRUMENTED)
        time.sleep(0.5)   # the last request's completion (settling, audit) done before zeroing
        zeroed = _control(control, "--zero", sidecar.pid)
        started = time.monotonic()
        failed = send(requests)
        seconds = time.monotonic() - started
        time.sleep(0.5)   # ... and counted
        total, counted_seconds = _dump(control, sidecar.pid, workdir), time.monotonic() - zeroed
        _keep(workdir, sc.name)
        # What the sidecar does when idle (timers, health checks, the audit writer's ticks) grows
        # with the run's length, which a busy machine stretches: counted alone for IDLE seconds,
        # it is taken out at its rate.
        zeroed = _control(control, "--zero", sidecar.pid)
        time.sleep(IDLE)
        idle, idle_seconds = _dump(control, sidecar.pid, workdir), time.monotonic() - zeroed
        conn.close()
        idle_rate = idle / idle_seconds
        if failed:
            raise ScenarioFailed(f"{len(failed)} of the {requests} counted requests (and {len(bad)} of the "
                                 f"warm-up) were not answered 200 (first: {failed[0]})\n{stack.logs()}")
        return {"instructions_per_request": round((total - idle_rate * counted_seconds) / requests),
                "instructions_per_request_raw": round(total / requests),
                "idle_instructions_per_second": round(idle_rate), "requests": requests,
                "warmup_not_200": len(bad),
                "seconds": {"start": round(t1 - t0, 1), "warmup": round(t2 - t1, 1),
                            "instrumented": round(started - t2, 1), "counted": round(seconds, 1)}}
    except RedisNotFound as exc:
        raise ScenarioSkipped(str(exc)) from exc
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        if isinstance(exc, ScenarioFailed):
            raise
        raise ScenarioFailed(f"{type(exc).__name__}: {exc}\n{stack.logs()}") from exc
    finally:
        with signals_held():
            stack.stop()


def _keep(workdir: Path, name: str) -> None:
    """Copy the counted dumps to $BENCH_CALLGRIND_KEEP (a directory), for callgrind_annotate."""
    keep = os.environ.get("BENCH_CALLGRIND_KEEP")
    if not keep:
        return
    Path(keep).mkdir(parents=True, exist_ok=True)
    for dump in sorted(workdir.glob("callgrind.out.*.*")):
        shutil.copy(dump, Path(keep) / f"{name}.{dump.name}")


def _control(control: str, command: str, pid: int) -> float:
    """Send callgrind_control ``command``; the time it took effect (about)."""
    subprocess.run([control, command, str(pid)], check=True, capture_output=True, timeout=60)
    return time.monotonic()


def _dump(control: str, pid: int, workdir: Path) -> int:
    """Dump the counters and read the instructions counted since they were last zeroed."""
    for old in workdir.glob("callgrind.out.*.*"):
        old.unlink()
    _control(control, "--dump", pid)
    return _totals(workdir)


def _totals(workdir: Path) -> int:
    """The Ir total of the dumps just written (one per process of the sidecar)."""
    total, seen = 0, False
    for dump in sorted(workdir.glob("callgrind.out.*.*")):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:") or line.startswith("summary:"):
                total += int(line.split()[1])
                seen = True
                break
    if not seen:
        raise ScenarioFailed(f"callgrind wrote no dump with totals in {workdir}")
    return total


def main(argv: list[str] | None = None) -> int:
    counted = [s.name for s in SCENARIOS if s.instructions]
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", action="append", metavar="NAME",
                   help=f"scenarios to count (default: {', '.join(counted)})")
    p.add_argument("--requests", type=int, default=REQUESTS, help=f"requests counted (default {REQUESTS})")
    p.add_argument("--runs", type=int, default=1, help="count each scenario this many times (default 1)")
    args = p.parse_args(argv)
    known = {s.name: s for s in SCENARIOS}
    names = [n for item in (args.scenario or counted) for n in item.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"unknown scenario {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="authz-bench-ir-") as tmp:
        for name in names:
            figures = []
            for run in range(args.runs):
                started = time.monotonic()
                try:
                    r = count(known[name], Path(tmp) / f"{name}-{run}", requests=args.requests)
                except (ScenarioFailed, ScenarioSkipped, ValgrindMissing) as exc:
                    print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    return 1
                figures.append(r["instructions_per_request"])
                print(f"{name:<24} run {run + 1}: {r['instructions_per_request']:,} instructions/request "
                      f"(raw {r['instructions_per_request_raw']:,}, idle {r['idle_instructions_per_second']:,}/s) "
                      f"({time.monotonic() - started:.0f}s: {r['seconds']})", flush=True)
            if len(figures) > 1:
                spread = (max(figures) - min(figures)) / statistics.median(figures) * 100
                print(f"{name:<24} median {statistics.median(figures):,.0f}, spread {spread:.2f}%", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
