"""CPU per Check without the network: a steadier figure for what a stage adds.

Through Envoy on a shared two-core box, throughput moves by several percent from one burst to
the next: two stacks of the *same* config, measured in alternating 2-second bursts, came out at
0.83-1.09 of each other. A stage that costs 3-5% of the sidecar cannot be told apart from that.
Here each named scenario's pipeline is built in this one process from its bench config, and the
real ``AuthorizationServicer`` answers the scenario's own request, parsed from its wire bytes
as gRPC would. The differences from ``make bench``:
- the memory store instead of Redis;
- the dev issuer's keys inline instead of fetched.

The bursts run in turn, scenario after scenario, in alternating order; each burst is
``--checks`` Checks, ``--concurrency`` at a time. Each burst is followed by a pause longer than
the audit writer's tick, so a scenario's writer rounds fall inside its own burst. The figures are
CPU time per Check of the event loop's thread (under load the busy one: it bounds throughput
while the box has CPU to spare) and of the whole process (the audit writer's file writes run in
a thread beside it).

The fastest burst is the figure: the host's slow moments stretch the others, and the median is
shown beside it. Compare scenarios within one run: from run to run the host moves every figure.
README "Benchmarks" gives the audit's costs measured here. Under load through Envoy the same
Python costs about twice its time here, as the gRPC layer runs between every two Checks.

``python -m bench.inprocess [--scenario A,B ...] [--bursts N] [--checks N] [--concurrency N]``
Only scenarios whose request ends at Check are measured: the authz backend, no upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop
import yaml
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2

from authz.audit.log import AuditLog
from authz.config import parse_config
from authz.dev.issuer import jwks, load_or_create_key
from authz.envoy.servicers import AuthorizationServicer
from authz.runtime import Runtime
from authz.server import settle_heap
from bench.scenarios import SCENARIOS, Context, Scenario

# Check-only scenarios that compare a stage with a baseline (and that baseline).
DEFAULT = ("policy", "policy+audit", "policy+audit-queued")
ISSUER = "https://bench-issuer.invalid"  # never fetched: its keys are given to the config inline
HOST = "localhost:10000"


class Unmeasurable(ValueError):
    """The scenario cannot be measured here (the message says why)."""


@dataclasses.dataclass
class Subject:
    """One scenario's pipeline, its servicer and its request as wire bytes."""

    scenario: Scenario
    runtime: Runtime
    servicer: AuthorizationServicer
    request: bytes
    # CPU µs per Check, one a burst: the event loop's thread (the one that bounds throughput:
    # under load it is busy while the box has CPU to spare) and the whole process.
    bursts: list[float] = dataclasses.field(default_factory=list)
    process: list[float] = dataclasses.field(default_factory=list)


def check_request(sc: Scenario, ctx: Context, request_id: str) -> bytes:
    """``sc``'s request as Envoy's CheckRequest (body included, as with_request_body sends it)."""
    req = sc.request(ctx)
    msg = auth_pb2.CheckRequest()
    http = msg.attributes.request.http
    http.id, http.method, http.host, http.path = request_id, req.method, HOST, req.path
    for k, v in req.headers.items():
        http.headers[k.lower()] = v
    http.raw_body = req.body
    wire: bytes = msg.SerializeToString()
    return wire


def measurable(sc: Scenario) -> None:
    if sc.backend != "authz" or sc.config is None:
        raise Unmeasurable(f"{sc.name}: no authz pipeline to measure (backend {sc.backend})")
    if sc.upstream is not None:
        raise Unmeasurable(f"{sc.name}: a whole-path scenario (its request goes on to Process)")


async def build(sc: Scenario, workdir: Path) -> Subject:
    """``sc``'s pipeline from its bench config, pointed at an inline issuer and the memory store."""
    measurable(sc)
    assert sc.config is not None
    ctx = Context(workdir=workdir, issuer_url=ISSUER, redis_url="redis://unused.invalid")
    raw: dict[str, Any] = sc.config(ctx)
    for issuer in raw.get("identity", {}).get("issuers", []):
        issuer["jwks"] = jwks(load_or_create_key(workdir / "dev"))
    raw["store"] = {"redis_url": ""}
    config = parse_config(yaml.safe_dump(raw), env={})
    runtime = Runtime(workdir / "authz.yaml", config=config, sha256="0" * 64)
    await runtime.start()
    subject = Subject(sc, runtime, AuthorizationServicer(runtime), check_request(sc, ctx, "bench-inprocess"))
    answer = auth_pb2.CheckResponse.FromString(await subject.servicer.Check(
        auth_pb2.CheckRequest.FromString(subject.request), None))  # type: ignore[arg-type]
    if not answer.HasField("ok_response"):
        await runtime.close()
        raise Unmeasurable(f"{sc.name}: its request is refused ({answer.denied_response.status.code}): "
                           f"{answer.denied_response.body[:200]!r}")
    return subject


