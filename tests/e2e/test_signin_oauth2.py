"""Issue 20: a plain OAuth 2.0 upstream (``kind: oauth2``, as for GitHub): no discovery, no ID
token; the user comes from the userinfo endpoint. Played by the same real provider, used only
through its OAuth 2.0 endpoints."""

from __future__ import annotations

import json

import anyio
import pytest

from tests.e2e.signin_stack import MemoryTokens, Person, mcp_calls, oauth_provider, start_signin_stack

pytestmark = pytest.mark.e2e


def test_a_plain_oauth2_provider_signs_the_user_in_through_userinfo(tmp_path):
    running = start_signin_stack(tmp_path, upstream_extra="""\
    kind: oauth2
    authorization_endpoint: {idp}/auth
    token_endpoint: {idp}/token
    userinfo_endpoint: {idp}/me
""")
    try:
        person, storage = Person("dana"), MemoryTokens()
        _, results = anyio.run(mcp_calls, running.url, oauth_provider(running.url, person, storage), [("whoami", {})])
        who = json.loads(results[0].content[0].text)
        assert who["headers"]["x-authz-user"] == "dana" and who["headers"]["x-authz-roles"] == "doctor"
        assert who["headers"]["x-authz-email"] == "dana@example.com"
    finally:
        running.stop()
