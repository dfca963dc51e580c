"""The policy stage: decide on what the request is about (its one reading), and say why.

In ``Check`` it denies, allows, or allows with a model rewrite (the forwarded body's ``model``
is rewritten there, once). In ``Process`` it removes the tools a user may not call from a
``tools/list`` answer (so a client never shows what it can't use), deciding each with the same
conditions on the same facts as ``Check`` would for a ``tools/call`` of it.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from authz import jsonfast
from authz.errors import Deny, Forbidden, Unauthenticated
from authz.identity.challenge import bearer_challenge
from authz.jsontext import dumps_utf8
from authz.model import Action, Context, Exchange, Principal, Request
from authz.pipeline import Stage
from authz.policy.config import PolicyConfig
from authz.policy.engine import Decision, Policy
from authz.request.jsonbody import MAX_JSON_DEPTH, too_deep

log = logging.getLogger("authz.policy")

DRY_RUN_DENIALS = Counter("authz_policy_dry_run_denials_total",
                          "Requests policy would have denied, allowed because of dry-run.", ["reason"])
TOOLS_LISTS_REFUSED = Counter("authz_mcp_tools_lists_refused_total",
                              "tools/list answers that could not be filtered and were replaced by an error.")
TOOLS_HIDDEN = Counter("authz_mcp_tools_hidden_total",
                       "Tools removed from tools/list answers because the user may not call them.")

# Builds a WWW-Authenticate value: (error or None, scopes, description) -> header value.
Challenge = Callable[[str | None, tuple[str, ...], str], str]


def challenge_for(resource_metadata: str | None) -> Challenge:
    """Challenges that point MCP clients at the protected-resource metadata (RFC 9728)."""
    def challenge(error: str | None, scopes: tuple[str, ...], description: str) -> str:
        return bearer_challenge(resource_metadata=resource_metadata, error=error,
                                description=description, scope=" ".join(scopes) or None)
    return challenge


default_challenge = challenge_for(None)


class PolicyStage(Stage):
    name = "policy"

    def __init__(self, cfg: PolicyConfig, *, challenge: Challenge = default_challenge,
                 explain: bool = False) -> None:
        self.cfg = cfg
        self.explain = explain  # record each decision's inputs (``authz explain``)
        self.policy = Policy(cfg)
        self.challenge = challenge
        self._claim_paths = sorted({p for r in self.policy.rules for p in r.require.claim_paths()})
        self._header_names = sorted({h for r in self.policy.rules for h in r.require.header_names()})

    # --- Check -----------------------------------------------------------------------------------

    async def on_request(self, ctx: Context) -> None:
        request = ctx.request
        if self.policy.public(request.path_only):
            ctx.facts["rule"] = "public"
            return
        if ctx.view.problem is not None:  # a body that cannot be read cannot be authorized
            raise ctx.view.problem
        action = ctx.action
        if action.name is not None and action.protocol == "mcp":
            ctx.facts["tool" if action.kind == "tools/call" else "target"] = action.name
        if action.model is not None:
            ctx.facts["model"] = action.model

        now = datetime.datetime.now(datetime.UTC)
        decision = self.policy.evaluate(ctx.principal, request, action, now, explain=self.explain)
        ctx.facts["policy"] = decision.explain()
        ctx.facts["rule"] = decision.rule or "-"
        if decision.dry_run:
            ctx.facts["dry_run"] = decision.reason
            DRY_RUN_DENIALS.labels(reason=decision.reason).inc()
            log.warning("dry-run: would deny %s (%s)", decision.reason, decision.message, extra={
                "fields": {"event": "dry_run_denial", "request_id": request.id, "rule": decision.rule,
                           "reason": decision.reason}})
        if not decision.allowed:
            raise self._denial(decision, request, action)
        if decision.rewrite_model:
            self._rewrite_model(ctx, decision.rewrite_model)
        if action.protocol == "mcp" and action.kind in _PER_CALLER and self.cfg.filter_tools_list:
            h = ctx.handoff
            h.want_body("response", "buffered")
            h.filter_tools = True
            h.action = action  # its JSON-RPC id, for the error when the answer is unreadable
            p = ctx.principal
            h.principal = dataclasses.replace(p, claims={c: p.claims[c] for c in self._claim_paths
                                                         if c in p.claims})
            h.source_address = request.source_address
            h.headers = {n: request.headers[n] for n in self._header_names if n in request.headers}
            h.checked_at = now.timestamp()
            # The answer must be readable to be filtered: no compression for this one.
            ctx.mutations.remove_header("accept-encoding")

    @staticmethod
    def _rewrite_model(ctx: Context, model: str) -> None:
        ctx.model_override = model
        ctx.facts["model"] = model
        ctx.facts["requested_model"] = ctx.action.model
        out = ctx.rewrite()
        if isinstance(out.document, dict) and out.document.get("model") != model:
            out.replace({**out.document, "model": model})
            ctx.facts["model_rewritten"] = model

    def _denial(self, decision: Decision, request: Request, action: Action) -> Deny:
        details: dict[str, Any] = {"rule": decision.rule}
        if action.protocol == "mcp" and action.kind not in ("http.get", "http.delete"):
            details["jsonrpc_id"] = action.jsonrpc_id
            details["jsonrpc_code"] = -32001
        headers: dict[str, str] = {}
        if decision.status == 401:
            headers["www-authenticate"] = self.challenge(None, (), "")
            return Unauthenticated(decision.message, reason=decision.reason, headers=headers,
                                   details=details)
        if decision.reason == "policy.insufficient_scope":
            details["required_scopes"] = list(decision.scopes)
            headers["www-authenticate"] = self.challenge(
                "insufficient_scope", decision.scopes, decision.message)
        return Forbidden(decision.message, reason=decision.reason, headers=headers, details=details)

    # --- Process ---------------------------------------------------------------------------------

    async def on_response_body(self, ex: Exchange) -> None:
        h = ex.handoff
        if not h.filter_tools or not ex.response_end or not ex.response_body:
            return
        principal = h.principal
        request = h.request_for_conditions(ex.request)
        now = datetime.datetime.fromtimestamp(h.checked_at, datetime.UTC)
        content_type = ex.response_headers.get("content-type", "").lower()
        sse = "text/event-stream" in content_type
        kind = h.action.kind if h.action is not None else "tools/list"
        try:
            if sse:
                new, hidden, changed = _filter_sse(
                    ex.response_body, lambda m: self._filter_message(m, principal, request, now, kind))
            else:
                new, hidden, changed = _filter_json(
                    ex.response_body, lambda m: self._filter_message(m, principal, request, now, kind))
        except _Unreadable as exc:
            # A list we cannot read is a list we cannot filter, and a client may read it all the
            # same (lenient JSON, several data lines): it is replaced, never passed on.
            if not sse and "json" not in content_type:
                return  # not JSON-RPC at all (an error page): nothing a client takes for a tool list
            TOOLS_LISTS_REFUSED.inc()
            ex.facts["tools_list_refused"] = str(exc)
            log.warning("tools/list answer of request %s could not be filtered (%s): replaced by an error",
                        ex.request.id, exc)
            ex.mutations.replace_body(_unfilterable(h.action.jsonrpc_id if h.action else None, sse))
            return
        if hidden:
            TOOLS_HIDDEN.inc(hidden)
            ex.facts["tools_hidden"] = hidden
        if changed:
            ex.mutations.replace_body(new)

    def _reflect_capabilities(self, result: Any, principal: Principal, request: Request,
                              now: datetime.datetime, kind: str) -> bool:
        """A ``server/discover`` or ``initialize`` answer lists only the capabilities this
        caller may use (``tools`` when it may list tools, ...); a discover answer is then this
        caller's alone (private, bounded ttlMs). Whether anything changed."""
        if not isinstance(result, dict) or not isinstance(result.get("capabilities"), dict):
            return False
        caps = result["capabilities"]
        gone = [c for c, method in _CAPABILITY_METHODS.items()
                if c in caps and not self.policy.may_use(principal, request, method, now)]
        for c in gone:
            del caps[c]
        private = kind == "server/discover" and _mark_private(result, self.cfg.filtered_list_max_ttl_ms)
        return bool(gone) or private

    def _filter_message(self, msg: Any, principal: Principal, request: Request,
                        now: datetime.datetime, kind: str = "tools/list") -> tuple[int, bool]:
        """(tools hidden, whether the message changed)."""
        result = msg.get("result") if isinstance(msg, dict) else None
        if kind != "tools/list":
            return 0, self._reflect_capabilities(result, principal, request, now, kind)
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return 0, False
        kept = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)
                and self.policy.may_call_tool(principal, request, t["name"], now)]
        hidden = len(tools) - len(kept)
        assert isinstance(result, dict)
        if hidden:
            result["tools"] = kept
        return hidden, _mark_private(result, self.cfg.filtered_list_max_ttl_ms) or hidden > 0


