"""What `make bench` measures: one entry per scenario in SCENARIOS.

A scenario is a name, what answers Envoy's ext_authz call (nothing, the do-nothing servicer, or
authz with a config), the request wrk sends, whether it needs Redis or the dev token issuer,
and optionally the target a roadmap issue set for it. Add a scenario by appending one entry;
configs and requests are functions because they depend on ports known only at run time.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from authz.dev.issuer import mint_token
from authz.dev.stack import REFERENCE_CONFIG

Backend = Literal["none", "noop", "authz"]


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""


@dataclasses.dataclass(frozen=True)
class Context:
    """What a scenario's config and request may depend on, known once its processes run."""

    workdir: Path
    issuer_url: str = ""
    redis_url: str | None = None


@dataclasses.dataclass(frozen=True)
class Target:
    """Throughput at least ``ratio`` of the ``baseline`` scenario's (``source`` says who asked)."""

    baseline: str
    ratio: float
    source: str

    def describe(self) -> str:
        return f">= {self.ratio:.0%} of {self.baseline}"


@dataclasses.dataclass(frozen=True)
class LatencyTarget:
    """p50 latency at most ``added_ms`` above the ``baseline`` scenario's (``source`` says who asked)."""

    baseline: str
    added_ms: float
    source: str

    def describe(self) -> str:
        return f"p50 <= {self.baseline} + {self.added_ms:g} ms"


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    backend: Backend
    config: Callable[[Context], dict[str, Any]] | None = None   # authz's config (backend "authz")
    request: Callable[[Context], Request] = dataclasses.field(default=lambda ctx: mcp_call())
    redis: bool = False              # start a private redis-server; Context.redis_url points at it
    issuer: bool = False             # start the dev token issuer; Context.issuer_url points at it
    target: Target | None = None
    noop_args: tuple[str, ...] = ()  # extra arguments for bench.noop_authz (backend "noop")
    redis_round_trips: float | None = None   # at most this many Redis round trips per request
    latency_target: LatencyTarget | None = None
    connections: int | None = None   # wrk connections, when not the run's (--connections)

    def __post_init__(self) -> None:
        if (self.backend == "authz") != (self.config is not None):
            raise ValueError(f"scenario {self.name}: a config is needed exactly when authz answers")


# -- requests: what a real client sends (a few headers, a small JSON body) --------------------

MCP_TOOLS_CALL = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                             "params": {"name": "whoami", "arguments": {"verbose": False}}}).encode()


def mcp_call(token: str | None = None) -> Request:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": "2025-06-18", "user-agent": "authz-bench/1"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return Request("POST", "/mcp", headers, MCP_TOOLS_CALL)


def signed_in_mcp_call(ctx: Context) -> Request:
    """A tools/call with a bearer token from the dev issuer (verified once, then cached)."""
    token = mint_token(sub="oscar", roles=["accounting"], scopes=["tools:calendar"], client="bench",
                       issuer=ctx.issuer_url, dev_dir=ctx.workdir / "dev", ttl=6 * 3600)
    return mcp_call(token)


# A 4 KB chat prompt with findings (emails, a card, customer names): what redaction costs
# through Envoy is measured on it, against the same stack with redaction off.
CHAT_4K = json.dumps({"model": "gpt-general", "messages": [
    {"role": "system", "content": "You are a helpful assistant for the finance team. " * 16},
    {"role": "user", "content": ("Forecast for Acme Corp and Umbrella Health: revenue grows in every region "
                                 "while costs stay flat across the quarter. " * 26)
                                + "Contact oscar@acme.com or dana@globex.example, card 4539 1488 0343 6467 12/27, "
                                  "call 212 555 0147."},
]}).encode()
assert 3800 <= len(CHAT_4K) <= 4400, len(CHAT_4K)


def signed_in_chat(ctx: Context) -> Request:
    token = mint_token(sub="oscar", roles=["accounting"], scopes=[], client="bench",
                       issuer=ctx.issuer_url, dev_dir=ctx.workdir / "dev", ttl=6 * 3600)
    return Request("POST", "/v1/chat/completions", {"content-type": "application/json",
                                                    "authorization": f"Bearer {token}",
                                                    "user-agent": "authz-bench/1"}, CHAT_4K)


# -- authz configs ---------------------------------------------------------------------------

def bench_basics(*, decision_log: bool = False) -> dict[str, Any]:
    """No debug headers, no reload polling, logs only for problems unless ``decision_log``
    (then one JSON line per decision, on stdout, which the bench reads as a log collector would)."""
    return {"server": {"debug_headers": False},
            "log": {"format": "json", "decisions": decision_log,
                    "level": "info" if decision_log else "warning"},
            "reload": {"poll_seconds": 0}}


def allow_all(*, decision_log: bool = False) -> Callable[[Context], dict[str, Any]]:
    """The pipeline with nothing to do: anonymous, allow by default."""
    def config(ctx: Context) -> dict[str, Any]:
        return {**bench_basics(decision_log=decision_log), "identity": {"anonymous_paths": ["/"]},
                "policy": {"default": "allow"}}
    return config


