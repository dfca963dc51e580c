"""Compiled matchers and conditions: built once at config load, cheap per request."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from authz.matching import config as c
from authz.model import Principal
from authz.patterns import Glob
from authz.request import Request


def claim_at(claims: Any, path: str) -> Any:
    """Follow a dotted claim path (``realm_access.roles``); a key that itself contains dots
    (``https://example.com/roles``) is tried whole first."""
    if isinstance(claims, dict) and path in claims:
        return claims[path]
    node = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class Failure:
    """Why a condition did not hold: a stable reason, a message, and (for scopes) what to ask
    the authorization server for."""

    __slots__ = ("message", "reason", "scopes", "status")

    def __init__(self, reason: str, message: str, *, status: int = 403,
                 scopes: tuple[str, ...] = ()) -> None:
        self.reason = reason
        self.message = message
        self.status = status
        self.scopes = scopes


Check = Callable[[Principal, Request, datetime.datetime], Failure | None]


class CompiledConditions:
    """Evaluates ``Conditions`` in a fixed order; returns the first failure or None."""

    def __init__(self, cfg: c.Conditions) -> None:
        self.cfg = cfg
        checks: list[Check] = []
        if cfg.authenticated:
            checks.append(_authenticated)
        if cfg.scopes_all:
            checks.append(_scopes_all(frozenset(cfg.scopes_all), cfg.scopes_all))
        if cfg.scopes_any:
            checks.append(_scopes_any(frozenset(cfg.scopes_any), cfg.scopes_any))
        if cfg.roles_any:
            checks.append(_roles_any(frozenset(cfg.roles_any)))
        if cfg.roles_all:
            checks.append(_roles_all(frozenset(cfg.roles_all)))
        if cfg.clients:
            checks.append(_attr_glob("client", Glob(cfg.clients), "policy.client_not_allowed",
                                     "this LLM client may not do this"))
        if cfg.subjects:
            checks.append(_attr_glob("subject", Glob(cfg.subjects), "policy.subject_not_allowed",
                                     "this user may not do this"))
        if cfg.tenants:
            checks.append(_attr_glob("tenant", Glob(cfg.tenants), "policy.tenant_not_allowed",
                                     "this tenant may not do this"))
        if cfg.email_domains:
            checks.append(_email_domains(frozenset(cfg.email_domains)))
        for path, expected in cfg.claims.items():
            checks.append(_claim(path, expected))
        for name, expected in cfg.headers.items():
            checks.append(_header(name.lower(), expected))
        if cfg.source_cidrs:
            checks.append(_source(tuple(ipaddress.ip_network(n, strict=False) for n in cfg.source_cidrs)))
        if cfg.time is not None:
            checks.append(_time_window(cfg.time))
        self._checks = tuple(checks)

    def first_failure(self, principal: Principal, request: Request, now: datetime.datetime
                      ) -> Failure | None:
        for check in self._checks:
            failure = check(principal, request, now)
            if failure is not None:
                return failure
        return None

    def claim_paths(self) -> set[str]:
        return set(self.cfg.claims)

    def header_names(self) -> set[str]:
        return {name.lower() for name in self.cfg.headers}


def _authenticated(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
    if p.anonymous:
        return Failure("policy.authentication_required", "this requires a signed-in user", status=401)
    return None


def _scopes_all(required: frozenset[str], ordered: tuple[str, ...]) -> Check:
    def check(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
        if required <= p.scopes:
            return None
        missing = tuple(s for s in ordered if s not in p.scopes)
        return Failure("policy.insufficient_scope", f"missing scope(s): {' '.join(missing)}",
                       scopes=ordered)
    return check


def _scopes_any(accepted: frozenset[str], ordered: tuple[str, ...]) -> Check:
    def check(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
        if accepted & p.scopes:
            return None
        return Failure("policy.insufficient_scope", f"needs one of the scopes: {' '.join(ordered)}",
                       scopes=ordered[:1])
    return check


def _roles_any(roles: frozenset[str]) -> Check:
    def check(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
        if roles & p.roles:
            return None
        return Failure("policy.role_required", f"needs one of the roles: {', '.join(sorted(roles))}")
    return check


def _roles_all(roles: frozenset[str]) -> Check:
    def check(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
        if roles <= p.roles:
            return None
        return Failure("policy.role_required", f"needs all of the roles: {', '.join(sorted(roles))}")
    return check


def _attr_glob(attr: str, glob: Glob, reason: str, message: str) -> Check:
    def check(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
        value = getattr(p, attr)
        if value is not None and glob(value):
            return None
        return Failure(reason, message)
    return check


def _email_domains(domains: frozenset[str]) -> Check:
    def check(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
        email = (p.email or "").lower()
        if "@" in email and email.rsplit("@", 1)[1] in domains:
            return None
        return Failure("policy.email_domain_not_allowed", "this email domain may not do this")
    return check


def _claim(path: str, expected: Any) -> Check:
    allowed = tuple(expected) if isinstance(expected, tuple) else (expected,)

    def check(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
        value = claim_at(p.claims, path)
        values = value if isinstance(value, list) else [value]
        # bool is an int in Python; compare types too so claim `true` never equals 1.
        if any(type(v) is type(a) and v == a for v in values for a in allowed):
            return None
        return Failure("policy.claim_mismatch", f"claim {path} does not have an allowed value")
    return check


def _header(name: str, expected: str | tuple[str, ...]) -> Check:
    allowed = Glob(expected if isinstance(expected, tuple) else (expected,))

    def check(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
        value = r.header(name)
        if value is not None and allowed(value):
            return None
        return Failure("policy.header_mismatch", f"header {name} does not have an allowed value")
    return check


def _source(networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> Check:
    def check(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
        try:
            addr = ipaddress.ip_address(r.source_address)
        except ValueError:
            return Failure("policy.source_not_allowed", "the source address is not allowed")
        if any(addr in n for n in networks):
            return None
        return Failure("policy.source_not_allowed", "the source address is not allowed")
    return check


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _time_window(cfg: c.TimeWindow) -> Check:
    zone = ZoneInfo(cfg.timezone)
    days = frozenset(c.WEEKDAYS.index(d) for d in cfg.days)
    start, end = _minutes(cfg.start), _minutes(cfg.end)

    def check(p: Principal, r: Request, now: datetime.datetime) -> Failure | None:
        local = now.astimezone(zone)
        minute = local.hour * 60 + local.minute
        if start <= end:
            inside = local.weekday() in days and start <= minute < end
        else:  # wraps past midnight: the early-morning part belongs to the previous day's window
            inside = ((local.weekday() in days and minute >= start)
                      or ((local.weekday() - 1) % 7 in days and minute < end))
        if inside:
            return None
        return Failure("policy.outside_time_window", "not allowed at this time")
    return check
