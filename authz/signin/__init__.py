"""Sign-in for any MCP server: the sidecar as an OAuth 2.1 authorization server, bridged to the
company's OIDC provider.

``config`` (the ``signin:`` section); ``server`` (routes, CORS, metadata) over the endpoints in
``authorization`` (authorize, the upstream's callback, consent), ``token`` (token, revocation)
and ``registration``; ``context`` (what a request works with) and ``params`` (reading
parameters); ``state`` (what is remembered, in the store); ``upstream`` (the company's provider);
``clients`` and ``cimd`` (who may ask); ``keys``, ``access_tokens`` and ``pkce``; ``answers`` and
``pages`` (what goes back, the one place errors become answers); ``events`` (log, metric, audit).
"""