def reference(*, policy: bool, assertion: bool = True, audit: bool = False, rate_limit: bool = False,
              binding: str = "request", durability: str | None = None,
              redaction: bool = False) -> Callable[[Context], dict[str, Any]]:
    """deploy/authz/authz.yaml reduced to the stages a scenario measures: identity always (its
    issuer pointed at the bench's), the reference policy or allow, and optionally the signed
    assertion, the audit log and one per-user rate limit in Redis (never reached)."""
    def config(ctx: Context) -> dict[str, Any]:
        cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
        cfg.update(bench_basics())
        cfg["store"] = {"redis_url": ctx.redis_url or "", "timeout_ms": 100}
        cfg["identity"]["issuers"][0]["issuer"] = ctx.issuer_url
        cfg["identity"]["assertion"]["enabled"] = assertion
        cfg["identity"]["assertion"]["binding"] = binding
        if not policy:
            cfg["policy"] = {"default": "allow"}
        cfg["routing"] = {"enabled": False}
        if redaction:
            for rule in cfg["redaction"]["rules"]:
                rule.pop("approval", None)
        else:
            cfg["redaction"] = {"enabled": False}
        cfg["audit"] = {"enabled": audit, "directory": str(ctx.workdir / "audit")}
        if durability is not None:  # else the default (audit.durability)
            cfg["audit"]["durability"] = durability
        cfg["limits"] = {}
        if rate_limit:
            if not ctx.redis_url:
                raise ValueError("the rate limit scenario needs Redis")
            cfg["limits"] = {"rate_limits": [{"id": "per-user", "key": ["user"], "rate": "1000000/s"}]}
        return cfg
    return config


# -- the list --------------------------------------------------------------------------------

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("envoy", "Envoy alone, direct response (what Envoy costs)", "none"),
    Scenario("floor", "+ ext_authz to a do-nothing Python servicer (the gRPC hop)", "noop"),
    # The same hop carrying the signed-in request (a ~1 KB bearer token more for wrk, Envoy and
    # gRPC to move): what identity, policy and limits are compared with, so a target measures
    # authz's work on the request and not the size of the request itself.
    Scenario("floor+token", "the floor with the signed-in request (bearer token) of the "
             "scenarios below", "noop", request=signed_in_mcp_call, issuer=True),
    # authz serves on uvloop by default (server.event_loop), which makes the hop itself cheaper:
    # this is the same do-nothing servicer on uvloop, to show how much of any margin that is.
    Scenario("floor+token+uvloop", "floor+token with the do-nothing servicer on uvloop", "noop",
             request=signed_in_mcp_call, issuer=True, noop_args=("--event-loop", "uvloop")),
    Scenario("authz", "+ ext_authz to authz, allow-all (anonymous path, default allow)", "authz",
             allow_all()),
    Scenario("authz+decision-log", "authz with a JSON decision log line per request", "authz",
             allow_all(decision_log=True)),
    Scenario("identity", "+ bearer token (cached) and signed identity assertion", "authz",
             reference(policy=False), signed_in_mcp_call, issuer=True,
             target=Target("floor+token", 0.85, "issue 3")),
    Scenario("identity-caller-assertion", "identity with the assertion bound to the caller "
             "(binding: caller, re-signed every 30 s)", "authz",
             reference(policy=False, binding="caller"), signed_in_mcp_call, issuer=True),
    Scenario("identity-no-assertion", "identity without the signed assertion", "authz",
             reference(policy=False, assertion=False), signed_in_mcp_call, issuer=True),
    Scenario("policy", "+ reference MCP policy on the tools/call body", "authz",
             reference(policy=True), signed_in_mcp_call, issuer=True,
             target=Target("floor+token", 0.80, "issue 4")),
    Scenario("policy+audit", "policy with the tamper-evident audit log on (default durability: "
             "answered, each decision record written before Check answers)", "authz",
             reference(policy=True, audit=True), signed_in_mcp_call, issuer=True,
             target=Target("policy", 0.85, "issue 17")),
    Scenario("policy+audit-queued", "policy with the audit log, durability queued (written within "
             "100 ms after the answer)", "authz",
             reference(policy=True, audit=True, durability="queued"), signed_in_mcp_call, issuer=True,
             target=Target("policy", 0.95, "issue 7")),
    Scenario("ratelimit", "policy + one per-user rate limit in Redis", "authz",
             reference(policy=True, rate_limit=True), signed_in_mcp_call, issuer=True, redis=True,
             target=Target("floor+token", 0.75, "issue 5"), redis_round_trips=1),
    # What redaction adds to one request's latency: measured with one connection (with 32, p50
    # is the queue in front of the sidecar, i.e. throughput, which the scenarios above measure).
    Scenario("chat-4k", "policy on a 4 KB chat prompt with findings, redaction off (1 connection)", "authz",
             reference(policy=True), signed_in_chat, issuer=True, connections=1),
    Scenario("chat-4k+redaction", "the same prompt with the reference redaction rules (masked, "
             "placeholders, the body rewritten by Check and swapped in by Process; 1 connection)", "authz",
             reference(policy=True, redaction=True), signed_in_chat, issuer=True, connections=1,
             latency_target=LatencyTarget("chat-4k", 1.0, "issue 15")),
)


def by_name(names: list[str] | None, scenarios: tuple[Scenario, ...] = SCENARIOS) -> list[Scenario]:
    """The named scenarios in list order, plus the ones their targets compare against (the
    floor always: every result is reported relative to it). None means all."""
    known = {s.name: s for s in scenarios}
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(unknown)}; known: {', '.join(known)}")
    wanted: set[str] = set()
    todo = [*(names or known), "floor"]
    while todo:
        name = todo.pop()
        if name in wanted or name not in known:
            continue
        wanted.add(name)
        if known[name].target is not None:
            todo.append(known[name].target.baseline)
        latency = known[name].latency_target
        if latency is not None:
            todo.append(latency.baseline)
    return [s for s in scenarios if s.name in wanted]
