"""API keys for service callers, hashed at rest.

Config holds only SHA-256 digests; a presented key is hashed and looked up in a dict (the digest
of a high-entropy key reveals nothing useful, so no constant-time compare is needed). The
``ApiKeyStore`` protocol is the seam for keys kept elsewhere (e.g. Redis) later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from typing import Protocol

from authz.identity.config import ApiKey
from authz.identity.errors import CredentialsMalformed
from authz.model import Principal

MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 512
# Visible ASCII without "," (Envoy joins repeated headers with ","), quotes or backslash.
_KEY = re.compile(r"^[!#-+\--\[\]-~]+$")


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKeyMatch:
    name: str
    principal: Principal


class ApiKeyStore(Protocol):
    async def lookup(self, key: str) -> ApiKeyMatch | None: ...


def check_key_syntax(key: str) -> None:
    if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS or not _KEY.match(key):
        raise CredentialsMalformed("the API key is malformed")


class ConfigApiKeys:
    """Keys listed in ``identity.api_keys.keys``."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._by_digest = {
            k.sha256: ApiKeyMatch(k.name, Principal(
                subject=k.subject, issuer="", email=k.email, tenant=k.tenant, client=k.client,
                roles=frozenset(k.roles), scopes=frozenset(k.scopes), credential="api_key"))
            for k in keys}

    def __len__(self) -> int:
        return len(self._by_digest)

    async def lookup(self, key: str) -> ApiKeyMatch | None:
        return self._by_digest.get(hashlib.sha256(key.encode()).hexdigest())
