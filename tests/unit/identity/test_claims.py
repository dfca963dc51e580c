from __future__ import annotations

import pytest

from authz.identity.claims import _MISSING, ClaimMapper, claim_path, resolve
from authz.identity.config import ClaimsMapping
from authz.identity.errors import TokenInvalidClaim, TokenMissingClaim


def principal(claims, **mapping):
    return ClaimMapper(ClaimsMapping(**mapping)).principal(claims, issuer="https://idp", expires_at=1.0)


def test_nested_and_dotted_claim_paths():
    claims = {"realm_access": {"roles": ["admin"]}, "https://example.com/roles": ["editor"],
              "resource_access": {"my.client": {"roles": ["viewer"]}}}
    assert resolve(claims, claim_path("realm_access.roles")) == ["admin"]
    assert resolve(claims, claim_path("https://example.com/roles")) == ["editor"]
    assert resolve(claims, claim_path("resource_access.my.client.roles")) == ["viewer"]
    assert resolve(claims, claim_path("realm_access.missing")) is _MISSING
    assert resolve(claims, claim_path("realm_access.roles.deeper")) is _MISSING


def test_roles_merge_from_several_sources():
    p = principal({"sub": "a", "roles": ["r1"], "realm_access": {"roles": ["r2", 3]},
                   "permissions": ["read:tools", "r1"], "groups": "g1 g2"},
                  roles=("roles", "realm_access.roles", "permissions", "groups", "absent.path"))
    assert p.roles == {"r1", "r2", "read:tools", "g1", "g2"}


def test_scopes_from_scope_string_and_scp_list():
    assert principal({"sub": "a", "scope": "a b  c"}).scopes == {"a", "b", "c"}
    assert principal({"sub": "a", "scp": ["x", "y"]}).scopes == {"x", "y"}
    assert principal({"sub": "a", "scope": "a", "scp": ["b"]}).scopes == {"a", "b"}


def test_client_prefers_azp_then_client_id():
    assert principal({"sub": "a", "azp": "chatgpt", "client_id": "other"}).client == "chatgpt"
    assert principal({"sub": "a", "client_id": "claude"}).client == "claude"
    assert principal({"sub": "a"}).client is None


def test_email_tenant_and_claims_are_kept():
    p = principal({"sub": "a", "email": "a@x", "org": {"id": 42}}, tenant="org.id")
    assert (p.email, p.tenant, p.credential, p.expires_at) == ("a@x", "42", "jwt", 1.0)
    assert p.claims["org"] == {"id": 42}


def test_custom_subject_claim():
    assert principal({"sub": "opaque", "oid": "user-1"}, subject="oid").subject == "user-1"


@pytest.mark.parametrize(("claims", "error"), [
    ({}, TokenMissingClaim), ({"sub": None}, TokenMissingClaim), ({"sub": 5}, TokenInvalidClaim),
    ({"sub": ""}, TokenInvalidClaim), ({"sub": "x" * 2000}, TokenInvalidClaim)])
def test_subject_is_required_and_a_string(claims, error):
    with pytest.raises(error):
        principal(claims)


def test_odd_values_are_ignored_not_fatal():
    p = principal({"sub": "a", "roles": {"not": "a list"}, "email": ["x"], "scope": 7,
                   "azp": True})
    assert (p.roles, p.email, p.scopes, p.client) == (frozenset(), None, frozenset(), None)
