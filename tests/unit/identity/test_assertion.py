"""The gateway-signed assertion: signing, rotation, and the backend-side verifier."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys

import pytest
from aiohttp import web
from identity_helpers import FakeClock

from authz.identity.assertion import (
    ASSERTION_TYP,
    AssertionSigner,
    AssertionVerifier,
    InvalidAssertion,
    KeyRing,
    SigningKey,
    verify,
)
from authz.identity.config import AssertionConfig
from authz.identity.jose import ALGORITHMS, b64url_encode, encode_compact
from authz.identity.stage import build_signer
from authz.model import Principal, Request

ISSUER = "urn:authz:test"
ALICE = Principal(subject="alice", issuer="https://idp", email="a@x", tenant="acme",
                  client="chatgpt", roles=frozenset({"b", "a"}), scopes=frozenset({"s2", "s1"}))
REQ = Request(id="rid-1", method="POST", scheme="https", host="mcp.example.com",
              path="/mcp?x=1", headers={})
BINDING = {"method": "POST", "host": "mcp.example.com", "path": "/mcp", "request_id": "rid-1"}


def signer(alg="ES256", clock=None, **kw) -> AssertionSigner:
    ring = KeyRing(clock=clock or FakeClock())
    ring.install(SigningKey.generate(alg), retire_after=120)
    return AssertionSigner(issuer=ISSUER, keyring=ring, clock=clock or FakeClock(), **kw)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_sign_and_verify(alg):
    clock = FakeClock()
    s = signer(alg, clock)
    token = s.sign(ALICE, REQ)
    claims = verify(token, jwks=s.jwks(), issuer=ISSUER, now=clock.now, **BINDING)
    assert claims["sub"] == "alice" and claims["idp"] == "https://idp"
    assert claims["roles"] == ["a", "b"] and claims["scope"] == "s1 s2"
    assert (claims["client"], claims["email"], claims["tenant"], claims["cred"]) == (
        "chatgpt", "a@x", "acme", "jwt")
    assert claims["req"] == {"method": "POST", "host": "mcp.example.com", "path": "/mcp", "id": "rid-1"}
    assert claims["exp"] == claims["iat"] + 60 and len(claims["jti"]) >= 20
    assert verify(token, jwks=s.jwks(), issuer=ISSUER, now=clock.now,
                  method="post", host="MCP.example.com", path="/mcp?other=2")


def test_jti_is_unique():
    s = signer()
    jtis = {verify(s.sign(ALICE, REQ), jwks=s.jwks(), issuer=ISSUER)["jti"] for _ in range(50)}
    assert len(jtis) == 50


@pytest.mark.parametrize(("field", "value"), [("method", "GET"), ("host", "evil.example"),
                                              ("path", "/admin"), ("request_id", "rid-2")])
def test_binding_mismatch(field, value):
    s = signer()
    with pytest.raises(InvalidAssertion) as info:
        verify(s.sign(ALICE, REQ), jwks=s.jwks(), issuer=ISSUER, **{**BINDING, field: value})
    assert info.value.reason == "assertion.binding_mismatch"
    assert info.value.field == ("id" if field == "request_id" else field)


def test_expiry_with_leeway():
    clock = FakeClock()
    s = signer(clock=clock)
    token = s.sign(ALICE, REQ)
    verify(token, jwks=s.jwks(), issuer=ISSUER, now=clock.now + 64)
    with pytest.raises(InvalidAssertion) as info:
        verify(token, jwks=s.jwks(), issuer=ISSUER, now=clock.now + 65)
    assert info.value.reason == "assertion.expired"
    with pytest.raises(InvalidAssertion) as info:
        verify(token, jwks=s.jwks(), issuer=ISSUER, now=clock.now - 30)
    assert info.value.reason == "assertion.issued_in_future"


def test_issuer_and_audience():
    s = signer(audience="weather-backend")
    token = s.sign(ALICE, REQ)
    verify(token, jwks=s.jwks(), issuer=ISSUER, audience="weather-backend")
    for kw, reason in (({"issuer": "urn:other"}, "assertion.bad_issuer"),
                       ({"issuer": ISSUER, "audience": "other"}, "assertion.bad_audience"),
                       ({"issuer": ISSUER}, "assertion.bad_audience")):
        with pytest.raises(InvalidAssertion) as info:
            verify(token, jwks=s.jwks(), **kw)
        assert info.value.reason == reason


def test_forgeries_are_refused():
    s = signer()
    token = s.sign(ALICE, REQ)
    other = signer()
    head, payload, sig = token.split(".")
    none_header = b64url_encode(json.dumps({"alg": "none", "typ": ASSERTION_TYP}).encode())
    forged_payload = b64url_encode(json.dumps({"iss": ISSUER, "sub": "admin"}).encode())
    cases = {
        "assertion.bad_signature": f"{head}.{forged_payload}.{sig}",
        "assertion.alg_not_allowed": f"{none_header}.{payload}.",
        "assertion.unknown_kid": other.sign(ALICE, REQ),
        "assertion.malformed": "not.a.jwt!",
        "assertion.too_large": "a" * 20000,
    }
    for reason, forged in cases.items():
        with pytest.raises(InvalidAssertion) as info:
            verify(forged, jwks=s.jwks(), issuer=ISSUER)
        assert info.value.reason == reason, reason


def test_an_access_token_is_not_an_assertion():
    key = SigningKey.generate("ES256")
    ring = KeyRing()
    ring.install(key, retire_after=1)
    token = encode_compact({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"},
                           {"iss": ISSUER, "sub": "x", "iat": 1, "exp": 9999999999},
                           ALGORITHMS["ES256"], key.private_key)
    with pytest.raises(InvalidAssertion) as info:
        verify(token, jwks=ring.jwks(), issuer=ISSUER)
    assert info.value.reason == "assertion.bad_type"


def test_rotation_keeps_the_old_key_published_until_its_assertions_expired():
    clock = FakeClock()
    ring = KeyRing(clock=clock)
    old, new = SigningKey.generate(), SigningKey.generate("EdDSA")
    ring.install(old, retire_after=120)
    s = AssertionSigner(issuer=ISSUER, keyring=ring, clock=clock)
    before = s.sign(ALICE, REQ)
    ring.install(new, retire_after=120)
    after = s.sign(ALICE, REQ)
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old.kid, new.kid}
    verify(before, jwks=ring.jwks(), issuer=ISSUER, now=clock.now)
    assert verify(after, jwks=ring.jwks(), issuer=ISSUER, now=clock.now)
    clock.advance(121)
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid]


def test_prepublished_next_key():
    ring = KeyRing()
    active, nxt = SigningKey.generate(), SigningKey.generate()
    ring.install(active, [nxt], retire_after=60)
    assert [k["kid"] for k in ring.jwks()["keys"]] == [active.kid, nxt.kid]
    assert all(set(k) >= {"kty", "kid", "alg", "use"} and "d" not in k for k in ring.jwks()["keys"])


def test_key_files_and_build_signer(tmp_path):
    ring = KeyRing()
    first = SigningKey.generate()
    (tmp_path / "a.pem").write_bytes(first.private_pem())
    s = build_signer(AssertionConfig(key_files=(str(tmp_path / "a.pem"),)), keyring=ring)
    assert ring.active.kid == first.kid
    second = SigningKey.generate("EdDSA")
    (tmp_path / "b.pem").write_bytes(second.private_pem())
    build_signer(AssertionConfig(algorithm="EdDSA", key_files=(str(tmp_path / "b.pem"),)), keyring=ring)
    assert {k["kid"] for k in ring.jwks()["keys"]} == {first.kid, second.kid}  # old one retiring
    assert s.keyring is ring


def test_generated_key_survives_rebuilds():
    ring = KeyRing()
    build_signer(AssertionConfig(), keyring=ring)
    kid = ring.active.kid
    build_signer(AssertionConfig(), keyring=ring)
    assert ring.active.kid == kid and len(ring.jwks()["keys"]) == 1


def test_key_file_validation(tmp_path):
    (tmp_path / "ed.pem").write_bytes(SigningKey.generate("EdDSA").private_pem())
    with pytest.raises(ValueError, match="EdDSA key but algorithm is ES256"):
        AssertionConfig(key_files=(str(tmp_path / "ed.pem"),))
    with pytest.raises(ValueError, match="cannot read"):
        AssertionConfig(key_files=(str(tmp_path / "missing.pem"),))
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ValueError, match="PEM"):
        AssertionConfig(key_files=(str(tmp_path / "junk.pem"),))


def test_verifier_refuses_weak_options():
    with pytest.raises(ValueError):
        AssertionVerifier(issuer=ISSUER, jwks={"keys": []}, algorithms=("RS256",))
    with pytest.raises(ValueError):
        AssertionVerifier(issuer="", jwks={"keys": []})
    with pytest.raises(ValueError):
        AssertionVerifier(issuer=ISSUER)
    with pytest.raises(ValueError):
        AssertionVerifier(issuer=ISSUER, jwks_url="file:///etc/passwd")


async def test_jwks_url_fetching_with_cache_and_rotation():
    ring = KeyRing()
    ring.install(SigningKey.generate(), retire_after=60)
    hits = []

    async def jwks(request):
        hits.append(1)
        return web.json_response(ring.jwks())

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/.well-known/jwks.json"
    try:
        s = AssertionSigner(issuer=ISSUER, keyring=ring)
        for _ in range(3):
            await asyncio.to_thread(verify, s.sign(ALICE, REQ), jwks_url=url, issuer=ISSUER)
        assert len(hits) == 1
        ring.install(SigningKey.generate(), retire_after=60)
        with pytest.raises(InvalidAssertion):  # refetch for an unknown kid waits 5 s
            await asyncio.to_thread(verify, s.sign(ALICE, REQ), jwks_url=url, issuer=ISSUER)
        from authz.identity import assertion

        assertion._URL_KEYS[url]._attempted_at -= 10
        await asyncio.to_thread(verify, s.sign(ALICE, REQ), jwks_url=url, issuer=ISSUER)
        assert len(hits) == 2
    finally:
        await runner.cleanup()


def test_backend_import_is_light():
    code = ("import sys, authz.identity.assertion; "
            "heavy = [m for m in ('aiohttp', 'pydantic', 'prometheus_client', 'grpc') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_caller_binding_reuses_one_assertion_until_half_its_lifetime():
    clock = FakeClock()
    s = signer(clock=clock)
    signed = []
    first = s.sign_for_caller(ALICE, on_sign=lambda: signed.append(1))
    assert s.sign_for_caller(ALICE, on_sign=lambda: signed.append(1)) == first
    claims = verify(first, jwks=s.jwks(), issuer=ISSUER, now=clock.now)
    assert "req" not in claims and claims["sub"] == "alice" and claims["exp"] == claims["iat"] + 60
    # A backend that asks for request binding refuses it: it names no request.
    with pytest.raises(InvalidAssertion) as err:
        verify(first, jwks=s.jwks(), issuer=ISSUER, now=clock.now, **BINDING)
    assert err.value.reason == "assertion.missing_claim"
    clock.advance(29)
    assert s.sign_for_caller(ALICE) == first
    clock.advance(2)  # past half of the 60 s lifetime: a fresh one, still valid for 60 s
    second = s.sign_for_caller(ALICE, on_sign=lambda: signed.append(1))
    assert second != first and len(signed) == 2
    assert verify(second, jwks=s.jwks(), issuer=ISSUER, now=clock.now + 50)["sub"] == "alice"


def test_caller_binding_is_per_principal_and_follows_key_rotation():
    clock = FakeClock()
    s = signer(clock=clock)
    bob = Principal(subject="bob", issuer="https://idp")
    a, b = s.sign_for_caller(ALICE), s.sign_for_caller(bob)
    assert verify(b, jwks=s.jwks(), issuer=ISSUER, now=clock.now)["sub"] == "bob"
    assert verify(a, jwks=s.jwks(), issuer=ISSUER, now=clock.now)["sub"] == "alice"
    new = SigningKey.generate()
    s.keyring.install(new, retire_after=120)
    rotated = s.sign_for_caller(ALICE)
    assert rotated != a
    assert json.loads(base64.urlsafe_b64decode(rotated.split(".")[0] + "=="))["kid"] == new.kid
