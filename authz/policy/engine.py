"""The policy engine: compiled rules, first match decides, every decision explains itself."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from authz.matching import CompiledConditions, CompiledMatch, Glob
from authz.model import Action, Principal, Request
from authz.policy import config as c


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """A policy decision as plain data (for the response, the log, audit and ``authz explain``)."""

    allowed: bool
    reason: str                      # stable code: policy.allowed, policy.no_rule, ...
    rule: str | None = None
    message: str = ""
    status: int = 200
    scopes: tuple[str, ...] = ()     # for insufficient_scope challenges
    dry_run: bool = False            # denied by policy but allowed because of dry-run
    rewrite_model: str | None = None
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def explain(self) -> dict[str, Any]:
        out: dict[str, Any] = {"allowed": self.allowed, "reason": self.reason, "rule": self.rule}
        if self.message:
            out["message"] = self.message
        if self.dry_run:
            out["dry_run"] = True
        if self.scopes:
            out["required_scopes"] = list(self.scopes)
        if self.rewrite_model:
            out["rewrite_model"] = self.rewrite_model
        if self.inputs:
            out["inputs"] = self.inputs
        return out


class CompiledRule:
    def __init__(self, cfg: c.Rule) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.matches = CompiledMatch(cfg.match)
        self.require = CompiledConditions(cfg.require)


class Policy:
    def __init__(self, cfg: c.PolicyConfig) -> None:
        self.cfg = cfg
        self.rules = tuple(CompiledRule(r) for r in cfg.rules)
        self.public = Glob(cfg.public_paths)

    def evaluate(self, principal: Principal, request: Request, action: Action,
                 now: datetime.datetime | None = None, *, explain: bool = True) -> Decision:
        """Decide. ``explain`` records the inputs used in ``Decision.inputs`` (for ``authz
        explain`` and tests); the request path leaves it off: nothing there reads them."""
        now = now or datetime.datetime.now(datetime.UTC)
        inputs = ({"principal": _principal_inputs(principal), "action": action.describe(),
                   "method": request.method, "host": request.host, "path": request.path_only}
                  if explain else {})
        decision = self._first_match(principal, request, action, now, inputs)
        if decision.rewrite_model is None:
            return decision
        # The rule said "not this model, but that one": try the rules once more with it.
        if decision.rewrite_model != action.model:
            rewritten = dataclasses.replace(action, model=decision.rewrite_model)
            second = self._first_match(principal, request, rewritten, now, inputs)
            if second.allowed and second.rewrite_model is None:
                return dataclasses.replace(
                    second, rewrite_model=decision.rewrite_model, reason="policy.model_rewritten",
                    message=f"model {action.model} rewritten to {decision.rewrite_model} "
                            f"by rule {decision.rule}")
        return self._deny(decision.rule, decision.reason, decision.message, decision.status, (),
                          False, inputs)

    def _first_match(self, principal: Principal, request: Request, action: Action,
                     now: datetime.datetime, inputs: dict[str, Any]) -> Decision:
        for rule in self.rules:
            if not rule.matches(request, action):
                continue
            dry = rule.cfg.dry_run or self.cfg.dry_run
            if rule.cfg.effect == "deny":
                return self._deny(rule.id, rule.cfg.reason or "policy.denied",
                                  rule.cfg.message or f"denied by rule {rule.id}", 403, (), dry, inputs)
            failure = rule.require.first_failure(principal, request, now)
            if failure is None:
                return Decision(True, "policy.allowed", rule.id, inputs=inputs)
            if rule.cfg.otherwise is not None and failure.status != 401:
                return Decision(True, failure.reason, rule.id, message=failure.message,
                                status=failure.status, rewrite_model=rule.cfg.otherwise.rewrite_model,
                                inputs=inputs)
            return self._deny(rule.id, failure.reason, rule.cfg.message or failure.message,
                              failure.status, failure.scopes, dry, inputs)
        if self.cfg.default == "allow":
            return Decision(True, "policy.default_allow", None, inputs=inputs)
        return self._deny(None, "policy.no_rule", "no policy rule allows this request", 403, (),
                          self.cfg.dry_run, inputs)

    @staticmethod
    def _deny(rule: str | None, reason: str, message: str, status: int, scopes: tuple[str, ...],
              dry_run: bool, inputs: dict[str, Any]) -> Decision:
        if dry_run:
            return Decision(True, reason, rule, message=message, status=status, scopes=scopes,
                            dry_run=True, inputs=inputs)
        return Decision(False, reason, rule, message=message, status=status, scopes=scopes,
                        inputs=inputs)

    def may_call_tool(self, principal: Principal, request: Request, tool: str,
                      now: datetime.datetime | None = None) -> bool:
        """Would ``tools/call`` of ``tool`` be allowed? Used to filter ``tools/list``."""
        action = Action(protocol="mcp", kind="tools/call", name=tool)
        decision = self._first_match(principal, request, action,
                                     now or datetime.datetime.now(datetime.UTC), {})
        # In dry-run nothing is refused, so nothing is hidden either.
        return decision.allowed and decision.rewrite_model is None


    def may_use(self, principal: Principal, request: Request, method: str,
                now: datetime.datetime | None = None) -> bool:
        """Would the MCP request ``method`` (e.g. ``tools/list``) be allowed? Used to reflect a
        caller's own capabilities in ``server/discover`` and ``initialize`` answers."""
        action = Action(protocol="mcp", kind=method)
        decision = self._first_match(principal, request, action,
                                     now or datetime.datetime.now(datetime.UTC), {})
        return decision.allowed


def _principal_inputs(p: Principal) -> dict[str, Any]:
    if p.anonymous:
        return {"anonymous": True}
    return {"subject": p.subject, "issuer": p.issuer, "client": p.client, "tenant": p.tenant,
            "roles": sorted(p.roles), "scopes": sorted(p.scopes), "credential": p.credential}
