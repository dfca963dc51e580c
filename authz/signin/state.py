"""What the authorization server remembers, in the shared store (Redis in production, memory for
one replica). Every record is JSON under ``signin:``; secrets (codes, refresh tokens, client
secrets) are kept only as SHA-256 digests, so a copy of the store grants nothing.

==================  ==========================================  ===========================
record              key                                          lifetime
==================  ==========================================  ===========================
client              signin:client:<client_id>                    registration.client_lifetime
login transaction   signin:login:<state sent upstream>           login_seconds, used once
consent form        signin:consent-form:<id>                     login_seconds, used once
code                signin:code:<sha256(code)>                   code_seconds, used once
code redeemed       signin:code-used:<sha256(code)>              an hour (a replay revokes its family)
consent             signin:consent:<sha256(user)>:<sha256(client)>  a year (scopes accumulate)
refresh token       signin:rt:<sha256(token)>                    what is left of its family
refresh token used  signin:rt-used:<sha256(token)>               same
family              signin:family:<id>                           refresh_token_seconds; deleted = revoked
==================  ==========================================  ===========================

"Used once" is the store's atomic delete: of two requests presenting the same code, only the one
whose delete removed the key goes on.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from authz.audit.log import AuditLog
from authz.signin import events
from authz.signin.errors import Unavailable
from authz.store.base import Store, StoreUnavailable

if TYPE_CHECKING:  # the whole config, for annotations only: authz.config imports this package's section
    from authz.config import Config

CONSENT_SECONDS = 365 * 86400


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


class SigninState:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time,
                 audit_logs: Iterable[AuditLog] = ()) -> None:
        self.store = store
        self.clock = clock  # wall time: rate-limit windows and record timestamps
        self.audit_logs = audit_logs  # where grants, refusals and revocations are recorded

    def record(self, config: Config, event: str, **fields: Any) -> None:
        """A grant, refusal or revocation: a log line, a metric and an audit record."""
        events.record(config, event, audit=self.audit_logs, **fields)

    async def _get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.store.get(key)
        except StoreUnavailable as exc:
            raise Unavailable("the authorization server's store is unavailable") from exc
        return None if raw is None else json.loads(raw)

    async def _put(self, key: str, value: dict[str, Any], ttl: float | None, *, only_if_absent: bool = False
                   ) -> bool:
        try:
            return await self.store.set(key, json.dumps(value, separators=(",", ":")).encode(), ttl=ttl,
                                        only_if_absent=only_if_absent)
        except StoreUnavailable as exc:
            raise Unavailable("the authorization server's store is unavailable") from exc

    async def _delete(self, key: str) -> bool:
        try:
            return await self.store.delete(key)
        except StoreUnavailable as exc:
            raise Unavailable("the authorization server's store is unavailable") from exc

    async def _take(self, key: str) -> dict[str, Any] | None:
        """Read and remove: the record, if this call was the one that removed it."""
        record = await self._get(key)
        if record is None or not await self._delete(key):
            return None
        return record

    async def _count(self, key: str, ttl: float) -> int:
        try:
            return await self.store.incr(key, 1, ttl=ttl)
        except StoreUnavailable as exc:
            raise Unavailable("the authorization server's store is unavailable") from exc

    # --- clients ---------------------------------------------------------------------------------

    async def save_client(self, client: dict[str, Any], ttl: float) -> None:
        await self._put(f"signin:client:{client['client_id']}", client, ttl)

    async def client(self, client_id: str) -> dict[str, Any] | None:
        return await self._get(f"signin:client:{client_id}")

    async def count_registration(self, address: str) -> tuple[int, int]:
        """Registrations this minute from ``address`` and this hour from everyone (this one included)."""
        now = self.clock()
        minute, hour = int(now // 60), int(now // 3600)
        per_address = await self._count(f"signin:reg:{digest(address)}:{minute}", 120)
        total = await self._count(f"signin:reg-all:{hour}", 7200)
        return per_address, total

    async def count_authorize(self, address: str) -> int:
        """Authorization requests this minute from ``address`` (each one costs a store record)."""
        minute = int(self.clock() // 60)
        return await self._count(f"signin:authorize:{digest(address)}:{minute}", 120)

    # --- the way through the upstream and the consent page --------------------------------------

    async def save_login(self, state: str, login: dict[str, Any], ttl: float) -> None:
        await self._put(f"signin:login:{state}", login, ttl)

    async def take_login(self, state: str) -> dict[str, Any] | None:
        return await self._take(f"signin:login:{state}")

    async def save_consent_form(self, form_id: str, form: dict[str, Any], ttl: float) -> None:
        await self._put(f"signin:consent-form:{form_id}", form, ttl)

    async def consent_form(self, form_id: str) -> dict[str, Any] | None:
        return await self._get(f"signin:consent-form:{form_id}")

    async def take_consent_form(self, form_id: str) -> dict[str, Any] | None:
        return await self._take(f"signin:consent-form:{form_id}")

    async def consented_scopes(self, user: str, client_id: str) -> set[str] | None:
        record = await self._get(f"signin:consent:{digest(user)}:{digest(client_id)}")
        return None if record is None else set(record["scopes"])

    async def save_consent(self, user: str, client_id: str, scopes: set[str]) -> set[str]:
        """Remember the scopes the user granted this client, added to what it had (step-up
        keeps earlier scopes). Returns the accumulated set."""
        before = await self.consented_scopes(user, client_id) or set()
        total = before | scopes
        await self._put(f"signin:consent:{digest(user)}:{digest(client_id)}",
                        {"scopes": sorted(total), "time": int(self.clock())}, CONSENT_SECONDS)
        return total

    # --- codes -----------------------------------------------------------------------------------

    async def save_code(self, code: str, grant: dict[str, Any], ttl: float) -> None:
        await self._put(f"signin:code:{digest(code)}", grant, ttl)

    async def take_code(self, code: str) -> dict[str, Any] | None:
        return await self._take(f"signin:code:{digest(code)}")

    async def remember_code_use(self, code: str, use: dict[str, Any], ttl: float) -> None:
        await self._put(f"signin:code-used:{digest(code)}", use, ttl)

    async def code_use(self, code: str) -> dict[str, Any] | None:
        return await self._get(f"signin:code-used:{digest(code)}")

    # --- refresh tokens --------------------------------------------------------------------------

    async def new_family(self, ttl: float) -> str:
        family = new_secret()
        await self._put(f"signin:family:{family}", {"created": int(self.clock())}, ttl)
        return family

    async def family_alive(self, family: str) -> bool:
        return await self._get(f"signin:family:{family}") is not None

    async def revoke_family(self, family: str) -> bool:
        return await self._delete(f"signin:family:{family}")

    async def save_refresh(self, token: str, grant: dict[str, Any], ttl: float) -> None:
        await self._put(f"signin:rt:{digest(token)}", grant, ttl)

    async def refresh(self, token: str) -> dict[str, Any] | None:
        return await self._get(f"signin:rt:{digest(token)}")

    async def mark_refresh_used(self, token: str, ttl: float) -> bool:
        """Claim the one use of a refresh token: False when it had been used already (reuse)."""
        return await self._put(f"signin:rt-used:{digest(token)}", {"t": int(self.clock())}, max(ttl, 1),
                               only_if_absent=True)
