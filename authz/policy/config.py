"""The ``policy:`` section of the config file.

A rule says *what* it is about (``match``) and *who* may do it (``require``). Rules are tried in
file order; the first rule whose ``match`` fits the request decides:

- ``effect: allow`` (the default): allowed if every ``require`` condition holds, otherwise
  denied with the reason of the first condition that failed (or, with ``otherwise.rewrite_model``,
  the model is rewritten and the rules are tried again once);
- ``effect: deny``: denied.

No rule matching is a denial (``policy.no_rule``) unless ``default: allow``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from authz.matching.config import Conditions, Match
from authz.request.config import DEFAULT_PROTOCOLS, ProtocolRoute
from authz.schema import Model

REASON_CODE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")


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


class PolicyConfig(Model):
    default: Literal["deny", "allow"] = "deny"
    dry_run: bool = False
    protocols: tuple[ProtocolRoute, ...] = DEFAULT_PROTOCOLS
    public_paths: tuple[str, ...] = ("/.well-known/oauth-protected-resource",
                                     "/.well-known/oauth-protected-resource/*")
    filter_tools_list: bool = True
    # A filtered tools/list is this caller's alone: it carries cacheScope "private" (SEP-2549)
    # and a ttlMs no longer than this, so no client or shared cache reuses it for long.
    filtered_list_max_ttl_ms: int = Field(60_000, ge=0, le=86_400_000)
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
