"""The authorization server's endpoints on the sidecar's HTTP port (Envoy routes them there).

``/.well-known/oauth-authorization-server`` (RFC 8414), ``/oauth/authorize``, ``/oauth/callback``
(back from the upstream), ``/oauth/consent`` (the consent form's answer), ``/oauth/token``,
``/oauth/register`` (RFC 7591), ``/oauth/revoke`` (RFC 7009) and ``/oauth/jwks.json``.

Each handler reads the config in force and the store once, does its checks in the order the RFCs
give, and lets typed errors (``authz.signin.errors``) out; ``answers.py`` turns them into the
OAuth answer of that endpoint: JSON at the token, registration and revocation endpoints, a
redirect back to the client with ``error``, ``state`` and ``iss`` at the authorization
endpoint once the client and its redirect URI are verified, and an error page before that.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp import web

from authz.config import Config
from authz.signin import answers, events
from authz.signin.cimd import MetadataDocuments
from authz.signin.clients import (
    client_from_metadata,
    is_metadata_document_id,
    parse_metadata_body,
    redirect_uri_matches,
)
from authz.signin.config import SigninConfig, check_scope_token
from authz.signin.errors import (
    AccessDenied,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    NotRedirectable,
    OAuthError,
    ServerError,
    TooManyRequests,
    UnauthorizedClient,
    Unavailable,
    UnsupportedGrantType,
    UnsupportedResponseType,
)
from authz.signin.keys import SIGNIN_KEYRING, active_key, resources
from authz.signin.pages import consent_headers, consent_page
from authz.signin.state import SigninState, digest, new_secret
from authz.signin.tokens import mint_access_token, valid_challenge, verifier_matches
from authz.signin.upstream import Upstream
from authz.store.base import Store

log = logging.getLogger("authz.signin")

CONSENT_COOKIE = "authz_signin_consent"
OFFLINE = "offline_access"
# Browser-based MCP clients call these from their own origin (no cookies are involved, so any
# origin may); the pages and the authorization endpoint are navigations, not fetches.
CORS_PATHS = ("/.well-known/oauth-authorization-server", "/oauth/token", "/oauth/register", "/oauth/revoke",
              "/oauth/jwks.json")
CORS_HEADERS = {"access-control-allow-origin": "*", "access-control-allow-methods": "GET, POST, OPTIONS",
                "access-control-allow-headers": "authorization, content-type, mcp-protocol-version",
                "access-control-max-age": "86400"}


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=CORS_HEADERS)


async def cross_origin(request: web.Request, response: web.StreamResponse) -> None:
    if request.path in CORS_PATHS:
        response.headers["access-control-allow-origin"] = "*"


def guarded(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], *, page: bool
            ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A bug in a handler still answers in the endpoint's protocol (``server_error``, RFC 6749
    §4.1.2.1 / §5.2), as a page or as JSON, and is logged; it is never a bare 500."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("sign-in endpoint %s failed", request.path)
            error = ServerError("the authorization server failed; try again")
            return answers.error_page(error) if page else answers.json_error(error)

    return run


class Parts:
    """What one ``signin`` config builds: the upstream client and the metadata-document fetcher
    (each with its connections and caches), rebuilt when the section changes."""

    def __init__(self, cfg: SigninConfig) -> None:
        assert cfg.upstream is not None
        self.cfg = cfg
        self.session = aiohttp.ClientSession(trust_env=False)
        self.upstream = Upstream(cfg.upstream, session=self.session)
        self.documents = MetadataDocuments(cfg.client_metadata_documents, cfg.registration)

    async def close(self) -> None:
        await self.session.close()
        await self.documents.close()


class SigninServer:
    def __init__(self, current: Callable[[], tuple[Config, Store]], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._current = current
        self._clock = clock
        self._parts: Parts | None = None

    def _in_force(self) -> tuple[Config, SigninConfig, Parts, SigninState]:
        config, store = self._current()
        cfg = config.signin
        if not cfg.enabled:
            raise web.HTTPNotFound(text=json.dumps({"error": "not_found", "error_description":
                                                    "the authorization server is not enabled (signin.enabled)"}),
                                   content_type="application/json")
        if self._parts is None or self._parts.cfg != cfg:
            old, self._parts = self._parts, Parts(cfg)
            if old is not None:
                # In-flight requests may still hold it; its sessions close after they are done.
                asyncio.get_running_loop().call_later(30, lambda: asyncio.ensure_future(old.close()))
        return config, cfg, self._parts, SigninState(store, clock=self._clock)

    async def close(self) -> None:
        if self._parts is not None:
            await self._parts.close()

    def install(self, app: web.Application) -> None:
        app.router.add_get("/.well-known/oauth-authorization-server", guarded(self.metadata, page=False))
        app.router.add_get("/oauth/authorize", guarded(self.authorize, page=True))
        app.router.add_get("/oauth/callback", guarded(self.callback, page=True))
        app.router.add_post("/oauth/consent", guarded(self.consent, page=True))
        app.router.add_post("/oauth/token", guarded(self.token, page=False))
        app.router.add_post("/oauth/register", guarded(self.register, page=False))
        app.router.add_post("/oauth/revoke", guarded(self.revoke, page=False))
        app.router.add_get("/oauth/jwks.json", guarded(self.jwks, page=False))
        for path in CORS_PATHS:
            app.router.add_route("OPTIONS", path, preflight)
        app.on_response_prepare.append(cross_origin)
        app.on_cleanup.append(lambda _app: self.close())

    # --- discovery ----------------------------------------------------------------------------

    async def metadata(self, request: web.Request) -> web.Response:
        _, cfg, _, _ = self._in_force()
        return web.json_response(authorization_server_metadata(cfg),
                                 headers={"cache-control": "public, max-age=300"})

    async def jwks(self, request: web.Request) -> web.Response:
        self._in_force()
        return web.json_response(SIGNIN_KEYRING.jwks(), headers={"cache-control": "public, max-age=60"})

    # --- clients -------------------------------------------------------------------------------

    async def _client(self, client_id: str, cfg: SigninConfig, parts: Parts, state: SigninState
                      ) -> dict[str, Any]:
        if not client_id or len(client_id) > 2000:
            raise InvalidClient("client_id is missing")
        if is_metadata_document_id(client_id):
            return await parts.documents.client(client_id, scopes_supported=cfg.scopes_supported)
        client = await state.client(client_id)
        if client is None:
            raise InvalidClient("unknown client")
        return client

    # --- the authorization endpoint -------------------------------------------------------------

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        config, cfg, parts, state = self._in_force()
        try:
            query = _single_values(request.query)
        except InvalidRequest as exc:
            return answers.error_page(exc)
        client_id = query.get("client_id", "")
        try:
            if await state.count_authorize(peer_address(request)) > cfg.authorize_per_address_per_minute:
                raise NotRedirectable(TooManyRequests("too many sign-in attempts; try again in a minute",
                                                      headers={"retry-after": "60"}))
            client, redirect_uri = await self._verified_client(query, cfg, parts, state)
        except Unavailable as exc:
            return answers.error_page(exc)
        except NotRedirectable as exc:
            events.record(config, "refused", error=exc.error.error, endpoint="authorize",
                          client_id=client_id[:200] or None, reason=exc.error.description)
            return answers.error_page(exc.error)
        try:
            return await self._start_sign_in(query, client, redirect_uri, config, cfg, parts, state)
        except OAuthError as exc:
            events.record(config, "refused", error=exc.error, endpoint="authorize", client_id=client_id,
                          reason=exc.description)
            return answers.redirect_error(redirect_uri, exc, state=query.get("state"), issuer=cfg.issuer)

    async def _verified_client(self, query: dict[str, str], cfg: SigninConfig, parts: Parts,
                               state: SigninState) -> tuple[dict[str, Any], str]:
        """The client and the redirect URI it registered; errors here never redirect."""
        try:
            client = await self._client(query.get("client_id", ""), cfg, parts, state)
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

    async def _start_sign_in(self, query: dict[str, str], client: dict[str, Any], redirect_uri: str,
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
        resource = _resource(query.get("resource"), cfg, config)
        scopes = _scopes(query.get("scope"), cfg, client)
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

    async def callback(self, request: web.Request) -> web.StreamResponse:
        config, cfg, parts, state = self._in_force()
        try:
            query = _single_values(request.query)
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
                return await self._grant(login, user, consented, config, cfg, state)
            return await self._ask_consent(login, user, cfg, state)
        except OAuthError as exc:
            events.record(config, "refused", error=exc.error, endpoint="callback", client_id=login["client_id"],
                          reason=exc.description)
            return answers.redirect_error(login["redirect_uri"], exc, state=login["state"], issuer=cfg.issuer)

    async def _ask_consent(self, login: dict[str, Any], user: dict[str, Any], cfg: SigninConfig,
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

    async def consent(self, request: web.Request) -> web.StreamResponse:
        config, cfg, _, state = self._in_force()
        try:
            form = _single_values(await request.post())
            return await self._answer_consent(request, form, config, cfg, state)
        except OAuthError as exc:  # before the form is verified: nowhere to send the browser back to
            return answers.error_page(exc)

    async def _answer_consent(self, request: web.Request, form: dict[str, str], config: Config, cfg: SigninConfig,
                              state: SigninState) -> web.StreamResponse:
        pending = await state.consent_form(form.get("form", "")) if form.get("form") else None
        binding = request.cookies.get(CONSENT_COOKIE, "")
        if (pending is None or not hmac.compare_digest(form.get("csrf", ""), pending["csrf"])
                or not hmac.compare_digest(digest(binding), pending["binding"])):
            events.record(config, "refused", error="invalid_request", endpoint="consent",
                          reason="consent form unknown, expired, or not from this browser")
            return answers.error_page(InvalidRequest("this consent form has expired, was already answered, or was "
                                                     "not opened in this browser"), status=403)
        if await state.take_consent_form(form["form"]) is None:
            return answers.error_page(InvalidRequest("this consent form was already answered"))
        login, user = pending["login"], pending["user"]
        if form.get("decision") != "allow":
            denied = AccessDenied("the user did not allow access")
            events.record(config, "refused", error=denied.error, endpoint="consent", client_id=login["client_id"],
                          subject=user["sub"], reason="user denied consent")
            response: web.StreamResponse = answers.redirect_error(login["redirect_uri"], denied, state=login["state"],
                                                                  issuer=cfg.issuer)
        else:
            try:
                scopes = await state.save_consent(user["sub"], login["client_id"], set(login["scopes"]))
                events.record(config, "consented", endpoint="consent", client_id=login["client_id"],
                              subject=user["sub"], scopes=sorted(scopes))
                response = await self._grant(login, user, scopes, config, cfg, state)
            except OAuthError as exc:
                response = answers.redirect_error(login["redirect_uri"], exc, state=login["state"], issuer=cfg.issuer)
        response.del_cookie(CONSENT_COOKIE, path="/oauth/")
        return response

    async def _grant(self, login: dict[str, Any], user: dict[str, Any], consented: set[str], config: Config,
                     cfg: SigninConfig, state: SigninState) -> web.StreamResponse:
        """A code for the client: the scopes asked for plus those the user granted it before
        (step-up keeps what the client had)."""
        code = new_secret()
        scopes = sorted(set(login["scopes"]) | consented)
        await state.save_code(code, {
            "client_id": login["client_id"], "redirect_uri": login["redirect_uri"],
            "challenge": login["challenge"], "resource": login["resource"], "scopes": scopes,
            "user": user}, cfg.code_seconds)
        events.record(config, "code_issued", endpoint="authorize", client_id=login["client_id"],
                      subject=user["sub"], scopes=scopes)
        return answers.redirect(login["redirect_uri"], {"code": code, "state": login["state"], "iss": cfg.issuer})

    # --- the token endpoint ---------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        return await self._json_endpoint(request, "token", self._token)

    async def _json_endpoint(self, request: web.Request, endpoint: str,
                             handler: Callable[..., Awaitable[web.Response]]) -> web.Response:
        config, cfg, parts, state = self._in_force()
        client_id = None
        try:
            form = _single_values(await _form(request))
            client_id = form.get("client_id")
            return await handler(request, form, config, cfg, parts, state)
        except OAuthError as exc:
            events.record(config, "refused", error=exc.error, endpoint=endpoint,
                          client_id=(client_id or "")[:200] or None, reason=exc.description)
            return answers.json_error(exc)

    async def _authenticated_client(self, request: web.Request, form: dict[str, str], cfg: SigninConfig,
                                    parts: Parts, state: SigninState) -> dict[str, Any]:
        """RFC 6749 §2.3: a public client names itself; a confidential one proves its secret (by
        HTTP Basic or in the form, one way only)."""
        basic_id, basic_secret = _basic_credentials(request)
        client_id = basic_id or form.get("client_id", "")
        if basic_id and form.get("client_id") not in (None, basic_id):
            raise InvalidRequest("client_id differs between the Authorization header and the form")
        if basic_id and "client_secret" in form:
            raise InvalidRequest("use one client authentication method")
        try:
            client = await self._client(client_id, cfg, parts, state)
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

    async def _token(self, request: web.Request, form: dict[str, str], config: Config, cfg: SigninConfig,
                     parts: Parts, state: SigninState) -> web.Response:
        client = await self._authenticated_client(request, form, cfg, parts, state)
        grant_type = form.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise UnsupportedGrantType("grant_type must be authorization_code or refresh_token")
        if grant_type not in client["grant_types"]:
            raise UnauthorizedClient(f"this client did not register the {grant_type} grant")
        if grant_type == "authorization_code":
            return await self._code_grant(form, client, config, cfg, state)
        return await self._refresh_grant(form, client, config, cfg, state)

    async def _code_grant(self, form: dict[str, str], client: dict[str, Any], config: Config, cfg: SigninConfig,
                          state: SigninState) -> web.Response:
        code, verifier = form.get("code"), form.get("code_verifier")
        if not code:
            raise InvalidRequest("code is required")
        if not verifier:
            raise InvalidRequest("code_verifier is required (PKCE)")
        grant = await state.take_code(code)
        if grant is None:
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
        body = await self._tokens(grant, client, family, cfg, state)
        events.record(config, "token_issued", endpoint="token", client_id=client["client_id"],
                      subject=grant["user"]["sub"], grant_type="authorization_code", scopes=grant["scopes"],
                      resource=grant["resource"])
        return answers.token_response(body)

    async def _refresh_grant(self, form: dict[str, str], client: dict[str, Any], config: Config, cfg: SigninConfig,
                             state: SigninState) -> web.Response:
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
            asked = _scope_list(form["scope"])
            if not set(asked) <= set(scopes):
                raise InvalidScope("a refresh cannot add scopes")
            scopes = asked
        if form.get("resource") not in (None, grant["resource"]):
            raise InvalidTarget("resource differs from the one authorized")
        # Checked last, so that a refused request does not spend the token.
        if not await state.mark_refresh_used(token, family["expires"] - state.clock()):
            await state.revoke_family(family["id"])
            events.record(config, "refresh_reused", error="invalid_grant", endpoint="token",
                          client_id=client["client_id"], subject=grant["user"]["sub"])
            raise InvalidGrant("the refresh token was already used: every token of this sign-in is revoked")
        body = await self._tokens({**grant, "scopes": scopes}, client, family, cfg, state)
        events.record(config, "refreshed", endpoint="token", client_id=client["client_id"],
                      subject=grant["user"]["sub"], scopes=scopes)
        return answers.token_response(body)

    async def _tokens(self, grant: dict[str, Any], client: dict[str, Any], family: dict[str, Any] | None,
                      cfg: SigninConfig, state: SigninState) -> dict[str, Any]:
        access = mint_access_token(active_key(), issuer=cfg.issuer, user=grant["user"], client_id=client["client_id"],
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

    # --- revocation (RFC 7009) ------------------------------------------------------------------

    async def revoke(self, request: web.Request) -> web.Response:
        return await self._json_endpoint(request, "revoke", self._revoke)

    async def _revoke(self, request: web.Request, form: dict[str, str], config: Config, cfg: SigninConfig,
                      parts: Parts, state: SigninState) -> web.Response:
        client = await self._authenticated_client(request, form, cfg, parts, state)
        token = form.get("token")
        if not token:
            raise InvalidRequest("token is required")
        grant = await state.refresh(token)
        # A token that is unknown, another client's, or an access token (short-lived JWTs, not
        # kept) is answered 200 as well (RFC 7009 §2.2): the answer says nothing about tokens.
        if grant is not None and grant["client_id"] == client["client_id"]:
            await state.revoke_family(grant["family"]["id"])
            events.record(config, "revoked", endpoint="revoke", client_id=client["client_id"],
                          subject=grant["user"]["sub"])
        return web.Response(status=200, headers={"cache-control": "no-store"})

    # --- dynamic client registration (RFC 7591) -------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        config, cfg, _, state = self._in_force()
        try:
            if not cfg.registration.enabled:
                raise InvalidRequest("dynamic client registration is not enabled here")
            per_address, total = await state.count_registration(peer_address(request))
            if per_address > cfg.registration.per_address_per_minute or total > cfg.registration.per_hour:
                raise TooManyRequests("too many registrations; try again later",
                                           headers={"retry-after": "60"})
            body = await request.content.read(cfg.registration.max_body_bytes + 1)
            meta = parse_metadata_body(body, cfg.registration.max_body_bytes)
            client_id = new_secret("c_")
            client = client_from_metadata(meta, cfg.registration, client_id=client_id,
                                          scopes_supported=cfg.scopes_supported)
            secret = None
            if client["token_endpoint_auth_method"] != "none":
                secret = new_secret("cs_")
                client["client_secret_sha256"] = digest(secret)
            await state.save_client(client, cfg.registration.client_lifetime_seconds)
        except OAuthError as exc:
            events.record(config, "refused", error=exc.error, endpoint="register", reason=exc.description)
            return answers.json_error(exc)
        events.record(config, "registered", endpoint="register", client_id=client_id,
                      application_type=client["application_type"])
        public = {k: v for k, v in client.items() if k != "client_secret_sha256"}
        if secret is not None:
            public |= {"client_secret": secret, "client_secret_expires_at": 0}
        return web.json_response(public, status=201, headers={"cache-control": "no-store"})


def authorization_server_metadata(cfg: SigninConfig) -> dict[str, Any]:
    base = cfg.issuer
    methods = ["none", "client_secret_post", "client_secret_basic"]
    doc: dict[str, Any] = {
        "issuer": base,
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "jwks_uri": f"{base}/oauth/jwks.json",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": cfg.client_metadata_documents.enabled,
    }
    if cfg.registration.enabled:
        doc["registration_endpoint"] = f"{base}/oauth/register"
    if cfg.scopes_supported:
        doc["scopes_supported"] = [*cfg.scopes_supported, OFFLINE]
    return doc


def callback_url(cfg: SigninConfig) -> str:
    return f"{cfg.issuer}/oauth/callback"


def peer_address(request: web.Request) -> str:
    """The client's address as Envoy saw it. Envoy (use_remote_address) appends the peer it
    accepted the connection from to x-forwarded-for, so its last entry is Envoy's own word; a
    request that did not come through a local Envoy is counted by its own peer."""
    remote = request.remote or ""
    forwarded = request.headers.getall("x-forwarded-for", [])
    if forwarded and remote in ("127.0.0.1", "::1"):
        return forwarded[-1].rsplit(",", 1)[-1].strip()[:64]
    return remote


MAX_PARAMETER_CHARS = 4096  # a state, a scope list, a URL: all fit; what is kept in the store stays small


def _single_values(params: Any) -> dict[str, str]:
    """Request parameters; one that appears twice is refused (RFC 6749 §3.1), and so is one
    longer than ``MAX_PARAMETER_CHARS``."""
    out: dict[str, str] = {}
    for key in params:
        values = params.getall(key)
        if len(values) > 1:
            raise InvalidRequest(f"{key[:64]} appears more than once")
        if not isinstance(values[0], str):
            raise InvalidRequest(f"{key[:64]} must be a plain value")
        if len(values[0]) > MAX_PARAMETER_CHARS or len(key) > 64:
            raise InvalidRequest(f"{key[:64]} is longer than {MAX_PARAMETER_CHARS} characters")
        out[key] = values[0]
    return out


async def _form(request: web.Request) -> Any:
    if request.content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("send the parameters as application/x-www-form-urlencoded")
    try:
        return await request.post()
    except (ValueError, web.HTTPException):
        raise InvalidRequest("the form could not be read") from None


def _basic_credentials(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return "", ""
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidClient("malformed HTTP Basic credentials") from None
    client_id, sep, secret = raw.partition(":")
    if not sep:
        raise InvalidClient("malformed HTTP Basic credentials")
    return unquote(client_id), unquote(secret)


def _resource(value: str | None, cfg: SigninConfig, config: Config) -> str:
    if not value:
        raise InvalidTarget("resource is required (RFC 8707): the URL of the MCP server")
    if value not in resources(cfg, config.identity):
        raise InvalidTarget("resource is not served by this authorization server")
    return value


def _scope_list(value: str) -> list[str]:
    try:
        return sorted({check_scope_token(s) for s in value.split()})
    except ValueError as exc:
        raise InvalidScope(str(exc)) from None


def _scopes(value: str | None, cfg: SigninConfig, client: dict[str, Any]) -> list[str]:
    asked = _scope_list(value or client.get("scope", ""))
    if cfg.scopes_supported:
        unknown = set(asked) - set(cfg.scopes_supported) - {OFFLINE}
        if unknown:
            raise InvalidScope(f"unknown scope {sorted(unknown)[0]!r}")
    return asked


def _issues_refresh(cfg: SigninConfig, client: dict[str, Any], scopes: list[str]) -> bool:
    if cfg.refresh_tokens == "never" or "refresh_token" not in client["grant_types"]:
        return False
    return cfg.refresh_tokens == "always" or OFFLINE in scopes

