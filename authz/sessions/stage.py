"""The session stage: an ``Mcp-Session-Id`` is honoured only for the principal that opened it.

- ``Check``, an MCP ``initialize`` without a session id: the principal is handed to Process,
  which records it against the session id the server's answer carries (``Mcp-Session-Id``
  response header), in the store, with the idle TTL.
- ``Check``, any MCP request (POST, GET stream, DELETE) with a session id: the recorded owner
  must be this principal (issuer, subject and client). Otherwise 404 with a JSON-RPC error,
  the answer the spec gives for an unknown session: the same for "never recorded" (expired,
  recorded before a memory store restarted) and "someone else's", so the answer tells a caller
  nothing about other people's sessions. The refusal is counted by why
  (``authz_mcp_session_refusals_total``) and the audit record says why (``mcp_session``).
  A use renews the binding's TTL.

Session ids are stored hashed (they are bearer secrets of the MCP server). A store outage fails
closed (503). What survives: with Redis, bindings are shared by every replica and survive a
sidecar restart; with the memory store they die with the process and clients must start a new
session (they are told 404, as the spec expects).
"""

from __future__ import annotations

import hashlib
import json

from prometheus_client import Counter

from authz.errors import Deny, Unavailable
from authz.model import Context, Exchange, Principal
from authz.pipeline import Stage
from authz.sessions.config import SessionsConfig
from authz.store import Store, StoreUnavailable

SESSION_HEADER = "mcp-session-id"
SESSION_KEY = "mcpsession:{digest}"

REFUSALS = Counter("authz_mcp_session_refusals_total",
                   "MCP requests refused because their session id is not the caller's.", ["why"])
BOUND = Counter("authz_mcp_sessions_bound_total", "MCP session ids recorded for the principal that opened them.")


def owner_of(p: Principal) -> str:
    """Who a session belongs to, as one comparable text."""
    return json.dumps([p.issuer, p.subject, p.client or ""], separators=(",", ":"))


def session_key(session_id: str) -> str:
    return SESSION_KEY.format(digest=hashlib.sha256(session_id.encode()).hexdigest())


class SessionNotFound(Deny):
    status = 404
    reason = "mcp.session_not_found"
    default_message = "session not found; start a new session (initialize)"


class SessionStage(Stage):
    name = "sessions"

    def __init__(self, cfg: SessionsConfig, store: Store) -> None:
        self.cfg = cfg
        self.store = store

    async def on_request(self, ctx: Context) -> None:
        if ctx.view.protocol != "mcp":
            return
        session_id = ctx.request.header(SESSION_HEADER)
        if session_id is None:
            if ctx.action.kind == "initialize":
                ctx.handoff.session_owner = owner_of(ctx.principal)
            return
        owner = owner_of(ctx.principal)
        key = session_key(session_id)
        try:
            recorded = await self.store.get(key)
            if recorded is not None and recorded.decode() == owner:
                await self.store.set(key, recorded, ttl=self.cfg.idle_ttl_seconds)  # renew
                return
        except StoreUnavailable as exc:
            raise Unavailable("MCP sessions cannot be checked right now",
                              reason="mcp.session_store_unavailable") from exc
        why = "unknown" if recorded is None else "other_principal"
        REFUSALS.labels(why=why).inc()
        ctx.facts["mcp_session"] = why
        action = ctx.action
        details: dict[str, object] = {"jsonrpc_id": action.jsonrpc_id, "jsonrpc_code": -32001}
        raise SessionNotFound(details=details)

    async def on_response_headers(self, ex: Exchange) -> None:
        owner = ex.handoff.session_owner
        if not owner or not 200 <= ex.response_status < 300:
            return
        session_id = ex.response_headers.get(SESSION_HEADER)
        if not session_id:
            return
        try:
            # only_if_absent: a server that hands out an id twice cannot move a session to
            # another principal.
            if await self.store.set(session_key(session_id), owner.encode(), ttl=self.cfg.idle_ttl_seconds,
                                    only_if_absent=True):
                BOUND.inc()
                ex.facts["mcp_session"] = "bound"
        except StoreUnavailable:
            # The session stays unbound: every later use is refused 404 and the client starts a
            # new one; the answer itself is not held back.
            ex.facts["mcp_session"] = "not_bound"
