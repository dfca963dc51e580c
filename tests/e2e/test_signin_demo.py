"""Issue 20: `AUTHZ_SIGNIN=true make run`: the reference config with sign-in on, the dev issuer
playing the company's provider (pick a demo user); the MCP SDK client signs in through Envoy and
the dev-token walk-through keeps working beside it."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from authz.dev.stack import Ports, Stack
from tests.e2e.signin_stack import MemoryTokens, Person, mcp_calls, oauth_provider

pytestmark = pytest.mark.e2e


def test_make_run_with_sign_in_lets_the_sdk_client_sign_in_through_the_dev_provider(tmp_path):
    ports = Ports.free()
    url = f"http://127.0.0.1:{ports.envoy}"
    env = {"AUTHZ_SIGNIN": "true", "AUTHZ_SIGNIN_ISSUER": url, "AUTHZ_RESOURCE": f"{url}/mcp",
           "AUTHZ_SIGNIN_CALLBACK": f"{url}/oauth/callback"}
    with Stack(ports=ports, workdir=tmp_path, env=env) as stack:
        # Presses "dana" at the dev provider (a button per demo user), then the first (Allow) on ours.
        person, storage = Person("dana", consent="dana"), MemoryTokens()
        names, results = anyio.run(mcp_calls, stack.url, oauth_provider(stack.url, person, storage,
                                                                         scope="tools:calendar"), [("whoami", {})])
        who = json.loads(results[0].content[0].text)
        assert who["headers"]["x-authz-user"] == "dana" and who["headers"]["x-authz-roles"] == "doctor"
        # The tool's answer passes the reference response rule, which masks the address in it.
        assert who["headers"]["x-authz-issuer"] == f"http://[REDACTED:ipv4]:{ports.envoy}" and "whoami" in names
        prm = httpx.get(f"{url}/.well-known/oauth-protected-resource/mcp", timeout=10).json()
        assert prm["authorization_servers"] == [url]


def test_the_walk_through_client_signs_in_with_its_loopback_redirect(tmp_path):
    from authz.dev.signin_client import sign_in_and_call
    from authz.dev.stack import free_port
    from tests.helpers.forms import walk

    ports, port = Ports.free(), free_port()
    url = f"http://127.0.0.1:{ports.envoy}"
    env = {"AUTHZ_SIGNIN": "true", "AUTHZ_SIGNIN_ISSUER": url, "AUTHZ_RESOURCE": f"{url}/mcp",
           "AUTHZ_SIGNIN_CALLBACK": f"{url}/oauth/callback"}

    def person_at_a_browser(authorization_url: str) -> None:
        final, _ = walk(httpx.Client(timeout=15), authorization_url, stop_at=f"http://127.0.0.1:{port}/",
                        button="oscar")
        httpx.get(final, timeout=10)  # the browser lands on the client's loopback redirect URI

    with Stack(ports=ports, workdir=tmp_path, env=env):
        result = anyio.run(sign_in_and_call, f"{url}/mcp", port, person_at_a_browser)
    assert result["whoami"]["headers"]["x-authz-user"] == "oscar"
    # The SDK asked for every scope the resource offers; policy still filters by role (no doctors' tools).
    assert "search_patients" not in result["tools"] and "delete_invoice" in result["tools"]