async def burst(subject: Subject, checks: int, concurrency: int) -> tuple[float, float]:
    """CPU µs per Check of one burst, the audit writer's rounds for it included: (the event
    loop's thread, the process)."""
    gate = asyncio.Semaphore(concurrency)
    check = subject.servicer.Check
    data = subject.request

    async def one() -> None:
        async with gate:
            # Parsed per Check, as gRPC's deserializer does.
            await check(auth_pb2.CheckRequest.FromString(data), None)  # type: ignore[arg-type]

    thread, process = time.thread_time(), time.process_time()
    await asyncio.gather(*(one() for _ in range(checks)))
    await asyncio.sleep(AuditLog.POLL_SECONDS * 1.5)
    return (time.thread_time() - thread) * 1e6 / checks, (time.process_time() - process) * 1e6 / checks


async def measure(scenarios: Sequence[Scenario], *, bursts: int, checks: int, concurrency: int,
                  workdir: Path) -> list[Subject]:
    subjects: list[Subject] = []
    collector = gc.get_threshold()
    try:
        for sc in scenarios:
            subjects.append(await build(sc, workdir / sc.name.replace("+", "-")))
        settle_heap()  # as `authz serve` does once it serves (undone below: a caller's process)
        for subject in subjects:  # warm: caches, lazily compiled patterns, the token cache
            await burst(subject, checks, concurrency)
        for n in range(bursts):
            for subject in (subjects if n % 2 == 0 else subjects[::-1]):
                loop_thread, process = await burst(subject, checks, concurrency)
                subject.bursts.append(loop_thread)
                subject.process.append(process)
    finally:
        for subject in subjects:
            await subject.runtime.close()
        gc.unfreeze()
        gc.set_threshold(*collector)
    return subjects


def report(subjects: Sequence[Subject]) -> list[str]:
    fastest = {s.scenario.name: min(s.bursts) for s in subjects}
    lines = [f"{'':<26} {'event loop thread':>19} {'process':>8}",
             f"{'scenario':<26} {'fastest':>9} {'median':>9} {'fastest':>8}  CPU µs per Check"]
    for s in subjects:
        line = (f"{s.scenario.name:<26} {fastest[s.scenario.name]:9.1f} {statistics.median(s.bursts):9.1f} "
                f"{min(s.process):8.1f}")
        target = s.scenario.target
        if target is not None and target.baseline in fastest:
            base = fastest[target.baseline]
            added = fastest[s.scenario.name] - base
            line += (f"  {added:+.1f} over {target.baseline} ({added / base * 100:+.1f}% of its Check here; "
                     f"through Envoy: throughput >= {target.ratio * 100:.0f}% of it, {target.source})")
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", action="append", metavar="NAME",
                   help=f"scenarios to measure, together (default: {','.join(DEFAULT)})")
    p.add_argument("--bursts", type=int, default=16, help="bursts per scenario (default 16)")
    p.add_argument("--checks", type=int, default=400, help="Checks per burst (default 400)")
    p.add_argument("--concurrency", type=int, default=32, help="Checks in flight (default 32, as wrk's connections)")
    args = p.parse_args(argv)
    if args.bursts < 1 or args.checks < 1 or args.concurrency < 1:
        p.error("--bursts, --checks and --concurrency must be >= 1")
    known = {s.name: s for s in SCENARIOS}
    names = list(dict.fromkeys(n for item in (args.scenario or [",".join(DEFAULT)]) for n in item.split(",") if n))
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"unknown scenario {', '.join(unknown)}")
    try:
        for n in names:
            measurable(known[n])
    except Unmeasurable as exc:
        p.error(str(exc))
    # The pipeline's warnings about this set-up (the memory store, generated keys) are expected.
    logging.getLogger("authz").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="authz-bench-inprocess-") as tmp:
        try:
            subjects = uvloop.run(measure([known[n] for n in names], bursts=args.bursts, checks=args.checks,
                                          concurrency=args.concurrency, workdir=Path(tmp)))
        except Unmeasurable as exc:
            print(f"bench.inprocess: {exc}", file=sys.stderr)
            return 1
    print("\n".join(report(subjects)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
