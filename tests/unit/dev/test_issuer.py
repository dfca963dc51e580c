"""The dev issuer: a persistent private key, RFC 7638 kid, at+jwt tokens, discovery, the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from authz.cli.dev_token import dev_token_main
from authz.dev import issuer
from authz.dev.issuer import build_app, jwks, load_or_create_key, mint_token

from .conftest import program

AUD = "http://localhost:10000/mcp"


def decode(token: str, dev_dir, **kw) -> dict:
    key = jwt.PyJWK(jwks(load_or_create_key(dev_dir))["keys"][0])
    return jwt.decode(token, key, algorithms=["RS256"], audience=kw.pop("audience", AUD), **kw)


def test_the_key_is_created_once_private_and_reused(tmp_path):
    key = load_or_create_key(tmp_path / "dev")
    path = tmp_path / "dev" / issuer.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert key.key_size == 2048
    assert load_or_create_key(tmp_path / "dev").public_key().public_numbers() == key.public_key().public_numbers()
    assert [p.name for p in path.parent.iterdir()] == [issuer.KEY_FILE]  # no temp files left


def test_concurrent_first_uses_agree_on_one_key(tmp_path):
    with ThreadPoolExecutor(6) as pool:
        keys = list(pool.map(lambda _: load_or_create_key(tmp_path), range(6)))
    assert len({k.public_key().public_numbers().n for k in keys}) == 1


def test_the_dev_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTHZ_DEV_DIR", str(tmp_path / "env"))
    load_or_create_key()
    assert (tmp_path / "env" / issuer.KEY_FILE).exists()


def test_the_kid_is_the_rfc7638_thumbprint(tmp_path):
    (jwk,) = jwks(load_or_create_key(tmp_path))["keys"]
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    assert jwk["kid"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert jwk["alg"] == "RS256" and jwk["use"] == "sig" and "d" not in jwk


def test_a_minted_token_is_an_at_jwt_with_every_claim(tmp_path):
    token = mint_token(sub="oscar", roles=["accounting", "staff"], scopes=["tools:calendar", "invoices:read"],
                       client="chatgpt", tenant="acme", email="oscar@acme.example", ttl=600,
                       extra_claims={"department": "finance"}, dev_dir=tmp_path)
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256"
    assert header["kid"] == jwks(load_or_create_key(tmp_path))["keys"][0]["kid"]
    claims = decode(token, tmp_path, issuer="http://127.0.0.1:9400")
    assert claims["sub"] == "oscar" and claims["aud"] == AUD
    assert claims["scope"] == "tools:calendar invoices:read" and claims["roles"] == ["accounting", "staff"]
    assert claims["azp"] == claims["client_id"] == "chatgpt"
    assert claims["tenant"] == "acme" and claims["email"] == "oscar@acme.example"
    assert claims["department"] == "finance"
    assert claims["exp"] - claims["iat"] == 600 and claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - time.time()) < 5 and claims["jti"]


def test_tokens_differ_and_optional_claims_stay_out(tmp_path):
    a, b = (mint_token(sub="dana", dev_dir=tmp_path) for _ in range(2))
    ca, cb = decode(a, tmp_path), decode(b, tmp_path)
    assert ca["jti"] != cb["jti"]
    assert "tenant" not in ca and "email" not in ca and ca["roles"] == [] and ca["client_id"] == "demo-cli"


def test_several_audiences_become_a_list(tmp_path):
    token = mint_token(sub="dana", audience=["a", "b"], dev_dir=tmp_path)
    assert decode(token, tmp_path, audience="b")["aud"] == ["a", "b"]


def test_a_negative_ttl_mints_an_expired_token(tmp_path):
    with pytest.raises(jwt.ExpiredSignatureError):
        decode(mint_token(sub="dana", ttl=-60, dev_dir=tmp_path), tmp_path)


async def test_discovery_and_jwks(tmp_path):
    async with TestClient(TestServer(build_app("http://127.0.0.1:9999/", tmp_path))) as client:
        r = await client.get("/.well-known/openid-configuration")
        meta = await r.json()
        assert meta["issuer"] == "http://127.0.0.1:9999" and meta["jwks_uri"] == "http://127.0.0.1:9999/jwks.json"
        assert meta["id_token_signing_alg_values_supported"] == ["RS256"]
        r = await client.get("/jwks.json")
        assert await r.json() == jwks(load_or_create_key(tmp_path))
        r = await client.post("/token", data={"grant_type": "client_credentials"})
        assert r.status == 400 and "dev-token" in (await r.json())["error_description"]


def test_dev_token_prints_only_the_token(tmp_path, capsys):
    rc = dev_token_main(["--sub", "oscar", "--roles", "accounting,staff", "--roles", "auditor",
                         "--scopes", "tools:calendar invoices:read", "--client", "claude", "--tenant", "acme",
                         "--email", "o@acme.example", "--aud", "x", "--aud", "y", "--ttl", "120",
                         "--issuer", "http://issuer.test", "--dev-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0 and err == "" and out.endswith("\n") and out.count("\n") == 1
    claims = decode(out.strip(), tmp_path, audience="x", issuer="http://issuer.test")
    assert claims["roles"] == ["accounting", "staff", "auditor"]
    assert claims["scope"] == "tools:calendar invoices:read" and claims["aud"] == ["x", "y"]
    assert claims["client_id"] == "claude" and claims["tenant"] == "acme" and claims["exp"] - claims["iat"] == 120


def test_dev_token_defaults_follow_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTHZ_DEV_DIR", str(tmp_path))
    monkeypatch.setenv("AUTHZ_DEV_ISSUER", "http://127.0.0.1:4444")
    assert dev_token_main(["--sub", "dana"]) == 0
    claims = decode(capsys.readouterr().out.strip(), tmp_path, issuer="http://127.0.0.1:4444")
    assert claims["aud"] == AUD and claims["scope"] == ""


@pytest.mark.parametrize("argv", [[], ["--sub", ""], ["--sub", "x", "--ttl", "0"], ["--sub", "x", "--ttl", "soon"]])
def test_dev_token_refuses_bad_flags(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        dev_token_main([*argv, "--dev-dir", str(tmp_path)])
    assert exc.value.code == 2 and capsys.readouterr().out == ""


def test_the_program_names_itself_by_the_port_it_bound(tmp_path):
    with program("authz.dev.issuer", "--port", "0", "--dev-dir", str(tmp_path)) as (url, lines):
        assert lines == [f"dev issuer {url} listening on {url}"]
        with urllib.request.urlopen(f"{url}/.well-known/openid-configuration", timeout=10) as r:
            assert json.load(r)["issuer"] == url
        token = mint_token(sub="dana", issuer=url, dev_dir=tmp_path)
        with urllib.request.urlopen(f"{url}/jwks.json", timeout=10) as r:
            key = jwt.PyJWK(json.load(r)["keys"][0])
        assert jwt.decode(token, key, algorithms=["RS256"], audience=AUD, issuer=url)["sub"] == "dana"
