"""Dev tooling, apart from the serving code: the local stack (``stack``: ``make run``), demo
upstreams and a dev token issuer, for the README walk-through, the tests and the bench.

- ``python -m authz.dev.llm --name medical --port 8083``: an OpenAI/Anthropic-compatible fake model
- ``python -m authz.dev.mcp_server --port 8081``: an MCP server (official SDK) at ``/mcp``
- ``python -m authz.dev.issuer --port 9400``: OIDC discovery and JWKS for ``authz dev-token``

Each binds before it logs its one "listening on" line, so ``--port 0`` logs the real port.
"""

from __future__ import annotations

import logging
import socket

__all__ = ["bind", "configure_logging", "url_of"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; binding here (not in the server) lets port 0 be logged as the real port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:  # a port in use is an everyday mistake: one line, exit 1, no traceback
        raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def configure_logging() -> None:
    # Libraries (the mcp SDK above all) log every request at INFO; the demo shows only its own lines.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("authz.dev").setLevel(logging.INFO)
