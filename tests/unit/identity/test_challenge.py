from __future__ import annotations

from authz.identity.challenge import bearer_challenge, quote_param


def test_quote_param_cannot_be_escaped():
    assert quote_param('a"b\\c\r\nSet-Cookie: x\té') == '"abcSet-Cookie: x"'
    assert len(quote_param("x" * 10_000)) == 514


def test_missing_token_challenge_has_no_error():
    assert bearer_challenge(resource_metadata="https://r/.well-known/oauth-protected-resource",
                            description="ignored") == \
        'Bearer resource_metadata="https://r/.well-known/oauth-protected-resource"'


def test_invalid_token_challenge():
    value = bearer_challenge(resource_metadata="https://m", error="invalid_token",
                             description="the access token has expired", scope="mcp:tools mcp:read")
    assert value == ('Bearer resource_metadata="https://m", error="invalid_token", '
                     'error_description="the access token has expired", scope="mcp:tools mcp:read"')


def test_bare_challenge():
    assert bearer_challenge() == "Bearer"
