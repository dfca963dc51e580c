"""The audit stage: a ``decision`` record for every Check, an ``outcome`` record for every
exchange Process saw to its end, joined by request id.

Only allow-listed facts go in: who (issuer, subject, tenant, client, credential type), what
(method, host, path without query, MCP tool or model), the decision and why, limits, redaction
findings (types and counts), usage, status, and a keyed digest of the body
(``authz.audit.digests``). Never a token, a header value or a body.

With ``audit.durability`` answered or fsync, Check's answer waits for its decision record to be
written (``AuditLog.committed``): an allowed request whose record could not be written is
refused (503 audit.unavailable), a refusal is answered anyway and the failure counted.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from authz.audit.config import AuditConfig
from authz.audit.log import REFUSED, AuditLog, AuditLogs, DecisionFields
from authz.errors import Answer, Deny, Unavailable
from authz.model import Context, Exchange
from authz.pipeline import Stage

FACT_KEYS = frozenset(("rule", "route", "tool", "target", "model", "requested_model", "dry_run", "limits",
                       "redaction", "tools_hidden", "tools_list_refused", "model_rewritten", "budgets",
                       "usage", "outcome", "approval_granted", "mcp_session"))
# subject and client repeat the principal; api_key is the label of the key used (never the key).
IDENTITY_KEYS = frozenset(("issuer", "credential", "cache_hit", "subject", "client", "api_key"))
POLICY_KEYS = frozenset(("allowed", "reason", "rule", "required_scopes", "dry_run", "rewrite_model"))


_NESTED = {"identity": IDENTITY_KEYS, "policy": POLICY_KEYS}
_TOP_KEYS = FACT_KEYS | _NESTED.keys()


def _safe_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """Only allow-listed facts (never a claim, a header value or a body). What the stages write
    is allow-listed already, so the usual answer is ``facts`` itself, checked in a few set
    comparisons and not copied: it is encoded before the stage returns."""
    if facts.keys() <= _TOP_KEYS:
        identity, policy = facts.get("identity"), facts.get("policy")
        if ((identity is None or (type(identity) is dict and identity.keys() <= IDENTITY_KEYS))
                and (policy is None or (type(policy) is dict and policy.keys() <= POLICY_KEYS))):
            return facts
    out = {k: v for k, v in facts.items() if k in FACT_KEYS}
    for name, allowed in _NESTED.items():
        nested = facts.get(name)
        if isinstance(nested, dict):
            out[name] = {k: v for k, v in nested.items() if k in allowed}
    return out


def decision_record(ctx: Context, deny: Deny | None, time_ms: int) -> dict[str, Any]:
    """The ``decision`` record of a Check."""
    req = ctx.request
    p = ctx.principal
    return {
        "type": "decision", "time_ms": time_ms, "request_id": req.id,
        "method": req.method, "host": req.host, "path": req.path_only,
        "principal": None if p.anonymous else {"subject": p.subject, "issuer": p.issuer, "tenant": p.tenant,
                                               "client": p.client, "credential": p.credential},
        "action": ctx.action.describe() if ctx.action is not None else None,
        # An Answer (an approval granted) is the sidecar answering itself: neither allow nor deny.
        "decision": "allow" if deny is None else "answer" if isinstance(deny, Answer) else "deny",
        "status": 200 if deny is None else deny.status,
        "reason": "ok" if deny is None else deny.reason,
        "facts": _safe_facts(ctx.facts),  # body_hmac: added by the log (AuditLog.offer's digest)
    }


def decision_fields(ctx: Context, deny: Deny | None, time_ms: int) -> DecisionFields | None:
    """``decision_record`` as the fields ``AuditLog.offer_decision`` takes (the writer builds the
    same record from them), or None when the facts cannot be encoded here. The principal and the
    action are immutable and go as they are; the facts, a live dict, are encoded now."""
    req = ctx.request
    try:
        facts = orjson.dumps(_safe_facts(ctx.facts), option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None
    p = ctx.principal
    if deny is None:
        return (time_ms, req.id, req.method, req.host, req.path_only, None if p.anonymous else p, ctx.action,
                "allow", 200, "ok", facts, req.body)
    return (time_ms, req.id, req.method, req.host, req.path_only, None if p.anonymous else p, ctx.action,
            "answer" if isinstance(deny, Answer) else "deny", deny.status, deny.reason, facts, req.body)


def outcome_record(ex: Exchange, time_ms: int) -> dict[str, Any]:
    """The ``outcome`` record of an exchange Process saw to its end (forwarded_body_hmac: added
    by the log)."""
    return {
        "type": "outcome", "time_ms": time_ms, "request_id": ex.request.id,
        "status": ex.response_status,
        "facts": _safe_facts(ex.facts),
    }


class AuditStage(Stage):
    name = "audit"

    def __init__(self, cfg: AuditConfig, log: AuditLog) -> None:
        self.cfg = cfg
        self.log = log
        log.users += 1

    async def start(self) -> None:
        if self.log._writer is None:
            await self.log.start()

    async def on_decision(self, ctx: Context, deny: Deny | None) -> None:
        fields = decision_fields(ctx, deny, int(time.time() * 1000))
        log = self.log
        if fields is not None:
            queued = log.offer_decision(fields) or (
                self.cfg.on_full == "block" and await log.put_decision(fields, wait_ms=self.cfg.block_ms))
        else:  # facts orjson cannot encode (a bug of ours): the record itself, for the slow encoder
            record, digest = decision_record(ctx, deny, int(time.time() * 1000)), ("body_hmac", ctx.request.body)
            queued = log.offer(record, digest=digest) or (
                self.cfg.on_full == "block" and await log.put(record, wait_ms=self.cfg.block_ms, digest=digest))
        if queued:
            if self.cfg.durability == "queued" or await self.log.committed():
                return
            when = "write"
        else:
            when = "check"
        REFUSED.labels(when=when).inc()
        if deny is None:  # fail closed: no record, no request
            broken = not self.log.health()["ok"]
            raise Unavailable("the audit log cannot be written on this replica; try again shortly" if broken
                              else "the audit log cannot keep up; try again shortly",
                              reason="audit.unavailable", headers={"retry-after": "1"})

    def health(self) -> dict[str, object]:
        """Readiness: a writer that stopped, or whose writes fail, makes the replica unready (its
        allowed requests would be refused, or their records lost)."""
        return self.log.health()

    async def on_complete(self, ex: Exchange) -> None:
        if not await self.log.put(outcome_record(ex, int(time.time() * 1000)), wait_ms=self.cfg.block_ms,
                                  digest=("forwarded_body_hmac", ex.state.get("forwarded_body"))):
            # The answer has already gone out; all that is left is to say so loudly.
            REFUSED.labels(when="outcome").inc()
            import logging

            logging.getLogger("authz.audit").error(
                "audit queue full: the outcome record of request %s was not written", ex.request.id)

    async def close(self) -> None:
        self.log.users -= 1
        if self.log.users <= 0:
            await self.log.close()


def build_audit_stage(cfg: AuditConfig, *, instance: str, logs: AuditLogs) -> AuditStage:
    """The stage, writing through the process's writer for ``cfg`` (``logs`` is the runtime's)."""
    return AuditStage(cfg, logs.get(cfg, instance=instance))
