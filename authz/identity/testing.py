"""Test helpers shipped with the package: a fake OIDC issuer served over real HTTP.

    async with FakeIssuer(audience="https://mcp.example.com/mcp") as idp:
        token = idp.mint(sub="alice", roles=["admin"])
        idp.rotate()          # a new kid signs from now on (old key still published)
        idp.down = True       # discovery and JWKS answer 503 (an IdP outage)

It listens on 127.0.0.1 on a free port; ``issuer`` is ``http://127.0.0.1:<port>``, discovery is
at ``/.well-known/openid-configuration`` and keys at ``/jwks``. ``hits`` counts requests per path.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz.identity.jose import ALGORITHMS, encode_compact, public_jwk


def generate_key(alg: str) -> Any:
    kty = ALGORITHMS[alg].kty
    if kty == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kty == "EC":
        return ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


class FakeIssuer:
    def __init__(self, *, audience: str = "https://mcp.example.com/mcp", alg: str = "RS256",
                 max_age: int | None = 300) -> None:
        self.audience = audience
        self.alg = alg
        self.max_age = max_age
        self.keys: dict[str, tuple[str, Any]] = {}  # kid -> (alg, private key), all published
        self.current_kid = ""
        self.down = False
        self.delay = 0.0  # seconds to wait before answering (to simulate a slow IdP)
        self.hits: collections.Counter[str] = collections.Counter()
        self.issuer = ""
        self._runner: web.AppRunner | None = None
        self._generation = 0
        self._prefix = secrets.token_hex(4)  # kids differ between issuers, as in real life
        self.rotate()

    # --- keys and tokens -------------------------------------------------------------------------

    def rotate(self, *, alg: str | None = None, drop_old: bool = False) -> str:
        """Make a new key current (published alongside the old ones unless ``drop_old``)."""
        alg = alg or self.alg
        self._generation += 1
        kid = f"{self._prefix}-{self._generation}"
        if drop_old:
            self.keys.clear()
        self.keys[kid] = (alg, generate_key(alg))
        self.current_kid = kid
        return kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**public_jwk(key), "kid": kid, "alg": alg, "use": "sig"}
                         for kid, (alg, key) in self.keys.items()]}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": "alice",
                                  "iat": now, "exp": now + 300, "azp": "chatgpt",
                                  "scope": "mcp:tools"}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, *, kid: str | None = None, header: dict[str, Any] | None = None,
             **claims: Any) -> str:
        """A token signed by ``kid`` (default: the current key). Claims override the defaults;
        a claim given as None is left out."""
        kid = kid or self.current_kid
        alg, key = self.keys[kid]
        hdr = {"alg": alg, "typ": "JWT", "kid": kid, **(header or {})}
        return encode_compact(hdr, self.claims(**claims), ALGORITHMS[alg], key)

    # --- HTTP ------------------------------------------------------------------------------------

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        self.hits[request.path] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            return web.json_response({"error": "down"}, status=503)
        headers = {"Cache-Control": f"max-age={self.max_age}"} if self.max_age is not None else {}
        return web.json_response(body, headers=headers)

    async def _discovery(self, request: web.Request) -> web.Response:
        return await self._answer(request, {
            "issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks",
            "id_token_signing_alg_values_supported": sorted({a for a, _ in self.keys.values()})})

    async def _jwks(self, request: web.Request) -> web.Response:
        return await self._answer(request, self.jwks())

    async def start(self) -> FakeIssuer:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.issuer = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeIssuer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
