"""What `make bench` measures: one entry per scenario in SCENARIOS.

A scenario is a name, what answers Envoy's ext_authz call (nothing, the do-nothing servicer, or
authz with a config), the request wrk sends, whether it needs Redis or the dev token issuer,
and optionally the target a roadmap issue set for it. Add a scenario by appending one entry;
configs and requests are functions because they depend on ports known only at run time.

Two kinds (groups): *Check* scenarios put the reference ext_authz filter alone in front of a
direct response (what Check costs); *whole-path* scenarios (those with an ``upstream`` answer) run
deploy/envoy/envoy.yaml as deployed, ext_proc included, in front of a canned upstream (a second
Envoy, bench/upstream.py): what a user's request costs from end to end.
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
from bench import upstream
from bench.upstream import Answer

Backend = Literal["none", "noop", "authz"]
CHECK, PATH = "check", "path"


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
class CpuTarget:
    """CPU per request at most ``sidecar_us`` for the sidecar and ``path_us`` for the whole path
    (sidecar + Envoy + Redis), and/or the sidecar's (``what="sidecar"``) or the whole path's at
    most ``ratio`` times the ``baseline`` scenario's (``source`` says who asked)."""

    source: str
    sidecar_us: float | None = None
    path_us: float | None = None
    baseline: str | None = None
    ratio: float | None = None
    what: Literal["sidecar", "path"] = "path"

    def describe(self) -> str:
        parts = []
        if self.sidecar_us is not None:
            parts.append(f"sidecar <= {self.sidecar_us:,.0f} us")
        if self.path_us is not None:
            parts.append(f"path <= {self.path_us:,.0f} us")
        if self.baseline is not None and self.ratio is not None:
            parts.append(f"{self.what} <= {self.ratio:g}x {self.baseline}")
        return ", ".join(parts)


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
    upstream: Callable[[], Answer] | None = None   # a whole-path scenario: what the upstream answers
    ext_proc: bool = True            # whole path: keep the reference ext_proc filter
    cpu_target: CpuTarget | None = None
    default: bool = True             # run by `make bench` without --scenario / --group
    instructions: bool = False       # also counted under callgrind (instructions per request)
    expect: tuple[str, ...] = ()     # the probe's answer must contain these ...
    absent: tuple[str, ...] = ()     # ... and not these (the path did what it should)

    def __post_init__(self) -> None:
        if (self.backend == "authz") != (self.config is not None):
            raise ValueError(f"scenario {self.name}: a config is needed exactly when authz answers")
        if self.upstream is None and not self.ext_proc:
            raise ValueError(f"scenario {self.name}: only a whole-path scenario has an ext_proc filter to drop")

    @property
    def group(self) -> str:
        return PATH if self.upstream is not None else CHECK

    @property
    def floor(self) -> str:
        """The scenario whose throughput this one's is shown against."""
        return PATH_FLOOR if self.upstream is not None else "floor"


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


# The whole path's LLM request: a signed-in chat with one email in the prompt (masked by the
# reference llm-prompts rule), JSON or streamed answer.
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant for the finance team."},
    {"role": "user", "content": "Draft a two-line reply to oscar@acme.com saying the Q3 forecast is "
                                "ready for review on Thursday."},
]


def chat(*, stream: bool) -> Callable[[Context], Request]:
    def request(ctx: Context) -> Request:
        doc: dict[str, Any] = {"model": "gpt-general", "messages": CHAT_MESSAGES, "max_tokens": 200}
        if stream:
            doc.update(stream=True, stream_options={"include_usage": True})
        token = mint_token(sub="oscar", roles=["accounting"], scopes=["tools:calendar"], client="bench",
                           issuer=ctx.issuer_url, dev_dir=ctx.workdir / "dev", ttl=6 * 3600)
        return Request("POST", "/v1/chat/completions", {"content-type": "application/json",
                                                        "authorization": f"Bearer {token}",
                                                        "user-agent": "authz-bench/1"},
                       json.dumps(doc).encode())
    return request


MCP_TOOLS_LIST = json.dumps({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}).encode()


def signed_in_tools_list(ctx: Context) -> Request:
    call = signed_in_mcp_call(ctx)
    return Request("POST", "/mcp", call.headers, MCP_TOOLS_LIST)


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
        cfg: dict[str, Any] = yaml.safe_load(REFERENCE_CONFIG.read_text())
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


