"""The matching language every stage shares: ``match`` (what a request is about) and
``when``/``require`` conditions (who may). Validated here at load; compiled by
``authz.matching.conditions`` and ``authz.matching.match``."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from authz.schema import Model

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TimeWindow(Model):
    """Allowed only on these days, between these local times (``to`` may wrap past midnight)."""

    days: tuple[Weekday, ...] = WEEKDAYS
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
                        "messages", "images.generations", "audio.speech", "models", "other"], ...] = ()
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
