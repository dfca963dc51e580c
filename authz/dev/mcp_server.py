"""The demo MCP server, built with the official ``mcp`` SDK, that sits behind Envoy + authz.

``python -m authz.dev.mcp_server --port 8081`` serves Streamable HTTP at ``/mcp`` (stateless,
JSON answers) and the same server at ``/mcp/sse`` answering with SSE streams.
``customer_record`` returns personal data (a card, an SSN, an email, a phone, an IBAN, a
customer name) and ``customer_credentials`` a secret (an AWS key): what response redaction
guards. ``customer_broken_answer`` answers with what no scanner can read (``kind``: ``not_json``,
``not_utf8``, ``huge``: 2 MB), in the path's framing (a JSON body, or one SSE event), to show the
sidecar refusing it rather than passing it on unscanned. It has no authentication of its own:
that is the sidecar's job. ``whoami`` shows the identity headers the sidecar set and whether
the gateway-signed ``x-authz-assertion`` verifies (with ``authz.identity.assertion.verify``
against ``$AUTHZ_ASSERTION_JWKS_URL``, when that is set).

Environment for the assertion check: ``AUTHZ_ASSERTION_JWKS_URL`` (turns it on),
``AUTHZ_ASSERTION_ISSUER`` (default ``urn:authz:demo-sidecar``), ``AUTHZ_ASSERTION_AUDIENCE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authz.dev import bind, configure_logging, url_of

log = logging.getLogger("authz.dev.mcp")

IDENTITY_HEADERS = ("x-authz-user", "x-authz-email", "x-authz-tenant", "x-authz-roles",
                    "x-authz-scopes", "x-authz-client", "x-authz-issuer")
DEFAULT_ASSERTION_ISSUER = "urn:authz:demo-sidecar"

INVOICES = {"INV-1001": {"customer": "Acme Corp", "amount": 1200.0, "currency": "EUR"},
            "INV-1002": {"customer": "Globex", "amount": 830.5, "currency": "EUR"}}
PATIENTS = [{"patient": "P-17", "name": "Jane Roe", "ward": "cardiology"},
            {"patient": "P-23", "name": "John Doe", "ward": "oncology"}]

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
CUSTOMER_RECORD = ("Customer Acme Corp: card 4539 1488 0343 6467, SSN 536-22-1234, mail cfo@acme.com, "
                   "phone +1 415 555 0134, IBAN DE89 3704 0044 0532 0130 00")
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"


def _assertion_verifier() -> Callable[..., dict[str, Any]] | None:
    # The backend half of authz.identity.assertion may be absent (or broken) in a trimmed install; the demo
    # then still serves and reports the check as not configured.
    try:
        assertion = importlib.import_module("authz.identity.assertion")
    except ImportError:
        return None
    return getattr(assertion, "verify", None)


def check_assertion(headers: Mapping[str, str], method: str | None, path: str | None) -> dict[str, Any]:
    """What the backend can prove about the caller. ``valid`` is None when the check is not configured."""
    token = headers.get("x-authz-assertion")
    url = os.environ.get("AUTHZ_ASSERTION_JWKS_URL")
    verify = _assertion_verifier()
    if not url or verify is None:
        return {"present": bool(token), "valid": None, "why": "assertion check not configured"}
    if not token:
        return {"present": False, "valid": False, "why": "no x-authz-assertion header"}
    try:
        claims = verify(token, jwks_url=url,
                        issuer=os.environ.get("AUTHZ_ASSERTION_ISSUER", DEFAULT_ASSERTION_ISSUER),
                        audience=os.environ.get("AUTHZ_ASSERTION_AUDIENCE") or None,
                        method=method, path=path, request_id=headers.get("x-request-id"))
    except Exception as exc:  # any failure, a JWKS fetch included, means "not proven": fail closed
        return {"present": True, "valid": False, "why": getattr(exc, "reason", type(exc).__name__)}
    return {"present": True, "valid": True, "sub": claims.get("sub"), "client": claims.get("client")}


def whoami_report(ctx: Context) -> dict[str, Any]:
    headers = ctx.headers or {}
    request = getattr(ctx.request_context, "request", None)
    url = getattr(request, "url", None)
    assertion = check_assertion(headers, getattr(request, "method", None), getattr(url, "path", None))
    return {"headers": {h: headers[h] for h in IDENTITY_HEADERS if h in headers},
            "authorization_header_seen": "authorization" in headers,
            "assertion_present": assertion["present"], "assertion_valid": assertion["valid"],
            "assertion": assertion}


def build_server() -> MCPServer:
    # log_level: MCPServer() calls logging.basicConfig itself (INFO, one line per request otherwise).
    mcp = MCPServer("authz-demo", instructions="Demo tools behind the authz sidecar.", log_level="WARNING")

    @mcp.tool(annotations=READ_ONLY)
    def get_calendar(day: str) -> list[dict[str, str]]:
        """Your meetings on a day (e.g. 'mon' or '2025-06-02')."""
        return [{"day": day, "time": "09:00", "title": "Stand-up"},
                {"day": day, "time": "11:30", "title": "1:1 with Dana"},
                {"day": day, "time": "14:00", "title": "Quarterly forecast review"}]

    @mcp.tool(annotations=READ_ONLY)
    def list_invoices() -> list[dict[str, Any]]:
        """Open invoices."""
        return [{"id": k, **v} for k, v in INVOICES.items()]

    @mcp.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True, open_world_hint=False))
    def delete_invoice(invoice_id: str) -> str:
        """Delete an invoice (needs invoices:write and the accounting role)."""
        # Nothing is really deleted: the demo must behave the same on every run.
        return f"invoice {invoice_id} deleted" if invoice_id in INVOICES else f"no invoice {invoice_id}"

    @mcp.tool(annotations=READ_ONLY)
    def search_patients(query: str) -> list[dict[str, str]]:
        """Search patient records (doctors only)."""
        q = query.lower()
        return [p for p in PATIENTS if any(q in v.lower() for v in p.values())]

    @mcp.tool(annotations=READ_ONLY)
    def whoami(ctx: Context) -> dict[str, Any]:
        """What the backend knows about the caller, from the sidecar's headers and signed assertion."""
        return whoami_report(ctx)

    @mcp.tool(annotations=READ_ONLY)
    def customer_record(customer: str) -> dict[str, str]:
        """A customer's record: personal data the sidecar masks on the way back."""
        return {"customer": customer, "record": CUSTOMER_RECORD, "card": "4539 1488 0343 6467"}

    @mcp.tool(annotations=READ_ONLY)
    def customer_credentials(customer: str) -> str:
        """A customer's cloud credentials: a secret the sidecar blocks on the way back."""
        return f"{customer} uses the AWS access key {AWS_KEY}"

    @mcp.tool(annotations=READ_ONLY)
    def customer_broken_answer(kind: str) -> str:
        """An answer no scanner can read (kind: not_json, not_utf8, huge); BrokenAnswers sends it."""
        return f"no broken answer of kind {kind!r}"  # reached only for a kind BrokenAnswers does not know

    @mcp.resource("customers://{customer}", mime_type="text/plain")
    def customer(customer: str) -> str:
        """One customer's record."""
        return f"{customer}: {CUSTOMER_RECORD}"

    @mcp.prompt()
    def write_to_customer(customer: str) -> str:
        """Draft a mail to a customer."""
        return f"Write to {customer} at cfo@acme.com about card 4539 1488 0343 6467."

    @mcp.resource("invoices://{invoice_id}", mime_type="application/json")
    def invoice(invoice_id: str) -> str:
        """One invoice."""
        if invoice_id not in INVOICES:
            raise ValueError(f"no invoice {invoice_id}")
        return json.dumps({"id": invoice_id, **INVOICES[invoice_id]})

    @mcp.prompt()
    def summarize_invoice(invoice_id: str) -> str:
        """Ask the model to summarize an invoice."""
        return f"Summarize invoice {invoice_id} (read it from invoices://{invoice_id}) for a busy executive."

    return mcp


