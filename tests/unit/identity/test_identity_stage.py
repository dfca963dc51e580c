"""The identity stage end to end (no Envoy): headers in, principal and mutations out."""

from __future__ import annotations

import pytest
from identity_helpers import API_KEY, bearer, identity_config, make_request, run

from authz.errors import Deny, Unauthenticated, Unavailable
from authz.identity.assertion import InvalidAssertion, verify
from authz.identity.config import IdentityConfig
from authz.identity.paths import path_matches
from authz.identity.stage import header_list, header_value
from authz.model import Context
from authz.pipeline import Pipeline

SPOOFED = {"x-authz-user": "ceo", "x-authz-roles": "admin", "x-user-id": "ceo",
           "x-authz-assertion": "forged", "x-authz-client": "trusted"}


async def test_a_valid_token_binds_the_user_and_client(idp, stage):
    token = idp.mint(sub="alice", email="alice@example.com", org_id="acme",
                     realm_access={"roles": ["admin"]}, permissions=["read:weather"],
                     scope="mcp:tools mcp:read")
    ctx = await run(stage, make_request({**bearer(token), **SPOOFED}))
    p = ctx.principal
    assert (p.subject, p.client, p.tenant, p.email) == ("alice", "chatgpt", "acme", "alice@example.com")
    assert p.roles == {"admin", "read:weather"}
    m = ctx.mutations
    assert m.set_headers["x-authz-user"] == "alice"
    assert m.set_headers["x-authz-roles"] == "admin,read:weather"
    assert m.set_headers["x-authz-scopes"] == "mcp:read,mcp:tools"
    assert m.set_headers["x-authz-client"] == "chatgpt"
    assert m.set_headers["x-authz-tenant"] == "acme"
    assert m.set_headers["x-authz-email"] == "alice@example.com"
    assert m.set_headers["x-authz-issuer"] == idp.issuer
    assert "authorization" in m.remove_headers and "x-user-id" in m.remove_headers
    assert m.set_headers["x-authz-assertion"] != "forged"
    assert ctx.facts["identity"] == {"credential": "jwt", "issuer": "idp0", "subject": "alice",
                                     "client": "chatgpt", "cache_hit": False}
    assert token not in repr(ctx.facts) and token not in repr(ctx.handoff)
    assert ctx.principal.tenant == "acme"


async def test_the_assertion_verifies_for_this_request_only(idp, stage):
    ctx = await run(stage, make_request(bearer(idp.mint(sub="alice", roles=["admin"])),
                                        path="/mcp?session=1", request_id="rid-9"))
    assertion = ctx.mutations.set_headers["x-authz-assertion"]
    claims = verify(assertion, jwks=stage.jwks(), issuer="urn:authz:sidecar", method="POST",
                    host="mcp.example.com", path="/mcp", request_id="rid-9")
    assert claims["sub"] == "alice" and claims["roles"] == ["admin"] and claims["client"] == "chatgpt"
    assert claims["idp"] == idp.issuer and claims["cred"] == "jwt"
    assert claims["exp"] - claims["iat"] == 60
    with pytest.raises(InvalidAssertion) as info:
        verify(assertion, jwks=stage.jwks(), issuer="urn:authz:sidecar", path="/admin")
    assert info.value.field == "path"


async def test_second_request_is_a_cache_hit(idp, stage):
    token = idp.mint()
    await run(stage, make_request(bearer(token)))
    ctx = await run(stage, make_request(bearer(token)))
    assert ctx.facts["identity"]["cache_hit"] is True
    assert idp.hits["/jwks"] == 1


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
async def test_the_scheme_is_case_insensitive(idp, stage, scheme):
    ctx = await run(stage, make_request({"authorization": f"{scheme} {idp.mint()}"}))
    assert ctx.principal.subject == "alice"


async def test_extra_spaces_around_the_token_are_tolerated(idp, stage):
    ctx = await run(stage, make_request({"authorization": f"  Bearer   {idp.mint()}  "}))
    assert ctx.principal.subject == "alice"


async def test_a_single_value_in_header_lists_is_fine(idp, stage):
    token = idp.mint()
    ctx = await run(stage, make_request(bearer(token),
                                        header_lists={"authorization": (f"Bearer {token}",)}))
    assert ctx.principal.subject == "alice"


async def test_passthrough_route_keeps_authorization(idp, stage):
    ctx = await run(stage, make_request(bearer(idp.mint()), path="/legacy/api"))
    assert "authorization" not in ctx.mutations.remove_headers
    assert "x-authz-user" in ctx.mutations.set_headers
    ctx = await run(stage, make_request(bearer(idp.mint()), path="/legacy/../mcp"))
    assert "authorization" in ctx.mutations.remove_headers