def pipeline(*, mcp_redaction: bool = True) -> Callable[[Context], dict[str, Any]]:
    """deploy/authz/authz.yaml as deployed (identity with the signed assertion, sessions, policy
    with tools/list filtering, routing, Redis rate limit and budgets, redaction both ways, audit
    with its default durability, metering), pointed at the bench's issuer, Redis and audit
    directory; only the limits are raised so that the bench's one user is never refused.
    Without ``mcp_redaction`` the MCP rules are dropped: a tools/call then needs no Process phase."""
    def config(ctx: Context) -> dict[str, Any]:
        if not ctx.redis_url:
            raise ValueError("the reference pipeline needs Redis")
        cfg: dict[str, Any] = yaml.safe_load(REFERENCE_CONFIG.read_text())
        cfg.update(bench_basics())
        # 500 ms rather than 50: with 32 connections queued in front of one sidecar on a busy
        # two-core box a Redis answer can wait that long, and a 503 would measure less work.
        cfg["store"] = {"redis_url": ctx.redis_url, "timeout_ms": 500}
        cfg["identity"]["issuers"][0]["issuer"] = ctx.issuer_url
        cfg["audit"]["directory"] = str(ctx.workdir / "audit")
        cfg["signin"] = {"enabled": False}
        limits = cfg["limits"]
        for rule in limits["rate_limits"]:
            rule["rate"], rule["burst"] = "1000000/s", 1_000_000
        for budget in limits["budgets"]:
            budget["limit"] = 1e12
        if not mcp_redaction:
            cfg["redaction"]["rules"] = [r for r in cfg["redaction"]["rules"]
                                         if "mcp" not in r.get("match", {})]
        return cfg
    return config


PATH_FLOOR = "path-floor"


# -- the list --------------------------------------------------------------------------------

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("envoy", "Envoy alone, direct response (what Envoy costs)", "none", default=False),
    Scenario("floor", "+ ext_authz to a do-nothing Python servicer (the gRPC hop)", "noop"),
    # The same hop carrying the signed-in request (a ~1 KB bearer token more for wrk, Envoy and
    # gRPC to move): what identity, policy and limits are compared with, so a target measures
    # authz's work on the request and not the size of the request itself.
    Scenario("floor+token", "the floor with the signed-in request (bearer token) of the "
             "scenarios below", "noop", request=signed_in_mcp_call, issuer=True),
    # authz serves on uvloop by default (server.event_loop), which makes the hop itself cheaper:
    # this is the same do-nothing servicer on uvloop, to show how much of any margin that is.
    Scenario("floor+token+uvloop", "floor+token with the do-nothing servicer on uvloop", "noop",
             request=signed_in_mcp_call, issuer=True, noop_args=("--event-loop", "uvloop"), default=False),
    Scenario("authz", "+ ext_authz to authz, allow-all (anonymous path, default allow)", "authz",
             allow_all(), default=False),
    Scenario("authz+decision-log", "authz with a JSON decision log line per request", "authz",
             allow_all(decision_log=True), default=False),
    Scenario("identity", "+ bearer token (cached) and signed identity assertion", "authz",
             reference(policy=False), signed_in_mcp_call, issuer=True,
             target=Target("floor+token", 0.85, "issue 3"), default=False),
    Scenario("identity-caller-assertion", "identity with the assertion bound to the caller "
             "(binding: caller, re-signed every 30 s)", "authz",
             reference(policy=False, binding="caller"), signed_in_mcp_call, issuer=True, default=False),
    Scenario("identity-no-assertion", "identity without the signed assertion", "authz",
             reference(policy=False, assertion=False), signed_in_mcp_call, issuer=True, default=False),
    Scenario("policy", "+ reference MCP policy on the tools/call body", "authz",
             reference(policy=True), signed_in_mcp_call, issuer=True,
             target=Target("floor+token", 0.80, "issue 4"), default=False),
    Scenario("policy+audit", "policy with the tamper-evident audit log on (default durability: "
             "answered, each decision record written before Check answers)", "authz",
             reference(policy=True, audit=True), signed_in_mcp_call, issuer=True,
             target=Target("policy", 0.85, "issue 17"), default=False),
    Scenario("policy+audit-queued", "policy with the audit log, durability queued (written within "
             "100 ms after the answer)", "authz",
             reference(policy=True, audit=True, durability="queued"), signed_in_mcp_call, issuer=True,
             target=Target("policy", 0.95, "issue 7"), default=False),
    Scenario("ratelimit", "policy + one per-user rate limit in Redis", "authz",
             reference(policy=True, rate_limit=True), signed_in_mcp_call, issuer=True, redis=True,
             target=Target("floor+token", 0.75, "issue 5"), redis_round_trips=1, instructions=True,
             cpu_target=CpuTarget("issue 22", baseline="floor", ratio=2.0, what="sidecar")),
    # What redaction adds to one request's latency: measured with one connection (with 32, p50
    # is the queue in front of the sidecar, i.e. throughput, which the scenarios above measure).
    Scenario("chat-4k", "policy on a 4 KB chat prompt with findings, redaction off (1 connection)", "authz",
             reference(policy=True), signed_in_chat, issuer=True, connections=1, default=False),
    Scenario("chat-4k+redaction", "the same prompt with the reference redaction rules (masked, "
             "placeholders, the body rewritten by Check and swapped in by Process; 1 connection)", "authz",
             reference(policy=True, redaction=True), signed_in_chat, issuer=True, connections=1,
             latency_target=LatencyTarget("chat-4k", 1.0, "issue 15"), default=False),
    # -- the whole path: deploy/envoy/envoy.yaml with ext_proc, a canned upstream (issue 22) ---
    # The floor asks for the body modes authz asks for on the LLM chat request (its body, and a
    # JSON answer buffered partially), so Envoy sends it the same messages; it serves on uvloop,
    # as authz does: what authz costs beyond it is authz's own work.
    Scenario(PATH_FLOOR, "whole path: do-nothing ext_authz + ext_proc (request body, partial answer), "
             "the LLM chat request and answer", "noop", request=chat(stream=False), issuer=True,
             upstream=upstream.chat_json,
             noop_args=("--event-loop", "uvloop", "--request-body", "buffered", "--response-body", "partial")),
    Scenario("llm-chat", "whole path: reference pipeline, signed-in chat with an email in the prompt, "
             "JSON answer", "authz", pipeline(), chat(stream=False), issuer=True, redis=True,
             upstream=upstream.chat_json, instructions=True, expect=("chat.completion", "Thursday"),
             cpu_target=CpuTarget("issue 22", sidecar_us=1000, path_us=1300)),
    Scenario("llm-chat-sse", "whole path: the same chat, streamed answer (SSE, usage in the last event)",
             "authz", pipeline(), chat(stream=True), issuer=True, redis=True, upstream=upstream.chat_sse,
             expect=("data: [DONE]", '"usage"')),
    Scenario("mcp-call", "whole path: reference pipeline, MCP tools/call (argument and result "
             "redaction rules)", "authz", pipeline(), signed_in_mcp_call, issuer=True, redis=True,
             upstream=upstream.mcp_call_result, expect=("You are oscar",)),
    Scenario("mcp-list", "whole path: reference pipeline, MCP tools/list filtered to the tools the "
             "user may call", "authz", pipeline(), signed_in_tools_list, issuer=True, redis=True,
             upstream=upstream.mcp_tools_list, expect=("get_calendar", "whoami"),
             absent=("delete_invoice", "search_patients")),
    # A tools/call with nothing for Process to do (no MCP redaction rule), with the reference
    # ext_proc filter and without it: the first should cost within 15% of the second (issue 22).
    Scenario("mcp-call-checkonly", "whole path without the ext_proc filter: reference pipeline minus "
             "MCP redaction, tools/call", "authz", pipeline(mcp_redaction=False), signed_in_mcp_call,
             issuer=True, redis=True, upstream=upstream.mcp_call_result, ext_proc=False),
    Scenario("mcp-call-noprocess", "whole path: the same tools/call with the ext_proc filter (no "
             "Process phase needed)", "authz", pipeline(mcp_redaction=False), signed_in_mcp_call,
             issuer=True, redis=True, upstream=upstream.mcp_call_result,
             cpu_target=CpuTarget("issue 22", baseline="mcp-call-checkonly", ratio=1.15)),
)


