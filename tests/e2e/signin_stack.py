"""The sign-in stack for the e2e tests: a real upstream OIDC provider (node oidc-provider, one
static client, no registration), Envoy, the sidecar with ``signin:`` on, the demo MCP server, and
an MCP SDK client that signs in with ``mcp.client.auth.OAuthClientProvider``."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx

from authz.dev.signin_client import MemoryTokens
from authz.dev.stack import Ports, Stack
from tests.helpers.forms import walk
from tests.helpers.oidc_provider import OidcProvider

REDIRECT = "http://127.0.0.1:53682/callback"  # the MCP client's loopback redirect (never listened on)
UPSTREAM_CLIENT, UPSTREAM_SECRET = "authz-sidecar", "upstream-secret"
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def signin_config(ports: Ports, idp_issuer: str, workdir: Path, *, redis_url: str = "", extra: str = "",
                  upstream_extra: str = "") -> Path:
    base = f"http://127.0.0.1:{ports.envoy}"
    text = textwrap.dedent(f"""\
        version: 1
        server: {{debug_headers: true}}
        log: {{level: info, format: text}}
        store: {{redis_url: "{redis_url}"}}
        identity:
          resource: {base}/mcp
          assertion: {{issuer: urn:authz:demo-sidecar}}
          metadata: {{resource_name: signin test MCP server, scopes_supported: ["tools:calendar", "invoices:read"]}}
        audit: {{enabled: true, directory: {workdir / "audit"}, checkpoint_every_seconds: 1}}
        policy:
          default: deny
          protocols: [{{paths: ["/mcp"], protocol: mcp}}]
          filter_tools_list: true
          rules:
            - id: session
              match: {{paths: ["/mcp"], mcp: {{methods: [initialize, ping, tools/list, "notifications/*", http.get, http.delete]}}}}
            - id: whoami
              match: {{paths: ["/mcp"], mcp: {{methods: [tools/call], tools: [whoami]}}}}
            - id: calendar
              match: {{paths: ["/mcp"], mcp: {{methods: [tools/call], tools: [get_calendar]}}}}
              require: {{scopes_all: ["tools:calendar"]}}
            - id: invoices-write
              match: {{paths: ["/mcp"], mcp: {{methods: [tools/call], tools: [delete_invoice]}}}}
              require: {{scopes_all: ["invoices:write"], roles_any: [accounting]}}
        limits:
          rate_limits:
            - {{id: lena-mcp, key: [user], rate: 4/min, burst: 4, match: {{paths: ["/mcp"]}}, when: {{subjects: [lena]}}}}
        redaction:
          enabled: true
          rules:
            - id: oscar-tool-arguments
              match: {{paths: ["/mcp"], mcp: {{methods: [tools/call]}}}}
              when: {{subjects: [oscar]}}
              actions: {{email: mask, default: allow}}
        signin:
          enabled: true
          issuer: {base}
          scopes_supported: ["tools:calendar", "invoices:read", "invoices:write"]
          scope_descriptions: {{"tools:calendar": "read your calendar"}}
          upstream:
            issuer: {idp_issuer}
            client_id: {UPSTREAM_CLIENT}
            client_secret: {UPSTREAM_SECRET}
            scopes: [openid, email, profile]
        """) + upstream_extra + extra
    path = workdir / "authz.yaml"
    path.write_text(text)
    return path


@dataclasses.dataclass
class SigninStack:
    stack: Stack
    idp: OidcProvider

    @property
    def url(self) -> str:
        return self.stack.url

    def stop(self) -> None:
        self.stack.stop()
        self.idp.stop()


def start_signin_stack(workdir: Path, *, redis_url: str = "", extra: str = "",
                       upstream_extra: str = "") -> SigninStack:
    ports = Ports.free()
    idp = OidcProvider(client_id=UPSTREAM_CLIENT, client_secret=UPSTREAM_SECRET,
                       redirect_uri=f"http://127.0.0.1:{ports.envoy}/oauth/callback").start()
    try:
        config = signin_config(ports, idp.issuer, workdir, redis_url=redis_url, extra=extra,
                               upstream_extra=upstream_extra.replace("{idp}", idp.issuer))
        stack = Stack(ports=ports, authz_config=config, workdir=workdir, issuer=False).start()
    except BaseException:
        idp.stop()
        raise
    return SigninStack(stack, idp)


class Person:
    """The user at the browser: signs in upstream as ``login`` and answers the consent page."""

    def __init__(self, login: str, *, consent: str = "allow", tamper_iss: str | None = None) -> None:
        self.login = login
        self.consent = consent
        self.tamper_iss = tamper_iss
        self.browser = httpx.Client(timeout=15, follow_redirects=False)
        self.final_url = ""
        self.pages: list[httpx.Response] = []

    async def redirect_handler(self, url: str) -> None:
        self.final_url, self.pages = await anyio.to_thread.run_sync(
            lambda: walk(self.browser, url, stop_at=REDIRECT, login=self.login, button=self.consent))

    async def callback_handler(self) -> Any:
        from mcp.shared.auth import AuthorizationCodeResult

        params = {k: v[0] for k, v in parse_qs(urlsplit(self.final_url).query).items()}
        if "code" not in params:
            raise RuntimeError(f"authorization failed: {params}")
        iss = self.tamper_iss if self.tamper_iss is not None else params.get("iss")
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=iss)


def oauth_provider(url: str, person: Person, storage: MemoryTokens, *, scope: str = "tools:calendar",
                   client_metadata_url: str | None = None) -> Any:
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import OAuthClientMetadata

    metadata = OAuthClientMetadata(client_name="e2e MCP client", redirect_uris=[REDIRECT], scope=scope,
                                   grant_types=["authorization_code", "refresh_token"])
    return OAuthClientProvider(server_url=f"{url}/mcp", client_metadata=metadata, storage=storage,
                               redirect_handler=person.redirect_handler, callback_handler=person.callback_handler,
                               client_metadata_url=client_metadata_url)


async def mcp_calls(url: str, auth: Any, calls: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[Any]]:
    """Sign in (through ``auth``), list tools and call each tool in ``calls``."""
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with create_mcp_http_client(auth=auth) as http, streamable_http_client(f"{url}/mcp", http_client=http) as s:
        async with ClientSession(s[0], s[1]) as session:
            await session.initialize()
            tools = await session.list_tools()
            results = [await session.call_tool(name, args) for name, args in calls]
    return [t.name for t in tools.tools], results
