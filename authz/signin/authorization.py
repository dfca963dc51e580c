"""The authorization endpoint, the way back from the upstream, and the consent page's answer.

Errors before the client and its redirect URI are verified become an error page (no redirect);
after that, a redirect back to the client with ``error``, ``state`` and ``iss`` (RFC 9207).
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from authz.signin import answers
from authz.signin.clients import redirect_uri_matches
from authz.signin.config import SigninConfig
from authz.signin.context import InForce, Parts, find_client
from authz.signin.errors import (
    AccessDenied,
    InvalidClient,
    InvalidRequest,
    NotRedirectable,
    OAuthError,
    TooManyRequests,
    Unavailable,
    UnsupportedResponseType,
)
from authz.signin.pages import consent_headers, consent_page
from authz.signin.params import peer_address, requested_resource, requested_scopes, single_values
from authz.signin.pkce import valid_challenge
from authz.signin.state import SigninState, digest, new_secret

if TYPE_CHECKING:  # the whole config, for annotations only: authz.config imports this package's section
    from authz.config import Config

CONSENT_COOKIE = "authz_signin_consent"


def callback_url(cfg: SigninConfig) -> str:
    return f"{cfg.issuer}/oauth/callback"


async def authorize(request: web.Request, now: InForce) -> web.StreamResponse:
    config, cfg, parts, state, _ = now
    try:
        query = single_values(request.query)
    except InvalidRequest as exc:
        return answers.error_page(exc)
    client_id = query.get("client_id", "")
    try:
        if await state.count_authorize(peer_address(request)) > cfg.authorize_per_address_per_minute:
            raise NotRedirectable(TooManyRequests("too many sign-in attempts; try again in a minute",
                                                  headers={"retry-after": "60"}))
        client, redirect_uri = await _verified_client(query, cfg, parts, state)
    except Unavailable as exc:
        return answers.error_page(exc)
    except NotRedirectable as exc:
        state.record(config, "refused", error=exc.error.error, endpoint="authorize",
                      client_id=client_id[:200] or None, reason=exc.error.description)
        return answers.error_page(exc.error)
    try:
        return await _start_sign_in(query, client, redirect_uri, config, cfg, parts, state)
    except OAuthError as exc:
        state.record(config, "refused", error=exc.error, endpoint="authorize", client_id=client_id,
                      reason=exc.description)
        return answers.redirect_error(redirect_uri, exc, state=query.get("state"), issuer=cfg.issuer)


async def _verified_client(query: dict[str, str], cfg: SigninConfig, parts: Parts,
                           state: SigninState) -> tuple[dict[str, Any], str]:
    """The client and the redirect URI it registered; errors here never redirect."""
    try:
        client = await find_client(query.get("client_id", ""), cfg, parts, state)
    except (InvalidClient, Unavailable) as exc:
        raise NotRedirectable(exc) from None
    registered = client["redirect_uris"]
    redirect_uri = query.get("redirect_uri")
    if redirect_uri is None:
        if len(registered) != 1:
            raise NotRedirectable(InvalidRequest("redirect_uri is required"))
        redirect_uri = registered[0]
    if not redirect_uri_matches(redirect_uri, registered):
        raise NotRedirectable(InvalidRequest("redirect_uri is not registered for this client"))
    return client, redirect_uri


async def _start_sign_in(query: dict[str, str], client: dict[str, Any], redirect_uri: str,
                         config: Config, cfg: SigninConfig, parts: Parts, state: SigninState
                         ) -> web.StreamResponse:
    if query.get("response_type") != "code":
        raise UnsupportedResponseType("response_type must be code")
    challenge = query.get("code_challenge")
    method = query.get("code_challenge_method")
    if not challenge:
        raise InvalidRequest("code_challenge is required (PKCE)")
    if method != "S256":
        raise InvalidRequest("code_challenge_method must be S256 (plain is not supported)")
    if not valid_challenge(challenge):
        raise InvalidRequest("code_challenge is not a base64url SHA-256")
    resource = requested_resource(query.get("resource"), cfg, config)
    scopes = requested_scopes(query.get("scope"), cfg, client)
    login_state, nonce, verifier = new_secret(), new_secret(), new_secret()
    await state.save_login(login_state, {
        "client_id": client["client_id"], "client_name": client.get("client_name") or client["client_id"],
        "redirect_uri": redirect_uri, "state": query.get("state"), "challenge": challenge,
        "resource": resource, "scopes": scopes, "prompt": query.get("prompt", ""),
        "nonce": nonce, "verifier": verifier}, cfg.login_seconds)
    url = await parts.upstream.authorization_url(state=login_state, nonce=nonce, verifier=verifier,
                                                 redirect_uri=callback_url(cfg))
    raise web.HTTPFound(url, headers={"cache-control": "no-store"})

# --- back from the upstream -----------------------------------------------------------------

async def callback(request: web.Request, now: InForce) -> web.StreamResponse:
    config, cfg, parts, state, _ = now
    try:
        query = single_values(request.query)
        login = await state.take_login(query.get("state", "")) if query.get("state") else None
    except OAuthError as exc:
        return answers.error_page(exc)
    if login is None:
        return answers.error_page(InvalidRequest("this sign-in has expired or was already completed; "
                                                 "start again from the application"))
    try:
        if "error" in query or "code" not in query:
            raise AccessDenied("the sign-in provider did not sign you in")
        claims = await parts.upstream.sign_in(code=query["code"], verifier=login["verifier"],
                                              nonce=login["nonce"], redirect_uri=callback_url(cfg))
        user = parts.upstream.user(claims)
        consented = await state.consented_scopes(user["sub"], login["client_id"])
        if consented is not None and set(login["scopes"]) <= consented and login["prompt"] != "consent":
            return await _grant(login, user, consented, config, cfg, state)
        return await _ask_consent(login, user, cfg, state)
    except OAuthError as exc:
        state.record(config, "refused", error=exc.error, endpoint="callback", client_id=login["client_id"],
                      reason=exc.description)
        return answers.redirect_error(login["redirect_uri"], exc, state=login["state"], issuer=cfg.issuer)


async def _ask_consent(login: dict[str, Any], user: dict[str, Any], cfg: SigninConfig,
                       state: SigninState) -> web.StreamResponse:
    form_id, csrf, binding = new_secret(), new_secret(), new_secret()
    await state.save_consent_form(form_id, {"login": login, "user": user, "csrf": csrf,
                                            "binding": digest(binding)}, cfg.login_seconds)
    html = consent_page(
        client_name=login["client_name"], client_id=login["client_id"],
        redirect_host=urlsplit(login["redirect_uri"]).netloc or login["redirect_uri"],
        user=user.get("email") or user["sub"], resource=login["resource"], form_id=form_id, csrf=csrf,
        scopes=[(s, cfg.scope_descriptions.get(s, "")) for s in login["scopes"]],
        action=f"{cfg.issuer}/oauth/consent")
    response = answers.page(html, headers=consent_headers(login["redirect_uri"]))
    response.set_cookie(CONSENT_COOKIE, binding, max_age=cfg.login_seconds, path="/oauth/",
                        httponly=True, samesite="Strict", secure=cfg.issuer.startswith("https://"))
    return response


async def consent(request: web.Request, now: InForce) -> web.StreamResponse:
    config, cfg, _, state, _ = now
    try:
        form = single_values(await request.post())
        return await _answer_consent(request, form, config, cfg, state)
    except OAuthError as exc:  # before the form is verified: nowhere to send the browser back to
        return answers.error_page(exc)


async def _answer_consent(request: web.Request, form: dict[str, str], config: Config, cfg: SigninConfig,
                          state: SigninState) -> web.StreamResponse:
    pending = await state.consent_form(form.get("form", "")) if form.get("form") else None
    binding = request.cookies.get(CONSENT_COOKIE, "")
    if (pending is None or not hmac.compare_digest(form.get("csrf", ""), pending["csrf"])
            or not hmac.compare_digest(digest(binding), pending["binding"])):
        state.record(config, "refused", error="invalid_request", endpoint="consent",
                      reason="consent form unknown, expired, or not from this browser")
        return answers.error_page(InvalidRequest("this consent form has expired, was already answered, or was "
                                                 "not opened in this browser"), status=403)
    if await state.take_consent_form(form["form"]) is None:
        return answers.error_page(InvalidRequest("this consent form was already answered"))
    login, user = pending["login"], pending["user"]
    if form.get("decision") != "allow":
        denied = AccessDenied("the user did not allow access")
        state.record(config, "refused", error=denied.error, endpoint="consent", client_id=login["client_id"],
                      subject=user["sub"], reason="user denied consent")
        response: web.StreamResponse = answers.redirect_error(login["redirect_uri"], denied, state=login["state"],
                                                              issuer=cfg.issuer)
    else:
        try:
            scopes = await state.save_consent(user["sub"], login["client_id"], set(login["scopes"]))
            state.record(config, "consented", endpoint="consent", client_id=login["client_id"],
                          subject=user["sub"], scopes=sorted(scopes))
            response = await _grant(login, user, scopes, config, cfg, state)
        except OAuthError as exc:
            response = answers.redirect_error(login["redirect_uri"], exc, state=login["state"], issuer=cfg.issuer)
    response.del_cookie(CONSENT_COOKIE, path="/oauth/")
    return response


async def _grant(login: dict[str, Any], user: dict[str, Any], consented: set[str], config: Config,
                 cfg: SigninConfig, state: SigninState) -> web.StreamResponse:
    """A code for the client: the scopes asked for plus those the user granted it before
    (step-up keeps what the client had)."""
    code = new_secret()
    scopes = sorted(set(login["scopes"]) | consented)
    await state.save_code(code, {
        "client_id": login["client_id"], "redirect_uri": login["redirect_uri"],
        "challenge": login["challenge"], "resource": login["resource"], "scopes": scopes,
        "user": user}, cfg.code_seconds)
    state.record(config, "code_issued", endpoint="authorize", client_id=login["client_id"],
                  subject=user["sub"], scopes=scopes)
    return answers.redirect(login["redirect_uri"], {"code": code, "state": login["state"], "iss": cfg.issuer})
