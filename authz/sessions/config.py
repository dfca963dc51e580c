"""The ``sessions:`` section."""

from __future__ import annotations

from pydantic import Field

from authz.schema import Model


class SessionsConfig(Model):
    """Binding of MCP session ids (``Mcp-Session-Id``, 2025 revisions) to the principal that
    opened them. A session answer's id is recorded in the store with ``idle_ttl_seconds``
    (renewed by every use); a request carrying an id that is not recorded for its principal is
    answered 404 with a JSON-RPC error, as the MCP spec answers an unknown session, so the
    client starts a new one. Stateless MCP (2026-07-28) has no session ids and is untouched."""

    enabled: bool = True
    idle_ttl_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)
