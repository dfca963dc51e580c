"""Sign-in for any MCP server: the sidecar as an OAuth 2.1 authorization server, bridged to the
company's OIDC provider. ``config`` (the ``signin:`` section), ``server`` (the endpoints),
``keys`` (signing keys and the identity issuer for our tokens), ``state`` (what is remembered,
in the store), ``upstream`` (the company's provider), ``clients`` and ``cimd`` (who may ask),
``answers`` and ``pages`` (what goes back), ``events`` (audit)."""