def by_name(names: list[str] | None, scenarios: tuple[Scenario, ...] = SCENARIOS) -> list[Scenario]:
    """The named scenarios in list order, plus the ones their targets compare against and the
    floor of each one's group (every result is reported relative to it). None means all."""
    known = {s.name: s for s in scenarios}
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(unknown)}; known: {', '.join(known)}")
    wanted: set[str] = set()
    todo = list(names or known)
    while todo:
        name = todo.pop()
        if name in wanted or name not in known:
            continue
        wanted.add(name)
        sc = known[name]
        todo.append(sc.floor)
        for target in (sc.target, sc.latency_target, sc.cpu_target):
            baseline = getattr(target, "baseline", None)
            if baseline is not None:
                todo.append(baseline)
    return [s for s in scenarios if s.name in wanted]


GROUPS = {"default": "the default list: the core Check scenarios and the whole path",
          CHECK: "every Check scenario (ext_authz alone, direct response)",
          PATH: "every whole-path scenario (ext_authz + ext_proc + canned upstream)",
          "all": "every scenario"}


def by_group(group: str, scenarios: tuple[Scenario, ...] = SCENARIOS) -> list[Scenario]:
    if group not in GROUPS:
        raise ValueError(f"unknown group {group}; known: {', '.join(GROUPS)}")
    chosen = [s.name for s in scenarios
              if group == "all" or (group == "default" and s.default) or s.group == group]
    return by_name(chosen, scenarios)