class UpstreamHeader:
    """ASGI middleware: tag every answer with ``x-upstream: mcp`` so tests see who answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-upstream", b"mcp")]}
            await send(message)

        await self.app(scope, receive, tagged)


BROKEN_KINDS = ("not_json", "not_utf8", "huge")


def broken_answer(kind: str, jsonrpc_id: Any, *, sse: bool) -> bytes:
    """The bytes of a broken answer to a ``tools/call``: a JSON body, or one SSE event."""
    if kind == "huge":
        text = "lorem ipsum " * (2 * 1024 * 1024 // 12)
        message = json.dumps({"jsonrpc": "2.0", "id": jsonrpc_id,
                              "result": {"content": [{"type": "text", "text": text}]}}).encode()
    elif kind == "not_utf8":
        message = b'{"jsonrpc": "2.0", "id": ' + json.dumps(jsonrpc_id).encode() + b', "result": "\xff\xfe"}'
    else:
        message = b'{"jsonrpc": "2.0", "id": ' + json.dumps(jsonrpc_id).encode() + b', "result": {oops'
    return b"event: message\ndata: " + message + b"\n\n" if sse else message


class BrokenAnswers:
    """ASGI middleware: a ``tools/call`` of ``customer_broken_answer`` gets the broken bytes its
    ``kind`` names, straight from here (the SDK would only ever send well-formed JSON)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        kind, jsonrpc_id = _broken_kind(body)
        if kind is not None:
            sse = scope["path"].rstrip("/").endswith("/sse")
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream" if sse else b"application/json")]})
            await send({"type": "http.response.body", "body": broken_answer(kind, jsonrpc_id, sse=sse)})
            return
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)


