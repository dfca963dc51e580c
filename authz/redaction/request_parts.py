"""What a rule covers besides the body: the URL query string and a configured list of request
headers.

Headers are rewritten in place (a finding masked like in the body). The query string is read
percent-decoded; a query carrying a finding whose action is not ``allow`` is refused (403
``redaction.query``, naming the entity types, never the values): the path reaches the upstream
as the client wrote it, so it cannot be forwarded with the value masked.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote_plus

from authz.errors import Forbidden
from authz.redaction.redactor import Redactor
from authz.request import Request


def scan_request_parts(red: Redactor, request: Request, headers: Iterable[str], *, query: bool) -> dict[str, str]:
    """Scan the query (refusing it when it carries a finding) and ``headers``; returns the headers
    to set upstream (those that changed)."""
    if query and request.query:
        before = dict(red.found)
        text = unquote_plus(request.query, encoding="utf-8", errors="surrogateescape")
        red.text(text)
        new = sorted(t for t, n in red.found.items() if n > before.get(t, 0) and red.action_for(t) != "allow")
        if new:
            raise Forbidden(f"the query string carries data that may not leave in a URL: {', '.join(new)}",
                            reason="redaction.query", details={"entity_types": new})
    out: dict[str, str] = {}
    for name in headers:
        values = request.header_values(name)
        if not values:
            continue
        value = ",".join(values)
        new_value = red.text(value)
        if new_value != value:
            out[name] = new_value
    return out
