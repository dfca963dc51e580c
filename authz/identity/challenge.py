"""``WWW-Authenticate: Bearer ...`` challenges (RFC 6750 §3, RFC 9728 §5.1, MCP authorization).

Every parameter value goes through ``quote_param``: RFC 6750 limits ``error_description`` (and we
apply the same to the others) to ``%x20-21 / %x23-5B / %x5D-7E``, i.e. printable ASCII without
``"`` and ``\\``. Anything else is dropped, so no value can close the quoted string or inject a
header line, whatever it contains.
"""

from __future__ import annotations

_ALLOWED = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
MAX_PARAM_CHARS = 512


def quote_param(value: str) -> str:
    safe = "".join(c for c in value if c in _ALLOWED)[:MAX_PARAM_CHARS]
    return f'"{safe}"'


def bearer_challenge(*, resource_metadata: str | None = None, error: str | None = None,
                     description: str | None = None, scope: str | None = None) -> str:
    """A Bearer challenge. ``error`` is omitted when the client sent no credentials at all
    (RFC 6750 §3.1), which is also when ``description`` is left out."""
    params: list[str] = []
    if resource_metadata:
        params.append(f"resource_metadata={quote_param(resource_metadata)}")
    if error:
        params.append(f"error={quote_param(error)}")
        if description:
            params.append(f"error_description={quote_param(description)}")
    if scope:
        params.append(f"scope={quote_param(scope)}")
    return "Bearer " + ", ".join(params) if params else "Bearer"