async def test_anonymous_paths(idp, stage):
    ctx = await run(stage, make_request({**SPOOFED}, path="/public/docs"))
    assert ctx.principal.anonymous
    assert not ctx.mutations.set_headers  # no identity, no assertion
    assert {"x-authz-user", "x-user-id", "x-authz-assertion"} <= ctx.mutations.remove_headers
    # a credential sent anyway is still checked
    with pytest.raises(Unauthenticated) as info:
        await run(stage, make_request(bearer(idp.mint(aud="https://other")), path="/public"))
    assert info.value.reason == "token.bad_audience"
    ctx = await run(stage, make_request(bearer(idp.mint()), path="/public"))
    assert ctx.principal.subject == "alice"
    for path in ("/publicity", "/public/../admin", "/public/%2e%2e/admin", "/public%2Fx", "/"):
        with pytest.raises(Unauthenticated) as info:
            await run(stage, make_request(path=path))
        assert info.value.reason == "token.missing"


async def test_metadata_paths_never_need_a_token(stage):
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        ctx = await run(stage, make_request({"authorization": "Bearer garbage", **SPOOFED}, path=path,
                                            method="GET"))
        assert ctx.principal.anonymous
        assert "authorization" in ctx.mutations.remove_headers
        assert "x-authz-user" in ctx.mutations.remove_headers
    with pytest.raises(Unauthenticated):
        await run(stage, make_request(path="/.well-known/oauth-protected-resource/../../mcp"))


async def test_api_key_in_its_header_and_in_authorization(stage):
    for headers in ({"x-api-key": API_KEY}, {"authorization": f"ApiKey {API_KEY}"},
                    {"authorization": f"apikey {API_KEY}"}):
        ctx = await run(stage, make_request(headers))
        p = ctx.principal
        assert (p.subject, p.credential, p.roles) == ("svc-batch", "api_key", {"service"})
        assert ctx.facts["identity"] == {"credential": "api_key", "api_key": "batch",
                                         "subject": "svc-batch"}
        assert {"x-api-key", "authorization"} <= ctx.mutations.remove_headers
        assert ctx.mutations.set_headers["x-authz-user"] == "svc-batch"
        assert "x-authz-assertion" in ctx.mutations.set_headers


async def test_api_key_header_is_left_alone_when_api_keys_are_off(idp, build):
    stage = build(identity_config(idp, api_keys={}))
    ctx = await run(stage, make_request({**bearer(idp.mint()), "x-api-key": "sk-ant-upstream-key"}))
    assert ctx.principal.subject == "alice"
    assert "x-api-key" not in ctx.mutations.remove_headers
    with pytest.raises(Unauthenticated) as info:  # and it is not a credential for us either
        await run(stage, make_request({"x-api-key": API_KEY}))
    assert info.value.reason == "token.missing"


async def test_no_issuer_configured_means_401(build):
    stage = build(IdentityConfig())
    with pytest.raises(Unauthenticated) as info:
        await run(stage, make_request())
    assert info.value.reason == "token.missing"
    assert info.value.headers["www-authenticate"] == "Bearer"
    with pytest.raises(Unauthenticated) as info:
        await run(stage, make_request(bearer("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln")))
    assert info.value.reason == "token.unknown_issuer"


async def test_disabled_identity_still_strips_spoofed_headers(build):
    stage = build(IdentityConfig(enabled=False))
    ctx = await run(stage, make_request({**SPOOFED, "authorization": "Bearer x"}))
    assert ctx.principal.anonymous and not ctx.mutations.set_headers
    assert {"x-authz-user", "x-authz-assertion", "authorization"} <= ctx.mutations.remove_headers


async def test_idp_down_from_the_start_is_503_not_401(idp, stage):
    idp.down = True
    with pytest.raises(Unavailable) as info:
        await run(stage, make_request(bearer(idp.mint())))
    assert info.value.status == 503 and info.value.reason == "identity.keys_unavailable"


async def test_rotation_at_the_issuer_is_picked_up_without_restart(idp, build):
    stage = build(identity_config(idp, issuers=[{"name": "idp", "issuer": idp.issuer,
                                                 "jwks_cache": {"refetch_interval_seconds": 0}}]))
    await run(stage, make_request(bearer(idp.mint())))
    idp.rotate(drop_old=True)
    ctx = await run(stage, make_request(bearer(idp.mint(sub="bob"))))
    assert ctx.principal.subject == "bob"


async def test_idp_outage_does_not_break_known_keys(idp, stage):
    await stage.warm()
    idp.down = True
    ctx = await run(stage, make_request(bearer(idp.mint(sub="carol"))))
    assert ctx.principal.subject == "carol"


