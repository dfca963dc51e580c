"""The access tokens the sidecar mints (RFC 9068 JWTs) and the PKCE check."""

from __future__ import annotations

import hmac
import re
import time
import uuid
from typing import Any

import jwt

from authz.assertion import SigningKey
from authz.signin.upstream import s256

_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 §4.1
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")  # base64url of a SHA-256, no padding


def valid_challenge(challenge: str) -> bool:
    return bool(_CHALLENGE.match(challenge))


def verifier_matches(verifier: str, challenge: str) -> bool:
    return bool(_VERIFIER.match(verifier)) and hmac.compare_digest(s256(verifier), challenge)


def mint_access_token(key: SigningKey, *, issuer: str, user: dict[str, Any], client_id: str, resource: str,
                      scopes: list[str], lifetime: int, now: float | None = None) -> str:
    now = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer, "sub": user["sub"], "aud": resource, "client_id": client_id,
        "iat": now, "nbf": now, "exp": now + lifetime, "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes), "roles": list(user.get("roles", [])),
    }
    for name in ("email", "name"):
        if user.get(name):
            claims[name] = user[name]
    return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"})
