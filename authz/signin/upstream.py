"""Signing the user in at the company's OIDC provider (or a plain OAuth 2.0 provider with a
userinfo endpoint, such as GitHub), with the client pre-registered there.

Authorization code + PKCE (S256) + nonce; the code is exchanged server to server, the ID token
verified (signature by the provider's published keys, ``iss``, ``aud`` = our client id,
``nonce``, ``exp``), optionally merged with the userinfo answer. The upstream's tokens are used
for this and dropped: they never reach the MCP client or the MCP server, and are not stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt

from authz.identity.claims import _MISSING, claim_path, resolve
from authz.signin.config import UpstreamConfig
from authz.signin.errors import AccessDenied, Unavailable
from authz.signin.pkce import s256

log = logging.getLogger("authz.signin.upstream")

DISCOVERY_TTL = 3600.0
MAX_DOCUMENT_BYTES = 512 * 1024
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """A claim by the identity stage's rules (dotted paths; a name containing dots found whole)."""
    value = resolve(claims, claim_path(path))
    return None if value is _MISSING else value


class Upstream:
    def __init__(self, cfg: UpstreamConfig, *, session: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.session = session
        self._discovery: tuple[dict[str, Any], float] | None = None
        self._jwks: tuple[jwt.PyJWKSet, float] | None = None
        self._lock = asyncio.Lock()

    async def _json(self, method: str, url: str, **kw: Any) -> tuple[int, Any]:
        try:
            async with asyncio.timeout(self.cfg.timeout_seconds):
                async with self.session.request(method, url, allow_redirects=False, **kw) as resp:
                    body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
                    status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unavailable(f"the sign-in provider is unreachable ({type(exc).__name__})") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise Unavailable("the sign-in provider's answer is too large")
        try:
            return status, json.loads(body)
        except ValueError:
            raise Unavailable(f"the sign-in provider answered {status} without JSON") from None

    async def discovery(self) -> dict[str, Any]:
        """The provider's endpoints: from OIDC discovery (cached an hour), or as configured for a
        plain OAuth 2.0 provider."""
        if self.cfg.kind == "oauth2":
            return {"authorization_endpoint": self.cfg.authorization_endpoint,
                    "token_endpoint": self.cfg.token_endpoint, "userinfo_endpoint": self.cfg.userinfo_endpoint}
        async with self._lock:
            if self._discovery is not None and self._discovery[1] > time.monotonic():
                return self._discovery[0]
            status, doc = await self._json("GET", self.cfg.effective_discovery_url)
            if status != 200 or not isinstance(doc, dict) or doc.get("issuer") != self.cfg.issuer:
                raise Unavailable("the sign-in provider's discovery document is unusable "
                                  "(status, or an issuer other than configured)")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(doc.get(name), str):
                    raise Unavailable(f"the sign-in provider's discovery document has no {name}")
            overrides = {k: getattr(self.cfg, k) for k in ("authorization_endpoint", "token_endpoint",
                                                            "userinfo_endpoint") if getattr(self.cfg, k)}
            doc = {**doc, **overrides}
            self._discovery = (doc, time.monotonic() + DISCOVERY_TTL)
            return doc

    async def authorization_url(self, *, state: str, nonce: str, verifier: str, redirect_uri: str) -> str:
        doc = await self.discovery()
        params = {"response_type": "code", "client_id": self.cfg.client_id, "redirect_uri": redirect_uri,
                  "scope": " ".join(self.cfg.scopes), "state": state,
                  "code_challenge": s256(verifier), "code_challenge_method": "S256"}
        if self.cfg.kind == "oidc":
            params["nonce"] = nonce
        sep = "&" if "?" in doc["authorization_endpoint"] else "?"
        return f"{doc['authorization_endpoint']}{sep}{urlencode(params)}"

    async def sign_in(self, *, code: str, verifier: str, nonce: str, redirect_uri: str) -> dict[str, Any]:
        """Exchange the upstream code; the verified claims of the signed-in user."""
        doc = await self.discovery()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier, "client_id": self.cfg.client_id}
        if self.cfg.client_secret:
            form["client_secret"] = self.cfg.client_secret
        status, tokens = await self._json("POST", doc["token_endpoint"], data=form,
                                          headers={"accept": "application/json"})
        if status != 200 or not isinstance(tokens, dict):
            error = tokens.get("error") if isinstance(tokens, dict) else None
            log.warning("upstream code exchange refused: %s %s", status, error)
            raise AccessDenied("the sign-in provider refused the sign-in")
        if self.cfg.kind == "oauth2":
            # No ID token to verify: the user is who the provider's API says the token belongs to.
            return await self._userinfo(doc["userinfo_endpoint"], tokens.get("access_token"), None)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise AccessDenied("the sign-in provider returned no ID token")
        claims = await self._verify_id_token(id_token, nonce)
        if self.cfg.userinfo and isinstance(doc.get("userinfo_endpoint"), str):
            claims = {**claims, **await self._userinfo(doc["userinfo_endpoint"], tokens.get("access_token"),
                                                       claims["sub"])}
        return claims

    async def _keys(self, *, refresh: bool = False) -> jwt.PyJWKSet:
        if self._jwks is not None and self._jwks[1] > time.monotonic() and not refresh:
            return self._jwks[0]
        doc = await self.discovery()
        status, jwks = await self._json("GET", doc["jwks_uri"])
        if status != 200 or not isinstance(jwks, dict):
            raise Unavailable("the sign-in provider's keys are unavailable")
        try:
            keyset = jwt.PyJWKSet.from_dict(jwks)
        except jwt.PyJWTError:
            raise Unavailable("the sign-in provider's keys are unusable") from None
        self._jwks = (keyset, time.monotonic() + 300)
        return keyset

    async def _verify_id_token(self, token: str, nonce: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise AccessDenied("the sign-in provider's ID token is malformed") from None
        keyset = await self._keys()
        key = next((k for k in keyset.keys if k.key_id == kid), None)
        if key is None:
            keyset = await self._keys(refresh=True)
            key = next((k for k in keyset.keys if k.key_id == kid), None)
        if key is None:
            raise AccessDenied("the ID token is signed with a key the sign-in provider does not publish")
        try:
            claims = jwt.decode(token, key=key, algorithms=ID_TOKEN_ALGORITHMS, audience=self.cfg.client_id,
                                issuer=self.cfg.issuer, leeway=30,
                                options={"require": ["iss", "aud", "exp", "sub"]})
        except jwt.PyJWTError as exc:
            raise AccessDenied(f"the sign-in provider's ID token is invalid ({type(exc).__name__})") from None
        if claims.get("nonce") != nonce:
            raise AccessDenied("the ID token's nonce does not match this sign-in")
        return claims

    async def _userinfo(self, url: str, access_token: object, sub: str | None) -> dict[str, Any]:
        """The userinfo answer; with an ID token's ``sub``, it must name the same user."""
        if not isinstance(access_token, str):
            raise AccessDenied("the sign-in provider returned no access token")
        status, info = await self._json("GET", url, headers={"authorization": f"Bearer {access_token}",
                                                             "accept": "application/json"})
        if status != 200 or not isinstance(info, dict):
            raise AccessDenied(f"the sign-in provider's userinfo endpoint answered {status}")
        if sub is not None and info.get("sub") != sub:
            raise AccessDenied("the sign-in provider's userinfo answer does not match the ID token")
        return info

    def user(self, claims: dict[str, Any]) -> dict[str, Any]:
        """The user as our tokens describe it, through the configured claim mapping."""
        mapping = self.cfg.claims
        subject = claim_at(claims, mapping.subject)
        if isinstance(subject, int) and not isinstance(subject, bool):
            subject = str(subject)  # GitHub's numeric user id
        if not isinstance(subject, str) or not subject:
            raise AccessDenied(f"the sign-in provider's answer has no {mapping.subject} claim")
        roles: list[str] = []
        for path in mapping.roles:
            value = claim_at(claims, path)
            values = value if isinstance(value, list) else value.split() if isinstance(value, str) else []
            roles += [v for v in values if isinstance(v, str) and v not in roles]
        user: dict[str, Any] = {"sub": subject, "roles": roles}
        for field, where in (("email", mapping.email), ("name", mapping.name)):
            value = claim_at(claims, where) if where else None
            if isinstance(value, str):
                user[field] = value
        return user
