"""Issue 20 through real Envoy: the official MCP SDK client signs in through the sidecar's
authorization server, which signs the user in at a real OIDC provider without dynamic
registration (node oidc-provider), asks for consent, and mints the token the identity stage
then verifies; policy, the backend and audit see the signed-in user. Then refresh, refresh-token
reuse (the family is revoked) and revocation; the state survives a restart with Redis and is
shared by two replicas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx
import pytest

from tests.e2e.signin_stack import (
    REDIRECT,
    MemoryTokens,
    Person,
    SigninStack,
    mcp_calls,
    oauth_provider,
    start_signin_stack,
)
from tests.helpers.forms import walk

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def signin(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[SigninStack]:
    running = start_signin_stack(tmp_path_factory.mktemp("signin"), redis_url=redis_url)
    try:
        yield running
    finally:
        running.stop()


def token_request(url: str, client: MemoryTokens, **form: str) -> httpx.Response:
    info = client.client_info
    auth = (info.client_id, info.client_secret) if info.client_secret else None
    data = form if auth else {**form, "client_id": info.client_id}
    return httpx.post(f"{url}/oauth/token", data=data, auth=auth, timeout=10)


def audit_records(workdir: Path) -> list[dict]:
    records = []
    for path in sorted((workdir / "audit").rglob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def signin_events(signin: SigninStack, subject: str) -> set[str]:
    """The sign-in events the audit log holds for ``subject`` (the writer flushes within 0.1 s)."""
    import time

    time.sleep(0.5)
    return {r["event"] for r in audit_records(signin.stack.workdir)
            if r["type"] == "signin" and r.get("subject") in (subject, None)}


def sign_in(signin: SigninStack, login: str, calls, **kw) -> tuple[Person, MemoryTokens, list[str], list]:
    person, storage = Person(login), MemoryTokens()
    names, results = anyio.run(mcp_calls, signin.url, oauth_provider(signin.url, person, storage, **kw), calls)
    return person, storage, names, results


def test_the_sdk_client_signs_in_through_envoy_and_calls_tools_as_the_user(signin):
    person, storage, names, results = sign_in(signin, "oscar", [("whoami", {}),
                                                                ("get_calendar", {"day": "mon oscar@example.com"})])

    # The dance went through the upstream's login and consent and then our consent page.
    consent_pages = [r for r in person.pages if "/oauth/callback" in str(r.url) and r.status_code == 200]
    assert consent_pages and "Allow e2e MCP client to act as you?" in consent_pages[0].text
    assert "oscar@example.com" in consent_pages[0].text and "read your calendar" in consent_pages[0].text
    assert "iss=" in person.final_url

    # Policy filtered tools/list for this user and scope, and allowed what the token's scope covers.
    assert sorted(names) == ["get_calendar", "whoami"]
    who = json.loads(results[0].content[0].text)
    assert who["headers"]["x-authz-user"] == "oscar"
    assert who["headers"]["x-authz-issuer"] == signin.url
    assert who["headers"]["x-authz-client"] == storage.client_info.client_id
    assert who["headers"]["x-authz-roles"] == "accounting"
    # The SDK asks for the resource's scopes_supported (and offline_access, which we advertise).
    assert "tools:calendar" in who["headers"]["x-authz-scopes"].split(",")
    assert who["assertion_valid"] and not who["authorization_header_seen"]
    assert not results[1].is_error and "Stand-up" in str(results[1].content)
    # Redaction saw the user too: its rule for oscar masked the email in his tool arguments.
    assert "oscar@example.com" not in str(results[1].content) and "example.com" in str(results[1].content)

    # The token is ours: ES256, aud = the resource, client_id, and never the upstream's token.
    import jwt

    access = storage.tokens.access_token
    header, claims = jwt.get_unverified_header(access), jwt.decode(access, options={"verify_signature": False})
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt"
    assert claims["aud"] == f"{signin.url}/mcp" and claims["iss"] == signin.url
    assert claims["client_id"] == storage.client_info.client_id and claims["sub"] == "oscar"

    # Audit: the grant, and the decisions made for oscar through the token we minted.
    import time

    time.sleep(1.5)
    records = audit_records(signin.stack.workdir)
    events = [r["event"] for r in records if r["type"] == "signin"]
    assert {"signin.registered", "signin.consented", "signin.code_issued", "signin.token_issued"} <= set(events)
    decisions = [r for r in records if r["type"] == "decision" and (r.get("principal") or {}).get("subject") == "oscar"]
    assert decisions and all(d["principal"]["issuer"] == signin.url for d in decisions)
    assert not any("code" in r or "access_token" in r or "refresh_token" in r for r in records)
    # The sign-in records are links of the same tamper-evident chain: it verifies (0 = sealed,
    # 2 = intact with an unsealed tail while the sidecar runs; 1 would be tampering).
    import subprocess
    import sys

    keys = signin.stack.workdir / "keys.json"
    keys.write_text(httpx.get(f"{signin.stack.authz_http}/.well-known/jwks.json", timeout=10).text)
    verify = subprocess.run([sys.executable, "-m", "authz", "audit", "verify", str(signin.stack.workdir / "audit"),
                             "--public-key", str(keys)], capture_output=True, text=True)
    assert verify.returncode in (0, 2), verify.stdout + verify.stderr


def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_family(signin):
    _, storage, _, _ = sign_in(signin, "dana", [("whoami", {})])
    first = storage.tokens.refresh_token
    assert first

    rotated = token_request(signin.url, storage, grant_type="refresh_token", refresh_token=first)
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["refresh_token"]
    assert second != first and rotated.headers["cache-control"] == "no-store"
    # The new access token works through Envoy.
    r = httpx.post(f"{signin.url}/mcp", headers={"authorization": f"Bearer {rotated.json()['access_token']}",
                                                  "accept": "application/json, text/event-stream"},
                   json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10)
    assert r.status_code != 401, r.text

    reused = token_request(signin.url, storage, grant_type="refresh_token", refresh_token=first)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    # ... and the whole family is gone: the newest token no longer works either.
    after = token_request(signin.url, storage, grant_type="refresh_token", refresh_token=second)
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    assert signin_events(signin, "dana") >= {"signin.refreshed", "signin.refresh_reused", "signin.refused"}


def test_revocation_ends_the_refresh_token_and_a_remembered_consent_skips_the_page(signin):
    # vera consents once; her second sign-in with the same client is not asked again.
    person, storage, _, _ = sign_in(signin, "vera", [("whoami", {})])
    assert any("/oauth/callback" in str(r.url) and r.status_code == 200 for r in person.pages)
    # The SDK asks with prompt=consent (it wants offline_access): the page is shown again.
    again = Person("vera")
    storage.tokens = None
    anyio.run(mcp_calls, signin.url, oauth_provider(signin.url, again, storage), [])
    assert any("/oauth/callback" in str(r.url) and r.status_code == 200 for r in again.pages)
    # Without prompt=consent, scopes already granted to this client need no page.
    quiet = Person("vera")
    params = {"response_type": "code", "client_id": storage.client_info.client_id, "redirect_uri": REDIRECT,
              "state": "s1", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
              "code_challenge_method": "S256", "resource": f"{signin.url}/mcp", "scope": "tools:calendar"}
    final, pages = walk(quiet.browser, f"{signin.url}/oauth/authorize?{urlencode(params)}", stop_at=REDIRECT,
                        login="vera")
    assert "code=" in final and "iss=" in final and "state=s1" in final
    assert not any("/oauth/callback" in str(r.url) and r.status_code == 200 for r in pages)
    # Step-up keeps what the client had: asked for tools:calendar only, the token carries the
    # scopes vera granted this client before as well.
    code = parse_qs(urlsplit(final).query)["code"][0]
    granted = token_request(signin.url, storage, grant_type="authorization_code", code=code, redirect_uri=REDIRECT,
                            code_verifier="dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")  # RFC 7636's example
    assert granted.status_code == 200, granted.text
    assert {"tools:calendar", "invoices:read"} <= set(granted.json()["scope"].split())

    token = storage.tokens.refresh_token
    info = storage.client_info
    revoked = httpx.post(f"{signin.url}/oauth/revoke", data={"token": token, "token_type_hint": "refresh_token"},
                         auth=(info.client_id, info.client_secret), timeout=10)
    assert revoked.status_code == 200
    refused = token_request(signin.url, storage, grant_type="refresh_token", refresh_token=token)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert "signin.revoked" in signin_events(signin, "vera")
    metrics = httpx.get(f"{signin.stack.authz_http}/metrics", timeout=10).text
    assert 'authz_signin_events_total{error="none",event="revoked"} 1.0' in metrics


def test_a_forged_iss_on_the_authorization_response_is_refused_by_the_sdk(signin):
    person, storage = Person("oscar", tamper_iss="http://evil.example"), MemoryTokens()
    with pytest.raises(BaseException) as info:
        anyio.run(mcp_calls, signin.url, oauth_provider(signin.url, person, storage), [])
    assert "iss mismatch" in repr(info.value) or "iss" in str(info.value)
    assert storage.tokens is None


def test_metadata_is_served_through_envoy(signin):
    prm = httpx.get(f"{signin.url}/.well-known/oauth-protected-resource/mcp", timeout=10).json()
    assert prm["authorization_servers"] == [signin.url]
    meta = httpx.get(f"{signin.url}/.well-known/oauth-authorization-server", timeout=10).json()
    assert meta["issuer"] == signin.url
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["registration_endpoint"] == f"{signin.url}/oauth/register"
    keys = httpx.get(f"{signin.url}/oauth/jwks.json", timeout=10).json()["keys"]
    assert keys and keys[0]["alg"] == "ES256"


def test_limits_see_the_signed_in_user(signin):
    # A rate limit keyed on the user and written for lena alone (4/min on /mcp) runs out for her.
    _, storage, _, _ = sign_in(signin, "lena", [])
    headers = {"authorization": f"Bearer {storage.tokens.access_token}", "accept": "application/json, text/event-stream"}
    statuses = [httpx.post(f"{signin.url}/mcp", json={"jsonrpc": "2.0", "id": i, "method": "ping"}, headers=headers,
                           timeout=10) for i in range(6)]
    assert statuses[-1].status_code == 429 and 'lena-mcp' in statuses[-1].headers["ratelimit-policy"]
