"""The token endpoint on its own (an in-memory store with a clock we move, no upstream needed):
codes expire and are used once even when two requests race, PKCE is checked, refresh tokens
rotate and a reused one revokes its family."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from authz.config import parse_config
from authz.identity.assertion import KeyRing
from authz.signin.keys import install_keys
from authz.signin.server import SigninServer
from authz.signin.state import SigninState
from authz.store.memory import MemoryStore

CONFIG = parse_config("""
identity: {resource: "https://mcp.example.com/mcp"}
audit: {enabled: false}
signin:
  enabled: true
  issuer: https://mcp.example.com
  code_seconds: 30
  upstream: {issuer: "https://sso.example.com", client_id: authz, client_secret: s}
""")
KEYS = install_keys(CONFIG.signin, KeyRing())  # as the runtime's pipeline build does

REDIRECT = "http://127.0.0.1:8765/cb"
VERIFIER = "v" * 50
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
USER = {"sub": "oscar", "roles": ["accounting"], "email": "oscar@example.com"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def env(clock: Clock) -> AsyncIterator[tuple[TestClient, SigninState, str]]:
    store = MemoryStore(clock=clock, wall_clock=clock)
    server = SigninServer(lambda: (CONFIG, store), keys=KEYS, clock=clock)
    app = web.Application()
    server.install(app)
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/oauth/register", json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
                                                       "grant_types": ["authorization_code", "refresh_token"]})
        assert r.status == 201
        yield client, SigninState(store), (await r.json())["client_id"]


async def a_code(state: SigninState, client_id: str, code: str = "the-code") -> str:
    await state.save_code(code, {"client_id": client_id, "redirect_uri": REDIRECT, "challenge": CHALLENGE,
                                 "resource": "https://mcp.example.com/mcp", "scopes": ["tools:calendar"],
                                 "user": USER}, 30)
    return code


async def exchange(client: TestClient, client_id: str, code: str, verifier: str = VERIFIER) -> tuple[int, dict]:
    r = await client.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                 "client_id": client_id, "redirect_uri": REDIRECT,
                                                 "code_verifier": verifier})
    return r.status, await r.json()


async def test_a_code_exchanges_once_for_an_audience_bound_token(env):
    client, state, client_id = env
    status, body = await exchange(client, client_id, await a_code(state, client_id))
    assert status == 200 and body["token_type"] == "Bearer" and body["refresh_token"].startswith("rt_")
    key = jwt.PyJWKSet.from_dict(KEYS.jwks())[jwt.get_unverified_header(body["access_token"])["kid"]]
    claims = jwt.decode(body["access_token"], key=key, audience="https://mcp.example.com/mcp",
                        issuer="https://mcp.example.com")
    assert claims["sub"] == "oscar" and claims["client_id"] == client_id and claims["scope"] == "tools:calendar"
    assert claims["roles"] == ["accounting"]
    assert (await exchange(client, client_id, "the-code"))[1]["error"] == "invalid_grant"


async def test_a_replayed_code_revokes_the_refresh_tokens_it_gave(env):
    client, state, client_id = env
    code = await a_code(state, client_id)
    status, body = await exchange(client, client_id, code)
    assert status == 200
    status, replay = await exchange(client, client_id, code)
    assert status == 400 and replay["error"] == "invalid_grant"
    r = await client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                                                 "client_id": client_id})
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_an_expired_code_is_invalid_grant(env, clock):
    client, state, client_id = env
    code = await a_code(state, client_id)
    clock.now += 31
    status, body = await exchange(client, client_id, code)
    assert status == 400 and body["error"] == "invalid_grant"


async def test_two_racing_redemptions_of_one_code_give_one_token(env):
    client, state, client_id = env
    code = await a_code(state, client_id)
    results = await asyncio.gather(*(exchange(client, client_id, code) for _ in range(5)))
    assert sorted(status for status, _ in results) == [200, 400, 400, 400, 400]


async def test_a_wrong_verifier_is_invalid_grant(env):
    client, state, client_id = env
    status, body = await exchange(client, client_id, await a_code(state, client_id), verifier="w" * 50)
    assert status == 400 and body["error"] == "invalid_grant"


async def test_refresh_rotation_reuse_and_expiry_of_the_family(env, clock):
    client, state, client_id = env
    _, body = await exchange(client, client_id, await a_code(state, client_id))

    async def refresh(token: str, **extra: str) -> tuple[int, dict]:
        r = await client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                                     "client_id": client_id, **extra})
        return r.status, await r.json()

    assert (await refresh(body["refresh_token"], scope="tools:calendar invoices:write"))[1]["error"] == "invalid_scope"
    assert (await refresh(body["refresh_token"], resource="https://other.example"))[1]["error"] == "invalid_target"
    status, second = await refresh(body["refresh_token"])  # the refused requests did not spend it
    assert status == 200 and second["refresh_token"] != body["refresh_token"]
    status, reused = await refresh(body["refresh_token"])
    assert status == 400 and reused["error"] == "invalid_grant"
    assert (await refresh(second["refresh_token"]))[1]["error"] == "invalid_grant"  # the family is revoked
    # A fresh family ends with its lifetime.
    _, body = await exchange(client, client_id, await a_code(state, client_id, "code-2"))
    status, second = await refresh(body["refresh_token"])
    assert status == 200
    clock.now += CONFIG.signin.refresh_token_seconds + 1
    assert (await refresh(second["refresh_token"]))[1]["error"] == "invalid_grant"


async def test_another_clients_refresh_token_is_refused_and_revocation_is_silent(env):
    client, state, client_id = env
    _, body = await exchange(client, client_id, await a_code(state, client_id))
    r = await client.post("/oauth/register", json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
                                                   "grant_types": ["authorization_code", "refresh_token"]})
    other = (await r.json())["client_id"]
    r = await client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                                                 "client_id": other})
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"
    # Revoking someone else's token, or a token that does not exist: 200 and nothing happens.
    for token in (body["refresh_token"], "rt_nonsense"):
        r = await client.post("/oauth/revoke", data={"token": token, "client_id": other})
        assert r.status == 200
    r = await client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                                                 "client_id": client_id})
    assert r.status == 200


async def test_a_confidential_client_must_prove_its_secret(env):
    client, state, _ = env
    r = await client.post("/oauth/register", json={"redirect_uris": [REDIRECT]})  # default: client_secret_basic
    reg = await r.json()
    assert reg["token_endpoint_auth_method"] == "client_secret_basic" and reg["client_secret"].startswith("cs_")
    code = await a_code(state, reg["client_id"])
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": VERIFIER}
    r = await client.post("/oauth/token", data={**form, "client_id": reg["client_id"]})
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"
    basic = base64.b64encode(f"{reg['client_id']}:wrong".encode()).decode()
    r = await client.post("/oauth/token", data=form, headers={"authorization": f"Basic {basic}"})
    assert r.status == 401 and "www-authenticate" in r.headers
    basic = base64.b64encode(f"{reg['client_id']}:{reg['client_secret']}".encode()).decode()
    r = await client.post("/oauth/token", data=form, headers={"authorization": f"Basic {basic}"})
    assert r.status == 200


async def test_the_store_being_down_is_temporarily_unavailable(env, monkeypatch):
    from authz.store.base import StoreUnavailable

    client, state, client_id = env

    async def down(*_a: object, **_k: object) -> None:
        raise StoreUnavailable("redis get failed")

    monkeypatch.setattr(state.store, "get", down)
    status, body = await exchange(client, client_id, "any")
    assert status == 503 and body["error"] == "temporarily_unavailable"


async def test_browser_clients_may_call_the_json_endpoints_from_their_origin(env):
    client, _, _ = env
    r = await client.options("/oauth/token", headers={"origin": "https://inspector.example",
                                                      "access-control-request-method": "POST"})
    assert r.status == 204 and r.headers["access-control-allow-origin"] == "*"
    assert "content-type" in r.headers["access-control-allow-headers"]
    r = await client.get("/.well-known/oauth-authorization-server")
    assert r.headers["access-control-allow-origin"] == "*"
    r = await client.get("/oauth/authorize")  # a navigation, not a fetch: no CORS
    assert "access-control-allow-origin" not in r.headers


async def test_authorization_requests_are_limited_per_address(env):
    client, _, _ = env
    statuses = [(await client.get("/oauth/authorize?client_id=nobody")).status
                for _ in range(CONFIG.signin.authorize_per_address_per_minute + 1)]
    assert statuses[:-1] == [400] * CONFIG.signin.authorize_per_address_per_minute
    r = await client.get("/oauth/authorize?client_id=nobody")
    assert r.status == 429 and r.headers["retry-after"] == "60" and "temporarily_unavailable" in await r.text()


async def test_the_store_down_at_the_authorization_endpoint_is_a_503_page(env, monkeypatch):
    from authz.store.base import StoreUnavailable

    client, state, client_id = env

    async def down(*_a: object, **_k: object) -> int:
        raise StoreUnavailable("redis incr failed")

    monkeypatch.setattr(state.store, "incr", down)
    r = await client.get(f"/oauth/authorize?client_id={client_id}")
    assert r.status == 503 and "temporarily_unavailable" in await r.text() and "location" not in r.headers


async def test_a_bug_still_answers_in_the_protocol(env, monkeypatch):
    import authz.signin.token as token_endpoint

    client, state, client_id = env

    def broken(*_a: object, **_k: object) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(token_endpoint, "mint_access_token", broken)
    status, body = await exchange(client, client_id, await a_code(state, client_id))
    assert status == 500 and body["error"] == "server_error"


async def test_an_overlong_parameter_is_invalid_request(env):
    client, _, client_id = env
    r = await client.get("/oauth/authorize", params={"client_id": client_id, "state": "s" * 5000})
    assert r.status == 400 and "invalid_request" in await r.text() and "location" not in r.headers
    status, body = await exchange(client, client_id, "c" * 5000)
    assert status == 400 and body["error"] == "invalid_request"
