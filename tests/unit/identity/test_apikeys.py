from __future__ import annotations

import pytest

from authz.identity.apikeys import ConfigApiKeys, check_key_syntax
from authz.identity.config import ApiKey, hash_api_key
from authz.identity.errors import CredentialsMalformed

KEY = "sk-live-0123456789abcdefABCDEF"


async def test_lookup_by_digest():
    keys = ConfigApiKeys([ApiKey(name="batch", sha256=hash_api_key(KEY), subject="svc",
                                 tenant="acme", roles=("service",), scopes=("read",))])
    match = await keys.lookup(KEY)
    assert match is not None and match.name == "batch"
    p = match.principal
    assert (p.subject, p.tenant, p.credential, p.roles, p.scopes) == (
        "svc", "acme", "api_key", {"service"}, {"read"})
    assert await keys.lookup(KEY + "x") is None
    assert len(keys) == 1


@pytest.mark.parametrize("key", ["short", "x" * 513, "has space inside-1234", "comma,inside-123456",
                                 'quote"inside-1234567', "non-ascii-é-12345678", "tab\tinside-12345678"])
def test_syntax(key):
    with pytest.raises(CredentialsMalformed):
        check_key_syntax(key)


def test_good_syntax():
    check_key_syntax(KEY)
    check_key_syntax("A" * 512)
