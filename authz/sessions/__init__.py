"""MCP session binding (2025 revisions): a session id works only for the principal that opened it
(``authz.sessions.stage``; its config section in ``authz.sessions.config``)."""
