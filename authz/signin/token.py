"""The token endpoint (authorization code with PKCE, refresh-token rotation with reuse detection)
and revocation (RFC 7009): JSON in, JSON out, with the OAuth error the RFCs name."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from authz.identity.assertion import KeyRing
from authz.signin import answers
from authz.signin.access_tokens import mint_access_token
from authz.signin.config import SigninConfig
from authz.signin.context import InForce, Parts, find_client
from authz.signin.errors import (
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from authz.signin.keys import active_key
from authz.signin.params import OFFLINE, basic_credentials, read_form, scope_list, single_values
from authz.signin.pkce import verifier_matches
from authz.signin.state import SigninState, digest, new_secret

if TYPE_CHECKING:  # the whole config, for annotations only: authz.config imports this package's section
    from authz.config import Config

CODE_MEMORY_SECONDS = 3600  # how long a redeemed code is remembered, to catch a replay


async def token(request: web.Request, now: InForce) -> web.Response:
    return await _json_endpoint(request, now, "token", _token)


async def _json_endpoint(request: web.Request, now: InForce, endpoint: str,
                         handler: Callable[..., Awaitable[web.Response]]) -> web.Response:
    config, cfg, parts, state, keys = now
    client_id = None
    try:
        form = single_values(await read_form(request))
        client_id = form.get("client_id")
        return await handler(request, form, config, cfg, parts, state, keys)
    except OAuthError as exc:
        state.record(config, "refused", error=exc.error, endpoint=endpoint,
                      client_id=(client_id or "")[:200] or None, reason=exc.description)
        return answers.json_error(exc)


async def _authenticated_client(request: web.Request, form: dict[str, str], cfg: SigninConfig,
                                parts: Parts, state: SigninState) -> dict[str, Any]:
    """RFC 6749 §2.3: a public client names itself; a confidential one proves its secret (by
    HTTP Basic or in the form, one way only)."""
    basic_id, basic_secret = basic_credentials(request)
    client_id = basic_id or form.get("client_id", "")
    if basic_id and form.get("client_id") not in (None, basic_id):
        raise InvalidRequest("client_id differs between the Authorization header and the form")
    if basic_id and "client_secret" in form:
        raise InvalidRequest("use one client authentication method")
    try:
        client = await find_client(client_id, cfg, parts, state)
    except InvalidClient:
        raise InvalidClient("unknown client", headers={"www-authenticate": 'Basic realm="oauth"'}) from None
    method = client["token_endpoint_auth_method"]
    secret = basic_secret if basic_id else form.get("client_secret")
    if method == "none":
        if secret:
            raise InvalidClient("this client is public and has no secret")
        return client
    if method == "client_secret_basic" and not basic_id and secret is not None:
        raise InvalidClient("this client authenticates with HTTP Basic")
    if method == "client_secret_post" and basic_id:
        raise InvalidClient("this client authenticates with client_secret in the form")
    if not secret or not hmac.compare_digest(digest(secret), client.get("client_secret_sha256", "")):
        raise InvalidClient("client authentication failed", headers={"www-authenticate": 'Basic realm="oauth"'})
    return client


async def _token(request: web.Request, form: dict[str, str], config: Config, cfg: SigninConfig,
                 parts: Parts, state: SigninState, keys: KeyRing) -> web.Response:
    client = await _authenticated_client(request, form, cfg, parts, state)
    grant_type = form.get("grant_type")
    if grant_type not in ("authorization_code", "refresh_token"):
        raise UnsupportedGrantType("grant_type must be authorization_code or refresh_token")
    if grant_type not in client["grant_types"]:
        raise UnauthorizedClient(f"this client did not register the {grant_type} grant")
    if grant_type == "authorization_code":
        return await _code_grant(form, client, config, cfg, state, keys)
    return await _refresh_grant(form, client, config, cfg, state, keys)


async def _code_grant(form: dict[str, str], client: dict[str, Any], config: Config, cfg: SigninConfig,
                      state: SigninState, keys: KeyRing) -> web.Response:
    code, verifier = form.get("code"), form.get("code_verifier")
    if not code:
        raise InvalidRequest("code is required")
    if not verifier:
        raise InvalidRequest("code_verifier is required (PKCE)")
    grant = await state.take_code(code)
    if grant is None:
        await _revoke_what_a_replayed_code_gave(code, config, state)
        raise InvalidGrant("the code is invalid, expired or was already used")
    if grant["client_id"] != client["client_id"]:
        raise InvalidGrant("the code was issued to another client")
    if form.get("redirect_uri") != grant["redirect_uri"]:
        raise InvalidGrant("redirect_uri differs from the authorization request's")
    if not verifier_matches(verifier, grant["challenge"]):
        raise InvalidGrant("code_verifier does not match the code_challenge")
    if form.get("resource") not in (None, grant["resource"]):
        raise InvalidTarget("resource differs from the one authorized")
    family = None
    if _issues_refresh(cfg, client, grant["scopes"]):
        family = {"id": await state.new_family(cfg.refresh_token_seconds),
                  "expires": int(state.clock()) + cfg.refresh_token_seconds}
    body = await _tokens(grant, client, family, cfg, state, keys)
    await state.remember_code_use(code, {"family": family["id"] if family else None, "client_id": client["client_id"],
                                         "subject": grant["user"]["sub"]}, CODE_MEMORY_SECONDS)
    state.record(config, "token_issued", endpoint="token", client_id=client["client_id"],
                  subject=grant["user"]["sub"], grant_type="authorization_code", scopes=grant["scopes"],
                  resource=grant["resource"])
    return answers.token_response(body)


async def _revoke_what_a_replayed_code_gave(code: str, config: Config, state: SigninState) -> None:
    """RFC 6749 §4.1.2: a code used twice revokes what it was exchanged for (its refresh-token
    family; the short-lived access token cannot be called back). Someone else had the code."""
    use = await state.code_use(code)
    if use is not None and use["family"] and await state.revoke_family(use["family"]):
        state.record(config, "code_reused", error="invalid_grant", endpoint="token", client_id=use["client_id"],
                      subject=use["subject"])


async def _refresh_grant(form: dict[str, str], client: dict[str, Any], config: Config, cfg: SigninConfig,
                         state: SigninState, keys: KeyRing) -> web.Response:
    token = form.get("refresh_token")
    if not token:
        raise InvalidRequest("refresh_token is required")
    grant = await state.refresh(token)
    if grant is None or grant["client_id"] != client["client_id"]:
        raise InvalidGrant("the refresh token is invalid or expired")
    family = grant["family"]
    if not await state.family_alive(family["id"]):
        raise InvalidGrant("the refresh token was revoked")
    scopes = grant["scopes"]
    if "scope" in form:
        asked = scope_list(form["scope"])
        if not set(asked) <= set(scopes):
            raise InvalidScope("a refresh cannot add scopes")
        scopes = asked
    if form.get("resource") not in (None, grant["resource"]):
        raise InvalidTarget("resource differs from the one authorized")
    # Checked last, so that a refused request does not spend the token.
    if not await state.mark_refresh_used(token, family["expires"] - state.clock()):
        await state.revoke_family(family["id"])
        state.record(config, "refresh_reused", error="invalid_grant", endpoint="token",
                      client_id=client["client_id"], subject=grant["user"]["sub"])
        raise InvalidGrant("the refresh token was already used: every token of this sign-in is revoked")
    body = await _tokens({**grant, "scopes": scopes}, client, family, cfg, state, keys)
    state.record(config, "refreshed", endpoint="token", client_id=client["client_id"],
                  subject=grant["user"]["sub"], scopes=scopes)
    return answers.token_response(body)


async def _tokens(grant: dict[str, Any], client: dict[str, Any], family: dict[str, Any] | None,
                  cfg: SigninConfig, state: SigninState, keys: KeyRing) -> dict[str, Any]:
    access = mint_access_token(active_key(keys), issuer=cfg.issuer, user=grant["user"], client_id=client["client_id"],
                               resource=grant["resource"], scopes=grant["scopes"],
                               lifetime=cfg.access_token_seconds)
    body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                            "expires_in": cfg.access_token_seconds, "scope": " ".join(grant["scopes"])}
    if family is not None:
        refresh = new_secret("rt_")
        await state.save_refresh(refresh, {
            "client_id": client["client_id"], "user": grant["user"], "scopes": grant["scopes"],
            "resource": grant["resource"], "family": family}, max(family["expires"] - state.clock(), 1))
        body["refresh_token"] = refresh
    return body


async def revoke(request: web.Request, now: InForce) -> web.Response:
    return await _json_endpoint(request, now, "revoke", _revoke)


async def _revoke(request: web.Request, form: dict[str, str], config: Config, cfg: SigninConfig,
                  parts: Parts, state: SigninState, _keys: KeyRing) -> web.Response:
    client = await _authenticated_client(request, form, cfg, parts, state)
    token = form.get("token")
    if not token:
        raise InvalidRequest("token is required")
    grant = await state.refresh(token)
    # A token that is unknown, another client's, or an access token (short-lived JWTs, not
    # kept) is answered 200 as well (RFC 7009 §2.2): the answer says nothing about tokens.
    if grant is not None and grant["client_id"] == client["client_id"]:
        await state.revoke_family(grant["family"]["id"])
        state.record(config, "revoked", endpoint="revoke", client_id=client["client_id"],
                      subject=grant["user"]["sub"])
    return web.Response(status=200, headers={"cache-control": "no-store"})


def _issues_refresh(cfg: SigninConfig, client: dict[str, Any], scopes: list[str]) -> bool:
    if cfg.refresh_tokens == "never" or "refresh_token" not in client["grant_types"]:
        return False
    return cfg.refresh_tokens == "always" or OFFLINE in scopes
