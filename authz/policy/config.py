"""The ``policy:`` and ``routing:`` sections of the config file.

A rule says *what* it is about (``match``) and *who* may do it (``require``). Rules are tried in
file order; the first rule whose ``match`` fits the request decides:

- ``effect: allow`` (the default): allowed if every ``require`` condition holds, otherwise
  denied with the reason of the first condition that failed (or, with ``otherwise.rewrite_model``,
  the model is rewritten and the rules are tried again once);
- ``effect: deny``: denied.

No rule matching is a denial (``policy.no_rule``) unless ``default: allow``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from authz.schema import Model

REASON_CODE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TimeWindow(Model):
    """Allowed only on these days, between these local times (``to`` may wrap past midnight)."""

    days: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = WEEKDAYS
    start: str = Field("00:00", alias="from", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field("24:00", alias="to", pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class Conditions(Model):
    """Who may: every listed condition must hold (``*_any``: at least one; ``*_all``: every one).

    Values in ``clients``, ``subjects``, ``tenants`` may use ``*`` as a wildcard.
    ``claims`` maps a claim path (``realm_access.department``) to the allowed value(s).
    """

    authenticated: bool = True
    scopes_all: tuple[str, ...] = ()
    scopes_any: tuple[str, ...] = ()
    roles_any: tuple[str, ...] = ()
    roles_all: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    email_domains: tuple[str, ...] = ()
    claims: dict[str, str | int | bool | tuple[str | int | bool, ...]] = {}
    headers: dict[str, str | tuple[str, ...]] = {}
    source_cidrs: tuple[str, ...] = ()
    time: TimeWindow | None = None

    @field_validator("source_cidrs")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"not a CIDR: {cidr!r}") from None
        return v

    @field_validator("email_domains")
    @classmethod
    def _domains(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(d.lower().lstrip("@") for d in v)


class McpMatch(Model):
    """What an MCP JSON-RPC request is about. Empty lists match anything."""

    methods: tuple[str, ...] = ()      # tools/call, tools/list, initialize, resources/read, ...
    tools: tuple[str, ...] = ()        # tools/call params.name (wildcards allowed)
    resources: tuple[str, ...] = ()    # resources/read params.uri (wildcards allowed)
    prompts: tuple[str, ...] = ()      # prompts/get params.name


class LlmMatch(Model):
    apis: tuple[Literal["chat.completions", "completions", "responses", "embeddings",
                        "messages", "models", "other"], ...] = ()
    models: tuple[str, ...] = ()       # requested model (wildcards allowed)


class Match(Model):
    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()        # exact, or with * wildcards (``/v1/*``)
    methods: tuple[str, ...] = ()
    mcp: McpMatch | None = None
    llm: LlmMatch | None = None

    @field_validator("methods")
    @classmethod
    def _upper(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in v)


class Otherwise(Model):
    """What to do instead of denying when ``require`` fails."""

    rewrite_model: str


class Rule(Model):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    description: str = ""
    match: Match = Match()
    require: Conditions = Conditions()
    effect: Literal["allow", "deny"] = "allow"
    reason: str | None = None          # reason code for effect: deny (default policy.denied)
    message: str | None = None         # text for the caller when denied
    otherwise: Otherwise | None = None
    dry_run: bool = False

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        if v is not None and not REASON_CODE.match(v):
            raise ValueError("must be a dotted lower-case code such as policy.after_hours")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.otherwise is not None and self.match.llm is None:
            raise ValueError("otherwise.rewrite_model needs a match.llm section (an LLM request)")
        if self.effect == "deny" and self.otherwise is not None:
            raise ValueError("otherwise only applies to effect: allow")
        return self


class ProtocolRoute(Model):
    """Which paths carry which protocol, so the body is parsed (and required) accordingly."""

    paths: tuple[str, ...]
    protocol: Literal["mcp", "llm"]
    hosts: tuple[str, ...] = ()


DEFAULT_PROTOCOLS = (
    ProtocolRoute(paths=("/mcp", "/mcp/*"), protocol="mcp"),
    ProtocolRoute(paths=("/v1/*",), protocol="llm"),
)


class PolicyConfig(Model):
    default: Literal["deny", "allow"] = "deny"
    dry_run: bool = False
    protocols: tuple[ProtocolRoute, ...] = DEFAULT_PROTOCOLS
    public_paths: tuple[str, ...] = ("/.well-known/oauth-protected-resource",
                                     "/.well-known/oauth-protected-resource/*")
    filter_tools_list: bool = True
    rules: tuple[Rule, ...] = ()

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        return rules


class RouteChoice(Model):
    route: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    when: Conditions = Conditions()
    models: tuple[str, ...] = ()       # only for these requested models (wildcards allowed)


class RoutingConfig(Model):
    """Pick an upstream by who the user is. Envoy routes on ``header``; the client's own value
    of that header is always removed first."""

    enabled: bool = False
    header: str = Field("x-authz-route", pattern=r"^[a-z0-9-]{1,64}$")
    paths: tuple[str, ...] = ("/v1/*",)
    routes: tuple[RouteChoice, ...] = ()
    default: str = Field("general", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
