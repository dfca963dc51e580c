"""A development OAuth/OIDC issuer: one RSA key, OIDC discovery, a JWKS, and a token minter.

``python -m authz.dev.issuer --port 9400`` serves ``/.well-known/openid-configuration`` and
``/jwks.json``; ``authz dev-token --sub oscar --roles accounting`` mints an access token signed
with the same key, kept in the dev dir (``$AUTHZ_DEV_DIR``, else ``.dev/``) so tokens survive
restarts and both processes agree without talking to each other. For local use only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from authz.dev import bind, configure_logging, url_of
from authz.identity.jose import jwk_thumbprint, public_jwk

DEFAULT_PORT = 9400
DEFAULT_ISSUER = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_AUDIENCE = "http://localhost:10000/mcp"
KEY_FILE = "issuer-key.pem"
SCOPES = ("tools:calendar", "invoices:read", "invoices:write")

log = logging.getLogger("authz.dev.issuer")

ISSUER = web.AppKey("issuer", str)
JWKS = web.AppKey("jwks", dict)


def dev_dir(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get("AUTHZ_DEV_DIR") or ".dev")


def load_or_create_key(directory: str | os.PathLike[str] | None = None) -> rsa.RSAPrivateKey:
    """The dev signing key, created (mode 0600) on first use."""
    path = dev_dir(directory) / KEY_FILE
    if not path.exists():
        _create_key(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA private key")
    return key


def _create_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Written in full to a private temp file, then linked into place: a concurrent reader never sees
    # half a key, and when two processes race (issuer + dev-token) the first link wins for both.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".issuer-key-")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def signing_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The public JWK, ``kid`` = its RFC 7638 thumbprint (stable for the key, new with a new key)."""
    jwk = public_jwk(key)
    return {**jwk, "kid": jwk_thumbprint(jwk), "use": "sig", "alg": "RS256"}


def jwks(key: rsa.RSAPrivateKey) -> dict[str, list[dict[str, str]]]:
    return {"keys": [signing_jwk(key)]}


def mint_token(*, sub: str, roles: Sequence[str] = (), scopes: Sequence[str] = (), client: str = "demo-cli",
               tenant: str | None = None, email: str | None = None, issuer: str = DEFAULT_ISSUER,
               audience: Sequence[str] | str = (DEFAULT_AUDIENCE,), ttl: int = 3600,
               extra_claims: Mapping[str, Any] | None = None,
               dev_dir: str | os.PathLike[str] | None = None) -> str:
    """An RFC 9068 access token (``typ: at+jwt``). A negative ``ttl`` mints an expired one, for tests."""
    if not sub:
        raise ValueError("sub is required")
    audiences = [audience] if isinstance(audience, str) else list(audience)
    key = load_or_create_key(dev_dir)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer, "sub": sub, "aud": audiences[0] if len(audiences) == 1 else audiences,
        "iat": now, "nbf": now, "exp": now + ttl, "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes), "roles": list(roles), "azp": client, "client_id": client,
    }
    if tenant:
        claims["tenant"] = tenant
    if email:
        claims["email"] = email
    claims.update(extra_claims or {})
    header = {"kid": signing_jwk(key)["kid"], "typ": "at+jwt"}
    return jwt.encode(claims, key, algorithm="RS256", headers=header)


async def discovery(request: web.Request) -> web.Response:
    issuer = request.app[ISSUER]
    return web.json_response({
        "issuer": issuer, "jwks_uri": f"{issuer}/jwks.json",
        "authorization_endpoint": f"{issuer}/authorize", "token_endpoint": f"{issuer}/token",
        "response_types_supported": ["code"], "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
        "scopes_supported": ["openid", "email", "profile", *SCOPES]})


async def keys(request: web.Request) -> web.Response:
    return web.json_response(request.app[JWKS], headers={"cache-control": "max-age=300"})


def build_app(issuer: str, directory: str | os.PathLike[str] | None = None) -> web.Application:
    from authz.dev import upstream

    app = web.Application()
    app[ISSUER] = issuer.rstrip("/")
    key = load_or_create_key(directory)
    app[JWKS] = jwks(key)
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/.well-known/oauth-authorization-server", discovery)
    app.router.add_get("/jwks.json", keys)
    # It also plays the company's identity provider for the sidecar's sign-in (signin:).
    upstream.install(app, issuer=app[ISSUER], key=key, kid=signing_jwk(key)["kid"])
    return app


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m authz.dev.issuer", description="The local dev OIDC issuer.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--issuer", help="the iss value (default http://HOST:PORT, with the port actually bound)")
    p.add_argument("--dev-dir", help="where the key lives (default $AUTHZ_DEV_DIR or .dev)")
    args = p.parse_args(argv)
    configure_logging()
    sock = bind(args.host, args.port)
    url = url_of(sock)
    issuer = args.issuer or url
    app = build_app(issuer, args.dev_dir)
    web.run_app(app, sock=sock, access_log=None, shutdown_timeout=5,
                print=lambda *_: log.info("dev issuer %s listening on %s", issuer, url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
