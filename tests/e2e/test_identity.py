"""Issue 3 through real Envoy: verified identity reaches the backend, provably; key rotation and
IdP outages; every hostile token and header is a 401 with an MCP-spec challenge."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from authz.dev.stack import Stack
from authz.identity import assertion
from authz.identity.config import hash_api_key

from .conftest import ThreadedIssuer, raw_request

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "identity"))
from identity_helpers import API_KEY, RESOURCE
from test_hostile_tokens import CASES, MARK

pytestmark = pytest.mark.e2e
METADATA = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"


@pytest.fixture(scope="module")
def idps():
    a, b = ThreadedIssuer(RESOURCE), ThreadedIssuer(RESOURCE)
    yield a, b
    a.close()
    b.close()


@pytest.fixture(scope="module")
def env(idps, tmp_path_factory):
    a, b = idps
    cfg = {
        "server": {"debug_headers": True},
        "log": {"format": "json"},
        "identity": {
            "resource": RESOURCE,
            "issuers": [{"name": f"idp{i}", "issuer": idp.issuer, "jwks_cache": {"refetch_interval_seconds": 1}}
                        for i, idp in enumerate((a, b))],
            "api_keys": {"keys": [{"name": "batch", "sha256": hash_api_key(API_KEY), "subject": "svc-batch"}]},
            "headers": {"strip": ["x-user-id"]},
            "assertion": {"issuer": "urn:authz:e2e", "audience": "backend"},
        },
        "policy": {"default": "allow"},
    }
    path = tmp_path_factory.mktemp("identity") / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with Stack(authz_config=path, issuer=False) as stack, httpx.Client(base_url=stack.url, timeout=10) as http:
        yield stack, http


def echo(http: httpx.Client, headers) -> httpx.Response:
    return http.post("/echo/identity", headers=headers, content=b"{}")


def test_the_backend_sees_the_verified_identity_and_a_valid_assertion(env, idps):
    stack, http = env
    a, _ = idps
    token = a.mint(sub="oscar", roles=["accounting"], azp="chatgpt", scope="tools:calendar")
    r = echo(http, [("authorization", f"Bearer {token}"), ("x-authz-user", "ceo"), ("x-user-id", "ceo"),
                    ("x-authz-roles", "admin")])
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert seen["x-authz-user"] == "oscar" and seen["x-authz-client"] == "chatgpt"
    assert seen["x-authz-roles"] == "accounting"
    assert "authorization" not in seen and "x-user-id" not in seen
    claims = assertion.verify(seen["x-authz-assertion"], issuer="urn:authz:e2e", audience="backend",
                              jwks_url=f"{stack.authz_http}/.well-known/jwks.json", method="POST",
                              host=seen["host"], path="/echo/identity", request_id=seen["x-request-id"])
    assert claims["sub"] == "oscar"
    # The same assertion is refused for another request: it is bound to this one.
    with pytest.raises(assertion.InvalidAssertion):
        assertion.verify(seen["x-authz-assertion"], issuer="urn:authz:e2e", audience="backend",
                         jwks_url=f"{stack.authz_http}/.well-known/jwks.json", method="POST",
                         host=seen["host"], path="/echo/other", request_id=seen["x-request-id"])


def test_the_scheme_name_is_case_insensitive(env, idps):
    _, http = env
    assert echo(http, {"authorization": f"bearer {idps[0].mint()}"}).status_code == 200


def test_key_rotation_is_picked_up_and_an_idp_outage_keeps_known_keys(env, idps):
    _, http = env
    a, _ = idps
    old_kid = a.current_kid
    assert echo(http, {"authorization": f"Bearer {a.mint()}"}).status_code == 200
    a.rotate()  # the IdP publishes a new key and signs with it
    time.sleep(1.1)  # unknown-kid refetches are rate-limited (refetch_interval_seconds: 1 here)
    r = echo(http, {"authorization": f"Bearer {a.mint()}"})
    assert r.status_code == 200, r.text
    a.down = True  # the IdP is down: already-known keys keep working
    try:
        for kid in (old_kid, a.current_kid):
            r = echo(http, {"authorization": f"Bearer {a.mint(kid=kid, sub=f'user-{kid}')}"})
            assert r.status_code == 200, (kid, r.text)
    finally:
        a.down = False


def test_api_keys_map_to_a_principal(env):
    _, http = env
    r = echo(http, {"x-api-key": API_KEY})
    assert r.status_code == 200 and r.json()["headers"]["x-authz-user"] == "svc-batch"
    assert "x-api-key" not in r.json()["headers"]


def _request_for(case, a, b) -> list[tuple[str, str]]:
    spec = case.make(a, b)
    if "header_lists" in spec:  # really send the header twice
        return [(k, v) for k, values in spec["header_lists"].items() for v in values]
    return list(spec.get("headers", {}).items())


def test_every_hostile_input_is_a_401_with_a_challenge_through_envoy(env, idps):
    a, b = idps
    failures = []
    stack, http = env
    # Some cases make the IdP publish new keys; let the sidecar learn them first (unknown-kid
    # refetches are rate-limited), so each case fails for its own reason.
    # (The cases that rotate keys come last, so every other case sees the IdP as it started.)
    ordered = sorted(CASES, key=lambda c: c.make.__name__ != "<lambda>")
    requests = [(case, _request_for(case, a.fake, b.fake)) for case in ordered]
    time.sleep(1.1)
    for idp in (a, b):
        assert echo(http, {"authorization": f"Bearer {idp.mint()}"}).status_code == 200
    for case, headers in requests:
        r = raw_request(stack.ports.envoy, "POST", "/echo/identity", headers, b"{}")
        challenge = r.headers.get("www-authenticate", "")
        problems = []
        if r.status_code != 401:
            problems.append(f"status {r.status_code}")
        if r.headers.get("x-authz-reason") != case.reason:
            problems.append(f"reason {r.headers.get('x-authz-reason')} != {case.reason}")
        if not challenge.startswith("Bearer ") or f'resource_metadata="{METADATA}"' not in challenge:
            problems.append(f"challenge {challenge!r}")
        if case.error and f'error="{case.error}"' not in challenge:
            problems.append(f"no error={case.error}")
        if MARK in r.text or MARK in challenge:
            problems.append("attacker input echoed")
        if problems:
            failures.append(f"{case.id}: {', '.join(problems)}")
    assert not failures, "\n".join(failures)
    assert len(CASES) >= 30


def test_caller_binding_sends_one_assertion_per_caller_through_envoy(idps, tmp_path):
    a, _ = idps
    cfg = {"log": {"format": "json"}, "policy": {"default": "allow"},
           "identity": {"resource": RESOURCE, "issuers": [{"name": "idp0", "issuer": a.issuer}],
                        "assertion": {"issuer": "urn:authz:e2e", "audience": "backend", "binding": "caller"}}}
    path = tmp_path / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with Stack(authz_config=path, issuer=False) as stack, httpx.Client(base_url=stack.url, timeout=10) as http:
        oscar = a.mint(sub="oscar", roles=["accounting"], azp="chatgpt")
        alice = a.mint(sub="alice", roles=["doctor"], azp="claude")
        seen = [echo(http, [("authorization", f"Bearer {t}")]).json()["headers"] for t in (oscar, oscar, alice)]
        first, again, other = (s["x-authz-assertion"] for s in seen)
        assert first == again and other != first  # signed once per caller, not per request
        jwks = f"{stack.authz_http}/.well-known/jwks.json"
        claims = assertion.verify(first, issuer="urn:authz:e2e", audience="backend", jwks_url=jwks)
        assert claims["sub"] == "oscar" and claims["client"] == "chatgpt" and "req" not in claims
        assert assertion.verify(other, issuer="urn:authz:e2e", audience="backend", jwks_url=jwks)["sub"] == "alice"
        # It names no request, so a backend that insists on request binding refuses it.
        with pytest.raises(assertion.InvalidAssertion, match="no request binding"):
            assertion.verify(first, issuer="urn:authz:e2e", audience="backend", jwks_url=jwks, method="POST",
                             host=seen[0]["host"], path="/echo/identity", request_id=seen[0]["x-request-id"])


def test_api_keys_kept_in_redis_work_through_envoy_until_revoked(idps, tmp_path, redis_url):
    import subprocess

    a, _ = idps
    cfg = {"log": {"format": "json"}, "policy": {"default": "allow"},
           "store": {"redis_url": redis_url, "key_prefix": f"e2e-{tmp_path.name}:"},
           "identity": {"resource": RESOURCE, "issuers": [{"name": "idp0", "issuer": a.issuer}],
                        "api_keys": {"store": "redis", "cache_seconds": 0, "negative_cache_seconds": 0}}}
    path = tmp_path / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))

    def apikeys(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "authz", "apikeys", *args, "-c", str(path)],
                              capture_output=True, text=True, timeout=60)

    added = apikeys("add", "--name", "nightly", "--subject", "svc-nightly", "--roles", "batch")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    with Stack(authz_config=path, issuer=False) as stack, httpx.Client(base_url=stack.url, timeout=10) as http:
        r = echo(http, {"x-api-key": key})
        assert r.status_code == 200, r.text
        seen = r.json()["headers"]
        assert seen["x-authz-user"] == "svc-nightly" and seen["x-authz-roles"] == "batch"
        assert "x-api-key" not in seen  # the key never reaches the upstream
        assert echo(http, {"x-api-key": key[:-1] + ("A" if key[-1] != "A" else "B")}).status_code == 401
        assert apikeys("revoke", "--name", "nightly").returncode == 0
        refused = echo(http, {"x-api-key": key})
        assert refused.status_code == 401 and "www-authenticate" in refused.headers