def _mark_private(result: dict[str, Any], max_ttl_ms: int) -> bool:
    """Say that a list decided per caller is this caller's alone: ``cacheScope: "private"`` and
    a bounded ``ttlMs`` (SEP-2549; some clients take a missing scope for public). Whether it
    changed anything."""
    changed = False
    if result.get("cacheScope") != "private":
        result["cacheScope"] = "private"
        changed = True
    ttl = result.get("ttlMs")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= max_ttl_ms:
        result["ttlMs"] = max_ttl_ms
        changed = True
    return changed


# MCP requests answered per caller in Process (the answer is rewritten for who asked).
_PER_CALLER = ("tools/list", "server/discover", "initialize")
# A capability a server lists, and the request a caller needs to be allowed to use it.
_CAPABILITY_METHODS = {"tools": "tools/list", "prompts": "prompts/list", "resources": "resources/list"}


class _Unreadable(ValueError):
    """An upstream message the tools/list filter cannot read or write back."""


def _load_message(payload: str | bytes) -> Any:
    """The JSON value of an upstream message. Raises ``_Unreadable`` when it is not JSON or
    nests deeper than requests may (one that only just parsed could not be written back: the
    encoder recurses a frame deeper than the decoder)."""
    try:
        msg = jsonfast.loads(payload)
    except (ValueError, RecursionError):
        raise _Unreadable("not JSON") from None
    if too_deep(msg):
        raise _Unreadable(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return msg


def _unfilterable(jsonrpc_id: Any, sse: bool) -> bytes:
    error = dumps_utf8({"jsonrpc": "2.0", "id": jsonrpc_id,
                        "error": {"code": -32603, "message": "the tool list could not be checked "
                                                             "against your permissions"}})
    return b"event: message\ndata: " + error + b"\n\n" if sse else error


Filter = Callable[[Any], tuple[int, bool]]  # a message -> (tools hidden, whether it changed)


def _filter_json(body: bytes, filt: Filter) -> tuple[bytes, int, bool]:
    msg = _load_message(body)
    hidden, changed = filt(msg)
    if not changed:
        return body, 0, False
    return dumps_utf8(msg), hidden, True


# SSE ends a line with CRLF, LF or CR (a CR not followed by LF); an event ends at an empty line.
_SSE_EOL = r"(?:\r\n|\n|\r(?!\n))"
_SSE_EVENT_END = re.compile(f"({_SSE_EOL}{_SSE_EOL})")
_SSE_LINE_END = re.compile(f"({_SSE_EOL})")


def _filter_sse(body: bytes, filt: Filter) -> tuple[bytes, int, bool]:
    """Filter each SSE event's message; keep every other byte as it was (line endings, bytes
    that are not UTF-8). Events split at any blank line the SSE grammar allows (split at
    ``\n\n`` only, a stream with CRLF line endings was one "event", left unfiltered), and an
    event's ``data:`` lines join with newlines, as a client joins them, into one message."""
    text = body.decode("utf-8", "surrogateescape")
    parts = _SSE_EVENT_END.split(text)  # events at even indices, their separators between
    total, any_changed = 0, False
    for e in range(0, len(parts), 2):
        lines = _SSE_LINE_END.split(parts[e])  # lines at even indices, their endings between
        data_idx = [i for i in range(0, len(lines), 2) if lines[i].startswith("data:")]
        if not data_idx:
            continue  # comments, retry: no message
        data = "\n".join(_field_value(lines[i][5:]) for i in data_idx)
        if not data.strip():
            continue  # an empty message (a keep-alive): nothing a client acts on
        msg = _load_message(data)
        hidden, changed = filt(msg)
        if changed:
            total += hidden
            any_changed = True
            first = data_idx[0]
            lines[first] = "data: " + dumps_utf8(msg).decode()
            for i in reversed(data_idx[1:]):  # the message is one line now
                del lines[i - 1:i + 1]
            parts[e] = "".join(lines)
    return "".join(parts).encode("utf-8", "surrogateescape"), total, any_changed


def _field_value(raw: str) -> str:
    """An SSE field's value: one leading space is not part of it."""
    return raw[1:] if raw.startswith(" ") else raw
