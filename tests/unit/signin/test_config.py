"""The signin section: validated at load with key paths; turning it on adds the sidecar's own
issuer to the identity stage and names this server in the protected-resource metadata."""

from __future__ import annotations

import pytest

from authz.config import parse_config
from authz.errors import ConfigError
from authz.identity.assertion import SigningKey

BASE = """
identity: {resource: "https://mcp.example.com/mcp"}
signin:
  enabled: true
  issuer: https://mcp.example.com
  upstream: {issuer: "https://sso.example.com", client_id: authz, client_secret: s}
"""


def test_enabling_signin_adds_our_issuer_and_names_us_in_the_metadata():
    cfg = parse_config(BASE)
    ours = [i for i in cfg.identity.issuers if i.name == "signin"]
    assert len(ours) == 1 and ours[0].issuer == "https://mcp.example.com"
    assert ours[0].audiences == ("https://mcp.example.com/mcp",) and ours[0].typ == "at+jwt"
    assert ours[0].jwks is not None and ours[0].jwks["keys"]
    assert cfg.identity.metadata.authorization_servers == ("https://mcp.example.com",)


def test_signin_off_changes_nothing():
    cfg = parse_config('identity: {resource: "https://mcp.example.com/mcp"}')
    assert cfg.identity.issuers == () and cfg.identity.metadata.authorization_servers == ()


@pytest.mark.parametrize("text, path, words", [
    ("signin: {enabled: true, upstream: {issuer: 'https://sso.example.com', client_id: a}}", "signin",
     "issuer is required"),
    ("signin: {enabled: true, issuer: 'https://x.example'}", "signin", "upstream is required"),
    ("signin: {issuer: 'https://x.example/auth'}", "signin.issuer", "without a path"),
    ("signin: {issuer: 'ftp://x.example'}", "signin.issuer", "http(s)"),
    ("signin: {enabled: true, issuer: 'https://x.example', upstream: {issuer: 'http://sso.example.com', "
     "client_id: a}}", "signin.upstream", "https"),
    ("signin: {scopes_supported: ['bad scope']}", "signin.scopes_supported", "scope token"),
    ("signin: {upstream: {kind: oauth2, issuer: 'https://github.com', client_id: a, "
     "authorization_endpoint: 'https://github.com/login/oauth/authorize'}}", "signin.upstream",
     "kind oauth2 needs token_endpoint, userinfo_endpoint"),
    ("signin: {registrations: {}}", "signin.registrations", "unknown key"),
    ("signin: {enabled: true, issuer: 'https://x.example', upstream: {issuer: 'https://s.example', client_id: a}}",
     "signin.resources", "is empty and identity.resource is not set"),
])
def test_bad_signin_sections_are_refused_with_their_path(text, path, words):
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    problems = info.value.problems
    assert any(p.startswith(path) and words in m for p, m in problems), problems


def test_a_key_file_must_match_the_algorithm(tmp_path):
    key = tmp_path / "k.pem"
    key.write_bytes(SigningKey.generate("EdDSA").private_pem())
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + f"  key_files: [{key}]\n")
    assert "EdDSA key but algorithm is ES256" in str(info.value)
    cfg = parse_config(BASE + f"  key_files: [{key}]\n  algorithm: EdDSA\n")
    assert next(i for i in cfg.identity.issuers if i.name == "signin").algorithms == ("EdDSA",)


def test_the_key_ring_is_the_runtimes_and_only_a_built_pipeline_installs_into_it():
    """Validating a config (a reload that may still fail) leaves the runtime's keys alone; each
    pipeline built from a valid config installs into the one ring, and a generated key outlives
    the rebuild, so tokens already handed out keep verifying."""
    from authz.assembly import Shared, build_pipeline
    from authz.store.memory import MemoryStore

    shared = Shared()
    parse_config(BASE)
    assert shared.signin_keys.active is None
    first = build_pipeline(parse_config(BASE), MemoryStore(), shared=shared)
    kid = shared.signin_keys.active.kid
    second = build_pipeline(parse_config(BASE), MemoryStore(), shared=shared)
    assert shared.signin_keys.active.kid == kid
    for pipeline in (first, second):
        identity = pipeline.stages[0]
        ours = [i for i in identity.cfg.issuers if i.name == "signin"]
        assert [k["kid"] for k in ours[0].jwks["keys"]] == [kid]
