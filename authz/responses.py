"""The one place a denial becomes an HTTP answer: status, headers and a JSON body.

Both adapters (``Check`` and ``Process``) call ``render_denial``; the same ``reason`` string
goes into the ``x-authz-reason`` header, the body, the decision log and the metric label.
"""

from __future__ import annotations

import dataclasses
import json

from authz.errors import Answer, Deny
from authz.model import Request

REASON_HEADER = "x-authz-reason"


@dataclasses.dataclass(frozen=True, slots=True)
class Denial:
    status: int
    headers: dict[str, str]
    body: bytes


def render_denial(deny: Deny, request: Request | None) -> Denial:
    headers = {"content-type": "application/json", "cache-control": "no-store",
               REASON_HEADER: deny.reason}
    headers.update({k.lower(): v for k, v in deny.headers.items()})
    if request is not None and request.id:
        # The client can quote it; and Process, which sees only the response of a request Check
        # refused, joins its outcome record to the decision by it.
        headers["x-request-id"] = request.id
    if isinstance(deny, Answer):
        return Denial(status=deny.status, headers=headers, body=_json(deny.details))
    if deny.body is not None:
        return Denial(status=deny.status, headers=headers, body=deny.body)
    payload: dict[str, object] = {"error": deny.reason, "message": deny.message}
    if request is not None and request.id:
        payload["request_id"] = request.id
    for key, value in deny.details.items():
        payload.setdefault(key, value)
    jsonrpc_id = deny.details.get("jsonrpc_id", _MISSING)
    if jsonrpc_id is not _MISSING:
        # MCP clients parse JSON-RPC errors; keep our fields under error.data.
        payload = {"jsonrpc": "2.0", "id": jsonrpc_id,
                   "error": {"code": deny.details.get("jsonrpc_code", -32600),
                             "message": deny.message,
                             "data": {k: v for k, v in payload.items()
                                      if k not in ("jsonrpc_id", "jsonrpc_code")}}}
    return Denial(status=deny.status, headers=headers, body=_json(payload))


def _json(value: object) -> bytes:
    """Compact JSON with non-ASCII written as itself: a JSON-RPC id comes back byte for byte as
    the client wrote it (ids holding a surrogate escape are refused where the body is read)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"), default=str).encode("ascii")


_MISSING = object()
