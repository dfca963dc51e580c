"""`make bench`: requests/s and p50/p99 latency through real Envoy, one scenario at a time.

- envoy      Envoy alone, answering with a direct response (what Envoy costs)
- floor      + ext_authz to a do-nothing Python servicer (the gRPC hop: our floor)
- authz      + ext_authz to the real sidecar with an allow-all config
- identity   + a bearer token verified per request (cached) and a signed assertion
- identity-no-assertion   the same without the signed assertion (its cost, separately)
- policy     + the reference MCP policy on a tools/call body
- policy+audit  + the audit log (compare with policy: audit is off the request path)
- ratelimit  + one rate limit in Redis (reports Redis round trips per request)

Every scenario but `envoy` uses the ext_authz settings of deploy/envoy/envoy.yaml (request body
included); the route answers directly so no upstream is measured. Envoy runs with one worker:
on a two-core box that leaves the other core to the sidecar, as a sidecar pod would.
Each scenario is a name, an authz config and a request: add one by appending to SCENARIOS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

from authz.demo.issuer import mint_token
from authz.devstack import REFERENCE_CONFIG, ROOT, ManagedProcess, Ports, Stack, port_open, start_redis
from bench.load import LoadResult, ensure_wrk, run_wrk

RESULTS = ROOT / "bench" / "results"
MCP_CALL = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "whoami", "arguments": {}}}).encode()
CHAT = json.dumps({"model": "gpt-general", "messages": [{"role": "user", "content": "hello"}]}).encode()


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclasses.dataclass
class Scenario:
    name: str
    backend: str                                        # none | noop | authz
    config: Callable[[Stack, str | None], dict] | None = None
    request: Callable[[Stack], Request] = lambda s: Request("POST", "/mcp", {"content-type": "application/json"},
                                                            MCP_CALL)
    redis: bool = False
    issuer: bool = False


def base_config(**sections: Any) -> dict:
    cfg: dict[str, Any] = {"log": {"format": "json", "decisions": False, "level": "warning"},
                           "reload": {"poll_seconds": 0}}
    cfg.update(sections)
    return cfg


def allow_all(stack: Stack, redis_url: str | None) -> dict:
    return base_config(identity={"anonymous_paths": ["/"]}, policy={"default": "allow"})


def reference(stack: Stack, redis_url: str | None, *, policy: bool, audit: bool = False,
              assertion: bool = True) -> dict:
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    cfg.update(base_config())
    cfg["server"] = {"debug_headers": False}
    cfg["identity"]["issuers"][0]["issuer"] = stack.issuer_url
    if not policy:
        cfg["policy"] = {"default": "allow"}
    cfg["routing"] = {"enabled": False}
    cfg["audit"] = {"enabled": audit, "directory": str(stack.workdir / "audit")}
    cfg["redaction"] = {"enabled": False}
    cfg["limits"] = {}
    cfg["identity"]["assertion"]["enabled"] = assertion
    if redis_url:
        cfg["store"] = {"redis_url": redis_url, "timeout_ms": 100}
        cfg["limits"] = {"rate_limits": [{"id": "per-user", "key": ["user"], "rate": "1000000/s"}]}
    return cfg


def token_request(stack: Stack) -> Request:
    token = mint_token(sub="oscar", roles=["accounting"], scopes=["tools:calendar"], client="bench",
                       issuer=stack.issuer_url, dev_dir=stack.workdir / "dev")
    return Request("POST", "/mcp", {"content-type": "application/json", "authorization": f"Bearer {token}"},
                   MCP_CALL)


SCENARIOS = [
    Scenario("envoy", "none"),
    Scenario("floor", "noop"),
    Scenario("authz", "authz", allow_all),
    Scenario("identity", "authz", lambda s, r: reference(s, None, policy=False), token_request, issuer=True),
    Scenario("identity-no-assertion", "authz", lambda s, r: reference(s, None, policy=False, assertion=False),
             token_request, issuer=True),
    Scenario("policy", "authz", lambda s, r: reference(s, None, policy=True), token_request, issuer=True),
    Scenario("policy+audit", "authz", lambda s, r: reference(s, None, policy=True, audit=True), token_request,
             issuer=True),
    Scenario("ratelimit", "authz", lambda s, r: reference(s, r, policy=True), token_request, redis=True,
             issuer=True),
]


def bench_envoy(keep_authz: bool) -> Callable[[dict], None]:
    """The reference config, with the route answering directly and only ext_authz (or nothing)."""
    def edit(cfg: dict) -> None:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"] = []
        hcm["route_config"]["virtual_hosts"][0]["routes"] = [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
        hcm["http_filters"] = [f for f in hcm["http_filters"]
                               if f["name"] == "envoy.filters.http.router"
                               or (keep_authz and f["name"] == "envoy.filters.http.ext_authz")]
    return edit


def redis_script_calls(url: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


def run_scenario(sc: Scenario, *, seconds: float, warmup: float, connections: int, workdir: Path
                 ) -> dict[str, Any]:
    ports = Ports.free()
    redis_proc = None
    redis_url = None
    stack = Stack(ports=ports, workdir=workdir / sc.name, envoy_edit=bench_envoy(sc.backend != "none"),
                  upstreams=False, issuer=sc.issuer, authz=False)
    try:
        stack.workdir.mkdir(parents=True, exist_ok=True)
        if sc.redis:
            redis_url, redis_proc = start_redis(stack.workdir / "redis")
        if sc.issuer:
            stack.start_issuer()
        if sc.backend == "noop":
            proc = ManagedProcess("noop", [sys.executable, "-m", "bench.noop_authz", "--port",
                                           str(ports.authz_grpc)], cwd=ROOT).start()
            stack.procs["noop"] = proc
            proc.wait_ready(lambda: port_open(ports.authz_grpc))
        elif sc.backend == "authz":
            cfg_path = stack.workdir / "authz.yaml"
            cfg_path.write_text(yaml.safe_dump(sc.config(stack, redis_url)))
            stack.start_authz(cfg_path)
        stack.start_envoy()
        req = sc.request(stack)
        url = f"{stack.url}{req.path}"
        # One request by hand first: a scenario that is refused would measure the wrong thing.
        import httpx

        check = httpx.request(req.method, url, headers=req.headers, content=req.body, timeout=10)
        if check.status_code != 200:
            raise RuntimeError(f"scenario {sc.name}: the request is answered {check.status_code}: {check.text}"
                               f"\n{stack.logs()}")
        run_wrk(url, seconds=warmup, connections=connections, method=req.method, headers=req.headers,
                body=req.body)
        calls_before = redis_script_calls(redis_url) if redis_url else 0
        result: LoadResult = run_wrk(url, seconds=seconds, connections=connections, method=req.method,
                                     headers=req.headers, body=req.body)
        out = dataclasses.asdict(result)
        if redis_url:
            out["redis_round_trips_per_request"] = round(
                (redis_script_calls(redis_url) - calls_before) / max(1, result.requests), 3)
        return out
    finally:
        stack.stop()
        if redis_proc is not None:
            redis_proc.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_SECONDS", 8)))
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS],
                   help="run only these (repeatable); the floor always runs for the comparison")
    args = p.parse_args(argv)
    ensure_wrk()
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario or s.name == "floor"]
    print(f"authz bench: {platform.node()}, {os.cpu_count()} cpus, Envoy --concurrency 1, wrk 1 thread "
          f"{args.connections} connections, {args.duration:g}s per scenario after {args.warmup:g}s warm-up\n",
          flush=True)
    import tempfile

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as tmp:
        for sc in chosen:
            print(f"  running {sc.name} ...", flush=True)
            results[sc.name] = run_scenario(sc, seconds=args.duration, warmup=args.warmup,
                                            connections=args.connections, workdir=Path(tmp))
    floor = results["floor"]["requests_per_second"]
    print(f"\n{'scenario':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'of floor':>9}  notes")
    for name, r in results.items():
        notes = []
        if r["non_2xx"] or r["errors"]:
            notes.append(f"{r['non_2xx']} non-2xx, {r['errors']} socket errors")
        if "redis_round_trips_per_request" in r:
            notes.append(f"Redis round trips/request {r['redis_round_trips_per_request']}")
        rel = r["requests_per_second"] / floor * 100
        r["percent_of_floor"] = round(rel, 1)
        print(f"{name:<22} {r['requests_per_second']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{rel:>8.0f}%  {'; '.join(notes)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(
        {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "duration_s": args.duration,
         "connections": args.connections, "results": results}, indent=2))
    print(f"\nwritten to {RESULTS / 'latest.json'}\n")
    from bench import redaction

    redaction.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
