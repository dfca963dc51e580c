"""The demo MCP server, built with the official ``mcp`` SDK, that sits behind Envoy + authz.

``python -m authz.demo.mcp_server --port 8081`` serves Streamable HTTP at ``/mcp``.

It has no authentication of its own: that is the sidecar's job. It trusts only what it can
verify: the gateway-signed ``x-authz-assertion`` (checked with ``authz.assertion.verify`` against
the sidecar's JWKS when ``AUTHZ_ASSERTION_JWKS_URL`` is set). ``whoami`` shows what it got.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

log = logging.getLogger("authz.demo.mcp")

IDENTITY_HEADERS = ("x-authz-user", "x-authz-email", "x-authz-tenant", "x-authz-roles",
                    "x-authz-scopes", "x-authz-client", "x-authz-issuer")

INVOICES = {"INV-1001": {"customer": "Acme Corp", "amount": 1200.0},
            "INV-1002": {"customer": "Globex", "amount": 830.5}}


def verify_assertion(headers: Any) -> dict[str, Any]:
    """What the backend can prove about the caller. ``valid`` is None when not configured."""
    token = headers.get("x-authz-assertion") if headers else None
    url = os.environ.get("AUTHZ_ASSERTION_JWKS_URL")
    if not token:
        return {"present": False, "valid": False}
    if not url:
        return {"present": True, "valid": None, "why": "AUTHZ_ASSERTION_JWKS_URL is not set"}
    from authz import assertion

    try:
        claims = assertion.verify(token, jwks_url=url,
                                  issuer=os.environ.get("AUTHZ_ASSERTION_ISSUER", "urn:authz:demo-sidecar"),
                                  method="POST", path="/mcp",
                                  request_id=headers.get("x-request-id"))
    except assertion.InvalidAssertion as exc:
        return {"present": True, "valid": False, "why": getattr(exc, "reason", str(exc))}
    return {"present": True, "valid": True, "sub": claims.get("sub"), "client": claims.get("client")}


def build_server() -> MCPServer:
    mcp = MCPServer("authz-demo", instructions="Demo tools behind the authz sidecar.")

    @mcp.tool()
    def get_calendar(day: str) -> list[dict[str, str]]:
        """Your meetings on a day (e.g. 'mon')."""
        return [{"day": day, "time": "09:00", "title": "Stand-up"},
                {"day": day, "time": "14:00", "title": "Quarterly forecast review"}]

    @mcp.tool()
    def list_invoices() -> list[dict[str, Any]]:
        """Open invoices."""
        return [{"id": k, **v} for k, v in INVOICES.items()]

    @mcp.tool()
    def delete_invoice(invoice_id: str) -> str:
        """Delete an invoice (needs invoices:write and the accounting role)."""
        return f"invoice {invoice_id} deleted" if invoice_id in INVOICES else f"no invoice {invoice_id}"

    @mcp.tool()
    def search_patients(query: str) -> list[dict[str, str]]:
        """Search patient records (doctors only)."""
        return [{"patient": "P-17", "match": query}]

    @mcp.tool()
    def whoami(ctx: Context) -> dict[str, Any]:
        """What the backend knows about the caller, from the sidecar's verified headers."""
        headers = ctx.headers or {}
        return {"headers": {h: headers.get(h) for h in IDENTITY_HEADERS if headers.get(h) is not None},
                "authorization_header_seen": "authorization" in headers,
                "assertion": verify_assertion(headers)}

    @mcp.resource("invoices://{invoice_id}")
    def invoice(invoice_id: str) -> str:
        """One invoice."""
        return str(INVOICES.get(invoice_id, {}))

    @mcp.prompt()
    def summarize_invoice(invoice_id: str) -> str:
        """Ask the model to summarize an invoice."""
        return f"Summarize invoice {invoice_id} for a busy executive."

    return mcp


def build_app():
    # Behind Envoy the Host header is the gateway's: the SDK's DNS-rebinding check (meant for
    # servers exposed directly to browsers) would refuse it. The sidecar is the gate here.
    return build_server().streamable_http_app(
        streamable_http_path="/mcp", json_response=True, stateless_http=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))


class UpstreamHeader:
    """ASGI middleware: tag every answer with ``x-upstream: mcp`` so tests see who answered."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-upstream", b"mcp")]}
            await send(message)
        await self.app(scope, receive, tagged if scope["type"] == "http" else send)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m authz.demo.mcp_server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("demo MCP server listening on http://%s:%d/mcp", args.host, args.port)
    uvicorn.run(UpstreamHeader(build_app()), host=args.host, port=args.port, log_level="warning",
                lifespan="on")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
