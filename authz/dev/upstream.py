"""The dev issuer playing the company's identity provider for ``signin:`` (``make run``).

One pre-registered client (the sidecar: ``DEMO_CLIENT_ID`` / ``DEMO_CLIENT_SECRET``, redirect URI
``$AUTHZ_SIGNIN_CALLBACK``, default ``http://localhost:10000/oauth/callback``), no dynamic
registration, authorization code + PKCE, ID tokens signed with the dev issuer's key. Signing in
is choosing a demo user on a page (no passwords: it is a dev tool). For local use only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from html import escape
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

DEMO_CLIENT_ID = "authz-sidecar"
DEMO_CLIENT_SECRET = "dev-only-upstream-secret"
DEMO_USERS: dict[str, dict[str, Any]] = {
    "oscar": {"roles": ["accounting"], "name": "Oscar (accounting)"},
    "dana": {"roles": ["doctor"], "name": "Dana (doctor)"},
    "vera": {"roles": ["vp"], "name": "Vera (VP)"},
}
CODE_SECONDS = 60

STATE = web.AppKey("upstream_codes", dict)
KEY = web.AppKey("upstream_key", rsa.RSAPrivateKey)
KID = web.AppKey("upstream_kid", str)
ISSUER = web.AppKey("upstream_issuer", str)


def callback_uri() -> str:
    return os.environ.get("AUTHZ_SIGNIN_CALLBACK", "http://localhost:10000/oauth/callback")


def _error(description: str, status: int = 400) -> web.Response:
    return web.json_response({"error": "invalid_request", "error_description": description}, status=status)


async def authorize(request: web.Request) -> web.Response:
    q = request.query
    if q.get("client_id") != DEMO_CLIENT_ID or q.get("redirect_uri") != callback_uri():
        return _error("unknown client or redirect_uri (this dev provider knows only the sidecar)")
    if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
        return _error("authorization code with PKCE S256 only")
    hidden = "".join(f"<input type=hidden name={escape(k)} value='{escape(q.get(k, ''))}'>"
                     for k in ("state", "nonce", "code_challenge"))
    buttons = "".join(f"<button type=submit name=user value={escape(u)}>{escape(info['name'])}</button> "
                      for u, info in DEMO_USERS.items())
    html = ("<!doctype html><meta name=viewport content='width=device-width'><title>Dev sign-in</title>"
            "<h1>Company sign-in (dev)</h1><p>Sign in as:</p>"
            f"<form method=post action=/authorize>{hidden}{buttons}</form>")
    return web.Response(text=html, content_type="text/html")


async def sign_in(request: web.Request) -> web.Response:
    form = await request.post()
    user = str(form.get("user", ""))
    if user not in DEMO_USERS:
        return _error("pick one of the demo users")
    code = secrets.token_urlsafe(24)
    request.app[STATE][code] = {"user": user, "nonce": str(form.get("nonce", "")),
                                "challenge": str(form.get("code_challenge", "")), "expires": time.time() + CODE_SECONDS}
    query = urlencode({"code": code, "state": str(form.get("state", "")), "iss": request.app[ISSUER]})
    raise web.HTTPFound(f"{callback_uri()}?{query}")


async def token(request: web.Request) -> web.Response:
    form = await request.post()
    if form.get("grant_type") != "authorization_code":
        return web.json_response({"error": "unsupported_grant_type", "error_description":
                                  "dev issuer: mint tokens with `authz dev-token --sub NAME`"}, status=400)
    if form.get("client_id") != DEMO_CLIENT_ID or not hmac.compare_digest(str(form.get("client_secret", "")),
                                                                           DEMO_CLIENT_SECRET):
        return web.json_response({"error": "invalid_client"}, status=401)
    grant = request.app[STATE].pop(str(form.get("code", "")), None)
    verifier = str(form.get("code_verifier", ""))
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    if (grant is None or grant["expires"] < time.time() or form.get("redirect_uri") != callback_uri()
            or not hmac.compare_digest(challenge, grant["challenge"])):
        return web.json_response({"error": "invalid_grant"}, status=400)
    now, user = int(time.time()), grant["user"]
    claims = {"iss": request.app[ISSUER], "sub": user, "aud": DEMO_CLIENT_ID, "iat": now, "exp": now + 300,
              "nonce": grant["nonce"], "email": f"{user}@example.com", "name": DEMO_USERS[user]["name"],
              "roles": DEMO_USERS[user]["roles"]}
    id_token = jwt.encode(claims, request.app[KEY], algorithm="RS256", headers={"kid": request.app[KID]})
    return web.json_response({"id_token": id_token, "access_token": secrets.token_urlsafe(24),
                              "token_type": "Bearer", "expires_in": 300}, headers={"cache-control": "no-store"})


def install(app: web.Application, *, issuer: str, key: rsa.RSAPrivateKey, kid: str) -> None:
    app[STATE] = {}
    app[KEY] = key
    app[KID] = kid
    app[ISSUER] = issuer
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/authorize", sign_in)
    app.router.add_post("/token", token)