async def test_challenge_scope_and_explicit_metadata_url(idp, build):
    stage = build(identity_config(idp, challenge_scopes=["mcp:tools"],
                                  resource_metadata_url="https://meta.example/prm"))
    with pytest.raises(Unauthenticated) as info:
        await run(stage, make_request())
    assert info.value.headers["www-authenticate"] == \
        'Bearer resource_metadata="https://meta.example/prm", scope="mcp:tools"'


async def test_identity_headers_set_by_an_earlier_stage_are_dropped(idp, stage):
    ctx = Context(request=make_request(bearer(idp.mint())))
    ctx.mutations.set_header("x-authz-roles", "admin")
    ctx.mutations.set_header("x-other", "kept")
    await stage.on_request(ctx)
    assert "x-authz-roles" not in ctx.mutations.set_headers
    assert ctx.mutations.set_headers["x-other"] == "kept"


async def test_through_the_pipeline_a_denial_stays_a_401(stage):
    pipeline = Pipeline([stage])
    with pytest.raises(Deny) as info:
        await pipeline.run("on_request", Context(request=make_request()))
    assert info.value.status == 401


async def test_header_values_are_safe(idp, stage):
    token = idp.mint(sub="ali\u00e9%\r\nx-evil: 1", roles=["a,b", "c d", "plain"], email="a+b@x.io")
    ctx = await run(stage, make_request(bearer(token)))
    h = ctx.mutations.set_headers
    assert h["x-authz-user"] == "ali%C3%A9%25%0D%0Ax-evil: 1"
    assert h["x-authz-roles"] == "a%2Cb,c%20d,plain"
    assert h["x-authz-email"] == "a+b@x.io"
    assert all(v.isascii() and v.isprintable() for v in h.values())


def test_header_helpers():
    assert header_value("plain value") == "plain value"
    assert header_list(frozenset({"b", "a"})) == "a,b"
    assert path_matches("/a/b", ["/a"]) and path_matches("/a", ["/a/"]) and path_matches("/x", ["/"])
    assert not path_matches("/ab", ["/a"]) and not path_matches("/a/./b", ["/a"])
    assert not path_matches("/a", [])


async def test_close_releases_the_http_session(idp, build):
    stage = build(identity_config(idp))
    await stage.warm()
    session = stage._http._session
    assert session is not None and not session.closed
    await stage.close()
    assert session.closed


async def test_a_jwt_in_x_api_key_is_a_bearer_token_where_config_says_so(idp, build):
    # Anthropic's SDK sends its key in x-api-key: with token_headers it may be the user's token.
    stage = build(identity_config(idp, token_headers=["x-api-key"]))
    ctx = await run(stage, make_request({"x-api-key": idp.mint()}))
    assert (ctx.principal.subject, ctx.principal.credential) == ("alice", "jwt")
    assert "x-api-key" in ctx.mutations.remove_headers
    ctx = await run(stage, make_request({"x-api-key": API_KEY}))  # still an API key otherwise
    assert ctx.principal.credential == "api_key"
    with pytest.raises(Unauthenticated) as info:  # a token in both places is two credentials
        await run(stage, make_request({"x-api-key": idp.mint(), **bearer(idp.mint())}))
    assert info.value.reason == "credentials.multiple"
    off = build(identity_config(idp))  # not configured: a JWT there is an (unknown) API key
    with pytest.raises(Unauthenticated) as info:
        await run(off, make_request({"x-api-key": idp.mint()}))
    assert info.value.reason in ("api_key.invalid", "credentials.malformed")


async def test_token_lifetime_is_bounded_per_issuer(idp, build):
    import time
    now = time.time()
    stage = build(identity_config(idp))
    for claims in ({"iat": None, "exp": now + 25 * 3600}, {"iat": now - 3600, "exp": now + 24 * 3600}):
        with pytest.raises(Unauthenticated) as info:
            await run(stage, make_request(bearer(idp.mint(**claims))))
        assert info.value.reason == "token.lifetime_too_long"
        assert 'error="invalid_token"' in info.value.headers["www-authenticate"]
    ctx = await run(stage, make_request(bearer(idp.mint(iat=None, exp=now + 23 * 3600))))
    assert ctx.principal.subject == "alice"
    cfg = identity_config(idp).model_dump()
    cfg["issuers"][0]["max_token_lifetime_seconds"] = 7 * 24 * 3600
    longer = build(IdentityConfig.model_validate(cfg))
    ctx = await run(longer, make_request(bearer(idp.mint(exp=now + 6 * 24 * 3600))))
    assert ctx.principal.subject == "alice"
