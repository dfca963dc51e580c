"""The access tokens the sidecar mints: RFC 9068 JWTs signed with the active signin key."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

from authz.identity.assertion import SigningKey


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
