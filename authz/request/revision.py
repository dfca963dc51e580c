"""Which MCP revision a message speaks, and whether its HTTP headers agree with its body.

Two eras share one endpoint:

- **2026-07-28 and later** (stateless): every request names its revision in
  ``params._meta["io.modelcontextprotocol/protocolVersion"]``, mirrored in the
  ``MCP-Protocol-Version`` header; ``Mcp-Method`` is required, and ``Mcp-Name`` on the
  name-bearing methods (``tools/call`` and ``prompts/get``: ``params.name``; ``resources/read``:
  ``params.uri``). A value that would not survive as a header travels as
  ``=?base64?<canonical base64 of its UTF-8>?=``.
- **2025 revisions** (sessions): the revision is ``params.protocolVersion`` of ``initialize``
  and the ``MCP-Protocol-Version`` header after it; ``Mcp-Method`` / ``Mcp-Name``, when a client
  sends them, must agree with the body all the same.

A proxy that decides on a header while the server acts on the body is a bypass, so any
disagreement is refused: HTTP 400 with JSON-RPC error -32020 (HeaderMismatch, 2026-07-28).
A header that claims the stateless era for a body without its ``_meta`` revision is the same
kind of disagreement.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from authz.errors import BadRequest
from authz.request.http import Request

REVISION_META = "io.modelcontextprotocol/protocolVersion"
STATELESS_SINCE = "2026-07-28"
HEADER_MISMATCH = -32020
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

_SENTINEL = re.compile(r"=\?base64\?(?P<payload>.*)\?=")
_REVISION = re.compile(r"\d{4}-\d{2}-\d{2}")


def mismatch(message: str, reason: str, jsonrpc_id: Any) -> BadRequest:
    return BadRequest(message, reason=reason,
                      details={"jsonrpc_id": jsonrpc_id, "jsonrpc_code": HEADER_MISMATCH})


def header_text(value: str | None) -> str | None:
    """A mirrored header's value as text (base64 sentinel decoded); None when it is malformed."""
    if value is None:
        return None
    m = _SENTINEL.fullmatch(value)
    if m is None:
        return value
    payload = m.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None  # not the canonical encoding a client writes
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def revision_of(request: Request, method: str, params: dict[str, Any], name: str | None,
                jsonrpc_id: Any) -> str | None:
    """The revision the message claims, after checking that its headers agree with its body.
    Raises ``BadRequest`` (-32020) on any disagreement."""
    header_version = request.header("mcp-protocol-version")
    meta = params.get("_meta")
    body_version = meta.get(REVISION_META) if isinstance(meta, dict) else None
    if body_version is not None:
        if not isinstance(body_version, str) or not _REVISION.fullmatch(body_version):
            raise BadRequest(f"params._meta[{REVISION_META!r}] must be a revision date",
                             reason="mcp.invalid_params",
                             details={"jsonrpc_id": jsonrpc_id, "jsonrpc_code": -32602})
        if header_version != body_version:
            raise mismatch("MCP-Protocol-Version header does not match the revision in params._meta",
                           "mcp.version_mismatch", jsonrpc_id)
        _check_mirrors(request, method, name, jsonrpc_id, required=True)
        return body_version
    if header_version is not None and header_version >= STATELESS_SINCE:
        raise mismatch(f"MCP-Protocol-Version {STATELESS_SINCE} or later needs the revision in "
                       "params._meta as well", "mcp.version_mismatch", jsonrpc_id)
    _check_mirrors(request, method, name, jsonrpc_id, required=False)
    if method == "initialize" and isinstance(params.get("protocolVersion"), str):
        return str(params["protocolVersion"])
    return header_version


def _check_mirrors(request: Request, method: str, name: str | None, jsonrpc_id: Any, *,
                   required: bool) -> None:
    """``name``: what the message names (a tool, a prompt, a resource URI), as the action has it."""
    header_method = request.header("mcp-method")
    if header_method is None and required:
        raise mismatch("the Mcp-Method header is required", "mcp.header_missing", jsonrpc_id)
    if header_method is not None and header_text(header_method) != method:
        raise mismatch("Mcp-Method header does not match the JSON-RPC body", "mcp.header_mismatch",
                       jsonrpc_id)
    header_name = request.header("mcp-name")
    if header_name is None:
        if required and method in NAME_BEARING:
            raise mismatch(f"the Mcp-Name header is required for {method}", "mcp.header_missing",
                           jsonrpc_id)
        return
    if header_text(header_name) != (name or ""):
        raise mismatch("Mcp-Name header does not match the JSON-RPC body", "mcp.header_mismatch",
                       jsonrpc_id)
