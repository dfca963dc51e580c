"""The identity config section: secure defaults, and refusals with clear messages."""

from __future__ import annotations

import json

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from authz.identity.config import IdentityConfig, IssuerConfig, hash_api_key
from authz.identity.testing import FakeIssuer, generate_key

EXAMPLE = """
resource: https://mcp.example.com/mcp
challenge_scopes: [mcp:tools]
issuers:
  - name: keycloak
    issuer: https://sso.example.com/realms/main
    typ: at+jwt
    algorithms: [RS256, ES256]
    leeway_seconds: 30
    claims:
      roles: [realm_access.roles, resource_access.mcp.roles]
      tenant: org_id
  - name: auth0
    issuer: https://example.eu.auth0.com/
    audiences: [https://mcp.example.com/mcp]
    jwks_uri: https://example.eu.auth0.com/.well-known/jwks.json
    claims:
      roles: [permissions, https://example.com/roles]
    jwks_cache:
      refetch_interval_seconds: 30
api_keys:
  header: x-api-key
  keys:
    - name: nightly-batch
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      subject: svc-nightly
      roles: [service]
anonymous_paths: [/public, /healthz]
passthrough_authorization_paths: []
headers:
  strip: [x-user-id, x-forwarded-user]
assertion:
  issuer: https://authz.internal
  audience: weather-backend
  algorithm: ES256
  lifetime_seconds: 60
token_cache:
  max_entries: 10000
metadata:
  scopes_supported: [mcp:tools, mcp:read]
  resource_name: Weather MCP
"""


def test_the_documented_example_validates():
    cfg = IdentityConfig.model_validate(yaml.safe_load(EXAMPLE))
    kc, a0 = cfg.issuers
    assert kc.effective_discovery_url == "https://sso.example.com/realms/main/.well-known/openid-configuration"
    assert cfg.audiences_for(kc) == ("https://mcp.example.com/mcp",)
    assert a0.effective_discovery_url is None and a0.remote


def test_defaults_are_secure():
    cfg = IdentityConfig()
    assert cfg.issuers == () and not cfg.api_keys.enabled and cfg.anonymous_paths == ()
    assert cfg.max_token_bytes == 16 * 1024
    i = IssuerConfig(name="x", issuer="https://x", audiences=("a",))
    assert i.verify_audience and "none" not in i.algorithms and not any(a.startswith("HS") for a in i.algorithms)


def invalid(raw, match):
    with pytest.raises(ValidationError, match=match):
        IdentityConfig.model_validate(raw)


def test_an_issuer_needs_an_audience():
    invalid({"issuers": [{"name": "x", "issuer": "https://x"}]}, "set audiences")
    IdentityConfig.model_validate({"issuers": [{"name": "x", "issuer": "https://x",
                                                "verify_audience": False}]})


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "ES512", "RSA-OAEP"])
def test_only_asymmetric_algorithms_can_be_named(alg):
    invalid({"resource": "https://r", "issuers": [{"name": "x", "issuer": "https://x",
                                                   "algorithms": [alg]}]}, "algorithms")


def test_remote_urls_need_https_except_loopback():
    base = {"resource": "https://r"}
    invalid({**base, "issuers": [{"name": "x", "issuer": "http://idp.example"}]}, "https")
    invalid({**base, "issuers": [{"name": "x", "issuer": "https://x", "jwks_uri": "ftp://x/k"}]},
            "http")
    for issuer in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:2"):
        IdentityConfig.model_validate({**base, "issuers": [{"name": "x", "issuer": issuer}]})
    IdentityConfig.model_validate({**base, "issuers": [{"name": "x", "issuer": "http://idp",
                                                        "allow_http": True}]})


def test_one_key_source_per_issuer():
    invalid({"resource": "https://r", "issuers": [{"name": "x", "issuer": "https://x",
                                                   "jwks_uri": "https://x/k",
                                                   "discovery_url": "https://x/d"}]},
            "choose one key source")


def test_static_keys_are_checked_at_load(tmp_path):
    idp = FakeIssuer()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    IssuerConfig(name="x", issuer="https://x", audiences=("a",), jwks_file=str(path))
    with pytest.raises(ValidationError, match="cannot read"):
        IssuerConfig(name="x", issuer="https://x", audiences=("a",), jwks_file=str(tmp_path / "nope"))
    with pytest.raises(ValidationError, match="private or symmetric"):
        IssuerConfig(name="x", issuer="https://x", audiences=("a",),
                     jwks={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
    with pytest.raises(ValidationError, match="no keys"):
        IssuerConfig(name="x", issuer="https://x", audiences=("a",), jwks={"keys": []})
    pem = generate_key("ES256").public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    IssuerConfig(name="x", issuer="https://x", audiences=("a",), pem_keys=[{"pem": pem}])
    with pytest.raises(ValidationError, match="PEM"):
        IssuerConfig(name="x", issuer="https://x", audiences=("a",), pem_keys=[{"pem": "junk"}])


def test_unknown_keys_are_errors():
    invalid({"issuer": [{"name": "typo"}]}, "Extra inputs")
    invalid({"resource": "https://r", "issuers": [{"name": "x", "issuer": "https://x", "audience": "a"}]},
            "Extra inputs")


def test_names_are_unique_and_bounded():
    one = {"name": "x", "issuer": "https://x"}
    invalid({"resource": "https://r", "issuers": [one, {**one, "issuer": "https://y"}]}, "share a name")
    invalid({"resource": "https://r", "issuers": [one, {**one, "name": "y"}]}, "share an issuer")
    invalid({"resource": "https://r", "issuers": [{**one, "name": "has spaces"}]}, "letters")


def test_api_keys_are_digests():
    digest = hash_api_key("k" * 32)
    IdentityConfig.model_validate({"api_keys": {"keys": [{"name": "a", "sha256": digest.upper(),
                                                         "subject": "s"}]}})
    invalid({"api_keys": {"keys": [{"name": "a", "sha256": "plaintext-key", "subject": "s"}]}},
            "hex SHA-256")
    invalid({"api_keys": {"keys": [{"name": "a", "sha256": digest, "subject": "s"},
                                   {"name": "b", "sha256": digest, "subject": "t"}]}}, "share a sha256")
    invalid({"api_keys": {"scheme": "Bearer"}}, "other than Bearer")


def test_header_names():
    cfg = IdentityConfig.model_validate({"headers": {"user": "X-Remote-User", "strip": ["X-User-Id"]}})
    assert cfg.headers.user == "x-remote-user" and cfg.headers.strip == ("x-user-id",)
    invalid({"headers": {"user": "authorization"}}, "cannot be an identity header")
    invalid({"headers": {"strip": ["host"]}}, "cannot strip")
    invalid({"headers": {"user": "bad header"}}, "not a valid header name")
    invalid({"headers": {"user": "x-a", "email": "x-a"}}, "share a name")


def test_path_prefixes_must_be_plain():
    for bad in ("public", "/a/../b", "/a%2fb"):
        invalid({"anonymous_paths": [bad]}, "path prefix")


def test_resource_must_be_absolute():
    invalid({"resource": "/mcp"}, "absolute")
    invalid({"resource": "https://x/mcp#frag"}, "fragment")
