"""A development OAuth/OIDC issuer: one RSA key, OIDC discovery, a JWKS, and a token minter.

``python -m authz.demo.issuer --port 9400`` serves ``/.well-known/openid-configuration`` and
``/jwks.json``; ``authz dev-token --sub oscar --roles accounting`` mints an access token signed
with the same key (kept in ``.dev/`` so tokens survive restarts). For local use only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger("authz.demo.issuer")

DEFAULT_ISSUER = "http://127.0.0.1:9400"
DEFAULT_AUDIENCE = "http://localhost:10000/mcp"
KEY_FILE = "issuer-key.pem"


def dev_dir(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get("AUTHZ_DEV_DIR") or ".dev")


def load_or_create_key(directory: str | os.PathLike[str] | None = None) -> rsa.RSAPrivateKey:
    d = dev_dir(directory)
    path = d / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key
    d.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Create with 0600 from the start; a race with another process loses to O_EXCL and rereads.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_key(d)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def public_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    jwk = {"e": _b64(numbers.e), "kty": "RSA", "n": _b64(numbers.n)}
    # RFC 7638 thumbprint: SHA-256 of the required members, sorted, no whitespace.
    thumb = hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()
    kid = base64.urlsafe_b64encode(thumb).rstrip(b"=").decode()
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def jwks(key: rsa.RSAPrivateKey) -> dict[str, list[dict[str, str]]]:
    return {"keys": [public_jwk(key)]}


def mint_token(*, sub: str, roles: Sequence[str] = (), scopes: Sequence[str] = (), client: str = "demo-cli",
               tenant: str | None = None, email: str | None = None, issuer: str = DEFAULT_ISSUER,
               audience: Sequence[str] = (DEFAULT_AUDIENCE,), ttl: int = 3600,
               extra_claims: dict[str, Any] | None = None,
               dev_dir: str | os.PathLike[str] | None = None) -> str:
    key = load_or_create_key(dev_dir)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer, "sub": sub, "aud": list(audience) if len(audience) != 1 else audience[0],
        "iat": now, "nbf": now, "exp": now + ttl, "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes), "roles": list(roles), "azp": client, "client_id": client,
    }
    if tenant:
        claims["tenant"] = tenant
    if email:
        claims["email"] = email
    claims.update(extra_claims or {})
    return jwt.encode(claims, key, algorithm="RS256",
                      headers={"kid": public_jwk(key)["kid"], "typ": "at+jwt"})


def build_app(issuer: str, directory: str | os.PathLike[str] | None = None) -> web.Application:
    key = load_or_create_key(directory)

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": issuer, "jwks_uri": f"{issuer}/jwks.json",
            "authorization_endpoint": f"{issuer}/authorize", "token_endpoint": f"{issuer}/token",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["tools:calendar", "invoices:read", "invoices:write"]})

    async def keys(request: web.Request) -> web.Response:
        return web.json_response(jwks(key), headers={"cache-control": "max-age=300"})

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/.well-known/oauth-authorization-server", discovery)
    app.router.add_get("/jwks.json", keys)
    return app


def _split(values: Sequence[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or ():
        out += [x for x in v.replace(",", " ").split() if x and x not in out]
    return out


def dev_token_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="authz dev-token",
                                description="Mint an access token from the local dev issuer (make run).")
    p.add_argument("--sub", required=True, help="the user, e.g. oscar")
    p.add_argument("--roles", action="append", help="comma or space separated; repeatable")
    p.add_argument("--scopes", action="append", help="comma or space separated; repeatable")
    p.add_argument("--client", default="demo-cli", help="the LLM client (azp / client_id)")
    p.add_argument("--tenant")
    p.add_argument("--email")
    p.add_argument("--aud", action="append", help=f"audience (default {DEFAULT_AUDIENCE}); repeatable")
    p.add_argument("--ttl", type=int, default=3600, help="seconds")
    p.add_argument("--issuer", default=os.environ.get("AUTHZ_DEV_ISSUER", DEFAULT_ISSUER))
    p.add_argument("--dev-dir", help="where the issuer key lives (default .dev or $AUTHZ_DEV_DIR)")
    args = p.parse_args(argv)
    if args.ttl <= 0:
        p.error("--ttl must be positive")
    print(mint_token(sub=args.sub, roles=_split(args.roles), scopes=_split(args.scopes), client=args.client,
                     tenant=args.tenant, email=args.email, issuer=args.issuer,
                     audience=tuple(args.aud or (DEFAULT_AUDIENCE,)), ttl=args.ttl, dev_dir=args.dev_dir))
    return 0


async def serve(host: str, port: int, issuer: str, directory: str | None) -> None:
    runner = web.AppRunner(build_app(issuer, directory), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("dev issuer %s listening on http://%s:%d", issuer, host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m authz.demo.issuer", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9400)
    p.add_argument("--issuer", help="the iss value (default http://HOST:PORT)")
    p.add_argument("--dev-dir")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    issuer = args.issuer or f"http://{args.host}:{args.port}"
    try:
        asyncio.run(serve(args.host, args.port, issuer, args.dev_dir))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
