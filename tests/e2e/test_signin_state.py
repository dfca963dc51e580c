"""Issue 20: the authorization server's state (clients, consents, refresh-token families) lives in
Redis: it survives a sidecar restart, and two replicas share it."""

from __future__ import annotations

import sys

import anyio
import httpx
import pytest

from authz.dev.stack import ManagedProcess, free_port, http_ok
from authz.identity.assertion import SigningKey
from tests.e2e.signin_stack import MemoryTokens, Person, mcp_calls, oauth_provider, start_signin_stack

pytestmark = pytest.mark.e2e


def refresh(base: str, storage: MemoryTokens, token: str) -> httpx.Response:
    info = storage.client_info
    return httpx.post(f"{base}/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token},
                      auth=(info.client_id, info.client_secret), timeout=10)


def ping(url: str, access_token: str) -> int:
    return httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10,
                      headers={"authorization": f"Bearer {access_token}",
                               "accept": "application/json, text/event-stream"}).status_code


def test_state_survives_a_restart_and_two_replicas_share_it(tmp_path, redis_url):
    key = tmp_path / "signin-key.pem"
    key.write_bytes(SigningKey.generate("ES256").private_pem())
    running = start_signin_stack(tmp_path, redis_url=redis_url, extra=f"  key_files: [{key}]\n")
    replica = None
    try:
        person, storage = Person("oscar"), MemoryTokens()
        anyio.run(mcp_calls, running.url, oauth_provider(running.url, person, storage), [("whoami", {})])
        first_access, first_refresh = storage.tokens.access_token, storage.tokens.refresh_token

        running.stack.stop_authz()
        running.stack.start_authz()

        # The access token minted before the restart still verifies (the key is a file), the
        # registered client and the refresh-token family are still known (Redis).
        assert ping(running.url, first_access) == 200
        rotated = refresh(running.url, storage, first_refresh)
        assert rotated.status_code == 200, rotated.text
        assert ping(running.url, rotated.json()["access_token"]) == 200

        # A second replica on the same Redis: its token endpoint knows the client and the family.
        config = running.stack.workdir / "replica.yaml"
        config.write_text(running.stack.authz_config.read_text().replace(
            "server: {debug_headers: true}", "server: {debug_headers: true, instance_id: replica-2}"))
        http_port = free_port()
        replica = ManagedProcess("authz-2", [sys.executable, "-m", "authz", "serve", "--config", str(config),
                                             "--grpc-address", f"127.0.0.1:{free_port()}",
                                             "--http-address", f"127.0.0.1:{http_port}"]).start()
        replica.wait_ready(lambda: http_ok(f"http://127.0.0.1:{http_port}/readyz"), timeout=30)
        second = refresh(f"http://127.0.0.1:{http_port}", storage, rotated.json()["refresh_token"])
        assert second.status_code == 200, second.text
        # Reusing the already-rotated token at the first replica revokes the family for both.
        reused = refresh(running.url, storage, rotated.json()["refresh_token"])
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
        gone = refresh(f"http://127.0.0.1:{http_port}", storage, second.json()["refresh_token"])
        assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"
    finally:
        if replica is not None:
            replica.stop()
        running.stop()
