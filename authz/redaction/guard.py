"""The answer side of the redaction stage: what Check asks for, what Process does with it.

Check picks the response rule (the first rule with ``direction: response`` or ``both`` whose
match and conditions fit) and, when the request rule restores placeholders, keeps the request's
placeholders in the ``PlaceholderStore``. The hand-off carries the rule id and the store key;
Envoy sends the answer to Process: whole (``partial``: Envoy's BUFFERED_PARTIAL, headers held)
for an LLM call that did not ask for a stream, so that a refusal can still set the status (an
answer larger than Envoy's buffer arrives cut, and is refused before its headers go out); chunk
by chunk (``streamed``) otherwise.
The request goes out without ``accept-encoding``: a compressed answer cannot be scanned (one
that arrives compressed all the same is refused).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from authz import metrics
from authz.model import Context, Exchange
from authz.redaction import refusals
from authz.redaction.answer import AnswerScanner, framing_of, protocol_of
from authz.redaction.config import RedactionConfig, RedactionRule
from authz.redaction.detectors import ScanTooComplex
from authz.redaction.redactor import Redactor
from authz.redaction.responses import Scan
from authz.redaction.restore import PlaceholderStore, Restorer, seed

log = logging.getLogger("authz.redaction")
ANSWERS = Counter("authz_redaction_answers_total", "Answers scanned on their way back, by what was done.",
                  ["action"])
STATE = "redaction.answer"


def want_answer(ctx: Context, rule: RedactionRule | None, restore_key: str, *, duplex: bool = False) -> None:
    """Ask Process for the answer of this request (``duplex``: a stream's held text may go out
    at the flush deadline, so Envoy must let Process send body chunks unasked)."""
    h = ctx.handoff
    if rule is not None:
        h.response_rule = rule.id
    if restore_key:
        h.restore_key = restore_key
    action = ctx.action
    h.action = action
    whole = action.protocol == "llm" and not action.stream
    h.want_body("response", "partial" if whole else "duplex" if duplex else "streamed")
    ctx.mutations.remove_header("accept-encoding")


class AnswerGuard:
    def __init__(self, cfg: RedactionConfig, placeholders: PlaceholderStore,
                 redactor_for: Callable[[RedactionRule], Redactor],
                 probe_for: Callable[[RedactionRule], Redactor],
                 action_for: Callable[[RedactionRule], Callable[[str], str]],
                 findings: Callable[[str, int], None], pause_cut: Callable[[str], int] | None = None) -> None:
        self.cfg = cfg
        self.pause_cut = pause_cut
        self.flush_s = cfg.responses.flush_ms / 1000
        self.duplex = cfg.responses.flush_ms > 0 and pause_cut is not None
        self.placeholders = placeholders
        self.by_id = {r.id: r for r in cfg.rules}
        self.redactor_for = redactor_for
        self.probe_for = probe_for
        self.action_for = action_for
        self.findings = findings

    def on_headers(self, ex: Exchange) -> None:
        h = ex.handoff
        if not (h.response_rule or h.restore_key):
            return
        originals = self.placeholders.take(h.restore_key) if h.restore_key else {}
        action = h.action
        protocol = protocol_of(action.protocol, action.kind) if action else "http"
        jsonrpc_id = action.jsonrpc_id if action else None
        framing = framing_of(ex.response_headers.get("content-type", ""))
        rule = self.by_id.get(h.response_rule) if h.response_rule else None
        refused: refusals.Refused | None = None
        if h.response_rule and rule is None:  # a reload removed it since Check
            refused = refusals.unreadable("its redaction rule is gone; retry")
        encoding = ex.response_headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            refused = refusals.unreadable(f"content-encoding {encoding}")
        redactor = self.redactor_for(rule) if rule is not None else None
        if redactor is not None:
            seed(redactor, originals)
        actions = self.action_for(rule) if rule is not None else (lambda t: "allow")
        probe: Callable[[], Redactor | None] = (lambda: self.probe_for(rule)) if rule is not None else (
            lambda: None)
        scan = Scan(redactor, Restorer(originals), actions, probe)
        duplex = ex.body_mode("response") == "duplex"
        scanner = AnswerScanner(scan, protocol=protocol, framing=framing, jsonrpc_id=jsonrpc_id,
                                window=self.cfg.responses.window_chars, max_bytes=self.cfg.responses.max_bytes,
                                pause_cut=self.pause_cut if duplex else None)
        if refused is not None:
            scanner.refused = refused
        ex.state[STATE] = (scanner, rule.id if rule else None)
        if ex.body_mode("response") in ("streamed", "duplex"):
            ex.mutations.remove_header("content-length")  # the answer's length changes as it goes

    def on_body(self, ex: Exchange) -> None:
        entry = self._entry(ex)
        if entry is None:
            return
        scanner = entry
        chunk = ex.mutations.body if ex.mutations.body is not None else ex.response_chunk
        mode = ex.body_mode("response")
        if mode == "partial" and not ex.response_end:
            # Envoy's buffer filled before the answer ended: it is too large to hold and scan
            # whole. Its headers have not gone out yet, so Envoy answers with the refusal.
            scanner.refused, scanner.ended = refusals.too_large(len(chunk)), True
            self._record(ex)
            raise refusals.AnswerRefused(scanner.refused, scanner.protocol, scanner.jsonrpc_id)
        if scanner.refused is not None and not scanner.ended:
            out = self._refusal(scanner, scanner.refused)
            scanner.ended = True
        else:
            try:
                out = scanner.feed(chunk, ex.response_end)
            except ScanTooComplex as exc:  # beyond the retry budget or the person detector's max_chars
                scanner.refused, scanner.ended = refusals.unreadable(f"it cannot be scanned within bounds: {exc}"), True
                out = self._refusal(scanner, scanner.refused)
            except Exception:  # our bug, never the client's: still an error in its protocol, not a reset
                log.exception("scanning the answer of request %s failed", ex.request.id)
                scanner.refused, scanner.ended = refusals.unreadable("the sidecar failed"), True
                out = self._refusal(scanner, scanner.refused)
        if scanner.refused is not None and mode in ("buffered", "partial"):
            # The headers wait for this answer: the refusal gets its status and a JSON body.
            out = refusals.json_body(scanner.refused, scanner.protocol, scanner.jsonrpc_id)
            ex.mutations.set_header(":status", str(scanner.refused.status))
            ex.mutations.set_header("content-type", "application/json")
        if out != chunk:
            ex.mutations.replace_body(out)
        if scanner.ended and mode == "duplex":
            ex.answer_closed = True  # the refusal ends the answer: the client need not wait for the rest
        if ex.response_end or scanner.ended:
            self._record(ex)
        elif mode == "duplex":
            ex.flush_at = time.monotonic() + self.flush_s if scanner.holding else 0.0

    def on_pause(self, ex: Exchange) -> None:
        """The upstream paused past the flush deadline: send what the held text may release."""
        scanner = self._entry(ex)
        if scanner is None or scanner.ended:
            return
        try:
            out = scanner.pause()
        except Exception:  # our bug: an error in the client's protocol, never the held text
            log.exception("releasing the held answer of request %s failed", ex.request.id)
            scanner.refused, scanner.ended = refusals.unreadable("the sidecar failed"), True
            out = self._refusal(scanner, scanner.refused)
        if out:
            ex.mutations.replace_body(out)
        if scanner.ended:
            ex.answer_closed = True
            self._record(ex)

    def on_complete(self, ex: Exchange) -> None:
        h = ex.handoff
        if h.restore_key and STATE not in ex.state:
            self.placeholders.take(h.restore_key)  # the answer never came: forget the mapping now
        if STATE in ex.state:
            self._record(ex)

    def _entry(self, ex: Exchange) -> AnswerScanner | None:
        entry = ex.state.get(STATE)
        return entry[0] if entry is not None else None

    @staticmethod
    def _refusal(scanner: AnswerScanner, r: refusals.Refused) -> bytes:
        if scanner.framing == "sse":
            return refusals.sse_event(r, scanner.protocol, scanner.jsonrpc_id)
        return refusals.json_body(r, scanner.protocol, scanner.jsonrpc_id)

    def _record(self, ex: Exchange) -> None:
        if ex.state.get(STATE + ".recorded"):
            return
        ex.state[STATE + ".recorded"] = True
        scanner, rule_id = ex.state[STATE]
        scan = scanner.scan
        found = scan.found()
        for t, n in found.items():
            self.findings(t, n)
        refused = scanner.refused
        if refused is not None:
            action = "blocked" if refused.reason == "redaction.response_blocked" else "refused"
        elif scan.restorer.count or (scan.redactor is not None and scan.redactor.changed):
            action = "redacted"
        else:
            action = "clean"
        metrics.child(ANSWERS, action=action).inc()
        facts: dict[str, Any] = {"direction": "response", "action": action, "found": found}
        if rule_id:
            facts["rule"] = rule_id
        if scan.restorer:
            facts["restored"] = scan.restorer.count
        if refused is not None:
            facts["reason"] = refused.reason
            log.info("answer of request %s refused: %s", ex.request.id, refused.reason,
                     extra={"fields": {"event": "answer_refused", "request_id": ex.request.id,
                                       "reason": refused.reason, "entity_types": list(refused.entity_types)}})
        ex.facts["redaction"] = facts  # the outcome record's (the decision record has the request's)
