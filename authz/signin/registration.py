"""Dynamic client registration (RFC 7591), rate-limited per peer address and overall."""

from __future__ import annotations

from aiohttp import web

from authz.signin import answers
from authz.signin.clients import client_from_metadata, parse_metadata_body
from authz.signin.context import InForce
from authz.signin.errors import InvalidRequest, OAuthError, TooManyRequests
from authz.signin.params import peer_address
from authz.signin.state import digest, new_secret


async def register(request: web.Request, now: InForce) -> web.Response:
    config, cfg, _, state, _ = now
    try:
        if not cfg.registration.enabled:
            raise InvalidRequest("dynamic client registration is not enabled here")
        per_address, total = await state.count_registration(peer_address(request))
        if per_address > cfg.registration.per_address_per_minute or total > cfg.registration.per_hour:
            raise TooManyRequests("too many registrations; try again later", headers={"retry-after": "60"})
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
        state.record(config, "refused", error=exc.error, endpoint="register", reason=exc.description)
        return answers.json_error(exc)
    state.record(config, "registered", endpoint="register", client_id=client_id,
                  application_type=client["application_type"])
    public = {k: v for k, v in client.items() if k != "client_secret_sha256"}
    if secret is not None:
        public |= {"client_secret": secret, "client_secret_expires_at": 0}
    return web.json_response(public, status=201, headers={"cache-control": "no-store"})