def _broken_kind(body: bytes) -> tuple[str | None, Any]:
    try:
        msg = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(msg, dict) or msg.get("method") != "tools/call":
        return None, None
    params = msg.get("params") or {}
    kind = (params.get("arguments") or {}).get("kind") if isinstance(params, dict) else None
    if params.get("name") != "customer_broken_answer" or kind not in BROKEN_KINDS:
        return None, None
    return kind, msg.get("id")


def build_app(*, stateful: bool = False) -> ASGIApp:
    """The ASGI app: ``/mcp`` (JSON answers) and ``/mcp/sse`` (SSE answers); stateless unless
    ``stateful`` (then 2025 clients get an ``Mcp-Session-Id`` from initialize and must send it).
    Build a new one per server run (the SDK's session manager runs once per instance)."""
    # Behind Envoy the Host header is the gateway's. The SDK turns on its DNS-rebinding check
    # (Host must be 127.0.0.1/localhost) by default and would answer 421; the sidecar is the gate here.
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    json_app = build_server().streamable_http_app(
        streamable_http_path="/mcp", json_response=True, stateless_http=not stateful, transport_security=security)
    sse_app = build_server().streamable_http_app(
        streamable_http_path="/mcp/sse", json_response=False, stateless_http=not stateful,
        transport_security=security)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with json_app.router.lifespan_context(json_app), sse_app.router.lifespan_context(sse_app):
            yield

    return UpstreamHeader(BrokenAnswers(Starlette(routes=[*json_app.routes, *sse_app.routes], lifespan=lifespan)))


class _Server(uvicorn.Server):
    """uvicorn, calling back once it accepts connections (for the one "listening" line)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_started()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m authz.dev.mcp_server",
                                description="The demo MCP server (Streamable HTTP at /mcp).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--stateful", action="store_true",
                   help="hand 2025 clients a session id (Mcp-Session-Id) at initialize")
    args = p.parse_args(argv)
    configure_logging()
    sock = bind(args.host, args.port)
    server = _Server(uvicorn.Config(build_app(stateful=args.stateful), log_level="warning", lifespan="on"),
                     on_started=lambda: log.info("demo MCP server listening on %s/mcp", url_of(sock)))

    # uvicorn drains on SIGINT/SIGTERM, then re-raises the signal to the previous handler: make
    # that a quiet exit 0 rather than a traceback (SIGINT) or death by signal (SIGTERM).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve(sockets=[sock]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
