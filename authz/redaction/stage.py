"""The redaction stage.

Check (where Envoy hands over the whole body): pick the rule for this route and user, refuse
bodies too large to scan (413) or that cannot be read (415 encoded, 400 too deep), scan the
body as the request view read it (JSON strings decoded, form names and values, multipart parts,
text), refuse what must not leave (``block``: 403 naming the entity types, never the values),
hold what needs approval (403 with an approval id), tag the request for the upstream
(``x-authz-sensitivity: pii,secret``) and rewrite the forwarded body (``Context.rewrite``);
Process only swaps the rewritten body in.

Approvals: ``POST <approvals_path>/<id>/grant`` through Envoy by a user with an approver role
(or ``authz approvals grant ID`` by an operator). The user's retry carrying the id in
``x-authz-approval`` passes once, only for the same user and the same body, within the TTL.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Histogram

from authz import metrics
from authz.errors import Answer, BadRequest, Forbidden, PayloadTooLarge, Unavailable, UnsupportedMediaType
from authz.matching import CompiledConditions, CompiledMatch
from authz.model import Context, Exchange
from authz.pipeline import Stage
from authz.redaction.config import RedactionConfig, RedactionRule
from authz.redaction.detectors import Scanner, ScanTooComplex
from authz.redaction.guard import AnswerGuard, want_answer
from authz.redaction.pause import PauseCut
from authz.redaction.redactor import Redactor, categories_of
from authz.redaction.request_parts import scan_request_parts
from authz.redaction.restore import PlaceholderStore, RecordingRedactor
from authz.store import Store, StoreUnavailable

FINDINGS = Counter("authz_redaction_findings_total", "Sensitive values found, by entity type and direction.",
                   ["type", "direction"])
ACTIONS = Counter("authz_redaction_requests_total", "Requests scanned, by what was done.", ["action"])
SCAN_SECONDS = Histogram("authz_redaction_scan_seconds", "Time to scan (and rewrite) one body.",
                         buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5))

APPROVAL_KEY = "approval:{id}"
GRANT_KEY = "approval:{id}:granted"
# What ``secrets.token_hex`` issues (and ``token_urlsafe``, which issued ids before it). An id is
# put into a store key: one with a ":" in it
# (``<id>:granted``) would name a grant instead of an approval record.
APPROVAL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def _unreadable(problem: str) -> BadRequest:
    return BadRequest(f"the body cannot be scanned ({problem}); it is not forwarded unscanned",
                      reason="redaction.too_deep")


class RedactionStage(Stage):
    name = "redaction"

    def __init__(self, cfg: RedactionConfig, store: Store, *, placeholders: PlaceholderStore | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.categories = cfg.categories()
        self.scanner = Scanner(cfg.detectors, {d.name: d.all_terms() for d in cfg.dictionaries},
                               {p.name: p.regex for p in cfg.patterns}, decoding=cfg.decoding.decoding(),
                               variants={d.name: d.variants for d in cfg.dictionaries if d.variants is not None},
                               names=cfg.ner.person_names() if cfg.person else None)
        compiled = tuple((r, CompiledMatch(r.match), CompiledConditions(r.when)) for r in cfg.rules)
        self.rules = tuple(c for c in compiled if c[0].scans_requests)
        self.response_rules = tuple(c for c in compiled if c[0].scans_responses)
        self.by_id = {r.id: r for r in cfg.rules}
        self.hmac_key = cfg.hmac_key.encode()
        self.answers = AnswerGuard(cfg, placeholders if placeholders is not None else PlaceholderStore(),
                                   self.redactor, self.probe, self._actions,
                                   lambda t, n: metrics.child(FINDINGS, type=t, direction="response").inc(n),
                                   PauseCut(cfg.responses.flush, {d.name: d.all_terms() for d in cfg.dictionaries},
                                            variants={d.name: d.variants for d in cfg.dictionaries
                                                      if d.variants is not None},
                                            custom=bool(cfg.patterns)))

    # --- helpers ---------------------------------------------------------------------------------

    def _rule_for(self, ctx: Context, rules: tuple[tuple[RedactionRule, CompiledMatch, CompiledConditions], ...]
                  | None = None) -> RedactionRule | None:
        now = datetime.datetime.now(datetime.UTC)
        for rule, match, when in self.rules if rules is None else rules:
            if match(ctx.request, ctx.action) and when.first_failure(ctx.principal, ctx.request, now) is None:
                return rule
        return None

    def _actions(self, rule: RedactionRule) -> Callable[[str], str]:
        actions = rule.actions

        def action_for(entity: str) -> str:
            return actions.get(entity) or actions.get(self.categories.get(entity, "pii")) or actions.get(
                "default", "mask")
        return action_for

    def redactor(self, rule: RedactionRule) -> Redactor:
        kind = RecordingRedactor if rule.restore else Redactor
        return kind(self.scanner, self._actions(rule), hmac_key=self.hmac_key)

    def probe(self, rule: RedactionRule) -> Redactor:
        """A throwaway redactor for the stream hold-back's checks: what it writes for a value does
        not depend on what came before (a placeholder's number does; a hash does not)."""
        action_for = self._actions(rule)
        return Redactor(self.scanner, lambda t: "hash" if action_for(t) == "placeholder" else action_for(t),
                        hmac_key=self.hmac_key)

    # --- Check -----------------------------------------------------------------------------------

    async def on_request(self, ctx: Context) -> None:
        m = ctx.mutations
        m.remove_header(self.cfg.sensitivity_header)  # only we say what is sensitive
        m.remove_header(self.cfg.approval_header)     # the upstream never needs it
        path = ctx.request.path_only
        if path.startswith(self.cfg.approvals_path + "/"):
            await self._approvals_endpoint(ctx, path[len(self.cfg.approvals_path) + 1:])
        answer_rule = self._rule_for(ctx, self.response_rules) if self.response_rules else None
        if answer_rule is not None:
            want_answer(ctx, answer_rule, "", duplex=self.answers.duplex)
        rule = self._rule_for(ctx)
        if rule is None:
            return
        try:
            await self._scan(ctx, rule, answer_rule)
        except ScanTooComplex as exc:
            metrics.child(ACTIONS, action="unscannable").inc()
            raise BadRequest(f"the request cannot be scanned within bounds ({exc}); it is not forwarded unscanned",
                             reason="redaction.too_complex") from None

    async def _scan(self, ctx: Context, rule: RedactionRule, answer_rule: RedactionRule | None) -> None:
        m = ctx.mutations
        body = ctx.view.body
        started = time.perf_counter()
        red = self.redactor(rule)
        parts = scan_request_parts(red, ctx.request, self.cfg.headers, query=self.cfg.query)
        parts_changed, red.changed = red.changed, False
        if body.kind == "none" and not red.found:
            return
        out, new = None, None
        if body.kind != "none":
            if ctx.request.body_truncated or len(body.raw) > self.cfg.max_body_bytes:
                metrics.child(ACTIONS, action="too_large").inc()
                raise PayloadTooLarge(f"the body is larger than the {self.cfg.max_body_bytes} bytes the sidecar "
                                      "scans; it is not forwarded unscanned", reason="body.too_large")
            if body.kind == "encoded":
                metrics.child(ACTIONS, action="unscannable").inc()
                raise UnsupportedMediaType("a body with a Content-Encoding cannot be scanned; send it unencoded",
                                           reason="body.encoded")
            if body.kind == "unreadable":
                metrics.child(ACTIONS, action="unscannable").inc()
                raise _unreadable(body.problem)
            out = ctx.rewrite()
            new = red.rewrite(out.body.kind, out.document)
        body_changed = red.changed
        red.changed = parts_changed or body_changed
        SCAN_SECONDS.observe(time.perf_counter() - started)
        if not red.found:
            metrics.child(ACTIONS, action="clean").inc()
            return
        found = red.summary()
        for t, n in found.items():
            metrics.child(FINDINGS, type=t, direction="request").inc(n)
        categories = categories_of(found, self.categories)
        action_for = self._actions(rule)
        ctx.facts["redaction"] = {"rule": rule.id, "found": found, "categories": categories,
                                  "rewritten": red.changed}
        blocked = sorted(t for t in found if action_for(t) == "block")
        if blocked:
            metrics.child(ACTIONS, action="blocked").inc()
            raise Forbidden(f"the request carries data that may not leave: {', '.join(blocked)}",
                            reason="redaction.blocked", details={"entity_types": blocked})
        if rule.approval is not None:
            held = sorted(t for t in found if t in rule.approval.types
                          or self.categories.get(t) in rule.approval.types)
            if held:
                await self._require_approval(ctx, rule, held)
        m.set_header(self.cfg.sensitivity_header, ",".join(categories))
        for name, value in parts.headers.items():
            m.set_header(name, value)
        if parts.path is not None:
            m.set_header(":path", parts.path)  # the query with its values masked, all else as sent
        if out is not None and body_changed:
            out.replace(new)
            metrics.child(ACTIONS, action="redacted").inc()
        else:
            metrics.child(ACTIONS, action="tagged").inc()
        if isinstance(red, RecordingRedactor) and red.originals:
            # Only a random key travels (Envoy metadata); the mapping stays in this process.
            want_answer(ctx, answer_rule, self.answers.placeholders.put(red.originals), duplex=self.answers.duplex)

    async def _require_approval(self, ctx: Context, rule: RedactionRule, held: list[str]) -> None:
        assert rule.approval is not None
        digest = hashlib.sha256(ctx.request.body).hexdigest()
        subject = ctx.principal.subject
        given = ctx.request.header(self.cfg.approval_header)
        try:
            if given and APPROVAL_ID.match(given):
                pending = await self.store.get(APPROVAL_KEY.format(id=given))
                record = json.loads(pending) if pending else None
                if record and record["subject"] == subject and record["digest"] == digest:
                    # Consume: deleting the grant is atomic, so one grant lets exactly one retry through.
                    if await self.store.delete(GRANT_KEY.format(id=given)):
                        await self.store.delete(APPROVAL_KEY.format(id=given))
                        ctx.facts["redaction"]["approval"] = {"id": given, "approved_by": record.get("approver")}
                        metrics.child(ACTIONS, action="approved").inc()
                        return
            approval_id = secrets.token_hex(12)  # never starts with "-" (read as an option by a CLI)
            record = {"subject": subject, "digest": digest, "types": held, "rule": rule.id,
                      "approver_roles": list(rule.approval.approver_roles), "created": int(time.time())}
            await self.store.set(APPROVAL_KEY.format(id=approval_id), json.dumps(record).encode(),
                                 ttl=rule.approval.ttl_seconds)
        except StoreUnavailable as exc:
            raise Unavailable("approvals cannot be checked right now", reason="redaction.store_unavailable") from exc
        metrics.child(ACTIONS, action="held").inc()
        raise Forbidden(f"this request carries {', '.join(held)} and needs approval by one of the roles "
                        f"{', '.join(rule.approval.approver_roles)}; retry with header "
                        f"{self.cfg.approval_header}: {approval_id} once it is granted",
                        reason="redaction.approval_required",
                        headers={"x-authz-approval-id": approval_id},
                        details={"approval_id": approval_id, "entity_types": held})

    async def _approvals_endpoint(self, ctx: Context, rest: str) -> None:
        approval_id, _, verb = rest.partition("/")
        if ctx.request.method != "POST" or verb != "grant" or not approval_id:
            raise BadRequest(f"use POST {self.cfg.approvals_path}/<id>/grant", reason="approvals.bad_request")
        try:
            raw = (await self.store.get(APPROVAL_KEY.format(id=approval_id))
                   if APPROVAL_ID.match(approval_id) else None)
            if raw is None:
                raise Forbidden("no pending approval with that id (expired, used or never issued)",
                                reason="approvals.unknown")
            record = json.loads(raw)
            if ctx.principal.anonymous or not set(record["approver_roles"]) & ctx.principal.roles:
                raise Forbidden(f"granting needs one of the roles {', '.join(record['approver_roles'])}",
                                reason="approvals.not_an_approver")
            if ctx.principal.subject == record["subject"]:
                raise Forbidden("nobody approves their own request", reason="approvals.self_approval")
            record["approver"] = ctx.principal.subject
            ttl = await self.store.ttl(APPROVAL_KEY.format(id=approval_id)) or 60
            await self.store.set(APPROVAL_KEY.format(id=approval_id), json.dumps(record).encode(), ttl=ttl)
            await self.store.set(GRANT_KEY.format(id=approval_id), ctx.principal.subject.encode(), ttl=ttl)
        except StoreUnavailable as exc:
            raise Unavailable("approvals cannot be granted right now", reason="redaction.store_unavailable") from exc
        ctx.facts["approval_granted"] = approval_id
        raise Answer(reason="approvals.granted", details={"approval_id": approval_id, "status": "granted",
                                                           "for": record["subject"], "types": record["types"]})

    # --- Process: the answer ----------------------------------------------------------------------

    async def on_response_headers(self, ex: Exchange) -> None:
        self.answers.on_headers(ex)

    async def on_response_body(self, ex: Exchange) -> None:
        self.answers.on_body(ex)

    async def on_response_pause(self, ex: Exchange) -> None:
        self.answers.on_pause(ex)

    async def on_complete(self, ex: Exchange) -> None:
        self.answers.on_complete(ex)


def build_redaction_stage(cfg: RedactionConfig, store: Store, *,
                          placeholders: PlaceholderStore | None = None) -> RedactionStage:
    return RedactionStage(cfg, store, placeholders=placeholders)


async def grant(store: Store, approval_id: str, *, approver: str) -> dict[str, Any]:
    """Operator grant (``authz approvals grant``): no role check, the operator is trusted."""
    raw = await store.get(APPROVAL_KEY.format(id=approval_id))
    if raw is None:
        raise KeyError(approval_id)
    record: dict[str, Any] = json.loads(raw)
    record["approver"] = approver
    ttl = await store.ttl(APPROVAL_KEY.format(id=approval_id)) or 60
    await store.set(APPROVAL_KEY.format(id=approval_id), json.dumps(record).encode(), ttl=ttl)
    await store.set(GRANT_KEY.format(id=approval_id), approver.encode(), ttl=ttl)
    return record
