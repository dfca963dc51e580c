from __future__ import annotations

from authz.identity.config import IdentityConfig
from authz.identity.metadata import (
    is_metadata_path,
    metadata_paths,
    metadata_url,
    protected_resource_metadata,
)


def cfg(**kw) -> IdentityConfig:
    base = {"resource": "https://mcp.example.com/mcp",
            "issuers": [{"name": "a", "issuer": "https://idp.example", "jwks_uri": "https://idp.example/k"}]}
    base.update(kw)
    return IdentityConfig.model_validate(base)


def test_document_at_the_path_suffixed_and_bare_well_known_paths():
    c = cfg(metadata={"scopes_supported": ["mcp:tools"], "resource_name": "Weather"})
    expected = {"resource": "https://mcp.example.com/mcp",
                "authorization_servers": ["https://idp.example"],
                "scopes_supported": ["mcp:tools"], "bearer_methods_supported": ["header"],
                "resource_name": "Weather"}
    assert protected_resource_metadata(c, "/.well-known/oauth-protected-resource/mcp") == expected
    assert protected_resource_metadata(c, "/.well-known/oauth-protected-resource") == expected
    assert protected_resource_metadata(c, "/.well-known/oauth-protected-resource/mcp?x=1") == expected
    assert protected_resource_metadata(c, "/.well-known/oauth-protected-resource/other") is None
    assert protected_resource_metadata(c, "/mcp") is None
    assert metadata_paths(c) == ("/.well-known/oauth-protected-resource",
                                 "/.well-known/oauth-protected-resource/mcp")


def test_configured_authorization_servers_win():
    c = cfg(metadata={"authorization_servers": ["https://as.example"]})
    doc = protected_resource_metadata(c, "/.well-known/oauth-protected-resource")
    assert doc["authorization_servers"] == ["https://as.example"]


def test_metadata_url_follows_rfc9728_section_3_1():
    assert metadata_url(cfg()) == "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    assert metadata_url(cfg(resource="https://api.example.com")) == \
        "https://api.example.com/.well-known/oauth-protected-resource"
    assert metadata_url(cfg(resource_metadata_url="https://x/meta")) == "https://x/meta"


def test_no_resource_no_document():
    c = IdentityConfig()
    assert protected_resource_metadata(c, "/.well-known/oauth-protected-resource") is None
    assert metadata_url(c) is None and metadata_paths(c) == ()


def test_is_metadata_path():
    assert is_metadata_path("/.well-known/oauth-protected-resource")
    assert is_metadata_path("/.well-known/oauth-protected-resource/mcp?a=b")
    assert not is_metadata_path("/.well-known/oauth-protected-resourcex")
    assert not is_metadata_path("/mcp/.well-known/oauth-protected-resource")
    for dodge in ("/.well-known/oauth-protected-resource/../../mcp",
                  "/.well-known/oauth-protected-resource/%2e%2e/mcp",
                  "/.well-known/oauth-protected-resource/..%2Fmcp"):
        assert not is_metadata_path(dodge)
