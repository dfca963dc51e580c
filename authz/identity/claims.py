"""Verified claims to a ``Principal``, per the issuer's ``ClaimsMapping``.

A claim path is a claim name or dotted names into nested objects. At each level the longest run
of remaining segments that is a key wins, so ``realm_access.roles`` walks into Keycloak's object
while Auth0's ``https://example.com/roles`` (a name containing dots) is found as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from authz.identity.config import ClaimsMapping
from authz.identity.errors import TokenInvalidClaim, TokenMissingClaim
from authz.model import Principal

MAX_VALUE_CHARS = 1024  # longer subjects, roles or scopes are refused or dropped
MAX_ITEMS = 512  # roles / scopes taken from one claim

_MISSING = object()


def claim_path(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def resolve(claims: Mapping[str, Any], segments: Sequence[str]) -> Any:
    """The value at ``segments`` (see module doc), or ``_MISSING``."""
    node: Any = claims
    i = 0
    while i < len(segments):
        if not isinstance(node, Mapping):
            return _MISSING
        for j in range(len(segments), i, -1):
            name = ".".join(segments[i:j])
            if name in node:
                node = node[name]
                i = j
                break
        else:
            return _MISSING
    return node


def _string_items(value: Any) -> list[str]:
    """Items of a list of strings, or of a space-separated string (OAuth ``scope``)."""
    if isinstance(value, str):
        items = value.split()
    elif isinstance(value, list):
        items = [v for v in value if isinstance(v, str)]
    else:
        return []
    return [v for v in items[:MAX_ITEMS] if v and len(v) <= MAX_VALUE_CHARS]


def _optional_string(claims: Mapping[str, Any], segments: Sequence[str] | None) -> str | None:
    if segments is None:
        return None
    value = resolve(claims, segments)
    if isinstance(value, str) and value and len(value) <= MAX_VALUE_CHARS:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class ClaimMapper:
    """Compiled once per issuer; ``principal`` runs once per verified token (then cached).

    The principal (and its ``claims`` dict) is shared by every request that presents the same
    token: later stages must treat it as read-only.
    """

    def __init__(self, mapping: ClaimsMapping) -> None:
        self._subject = claim_path(mapping.subject)
        self._email = claim_path(mapping.email) if mapping.email else None
        self._tenant = claim_path(mapping.tenant) if mapping.tenant else None
        self._roles = tuple(claim_path(p) for p in mapping.roles)
        self._scopes = tuple(claim_path(p) for p in mapping.scopes)
        self._client = tuple(claim_path(p) for p in mapping.client)

    def principal(self, claims: Mapping[str, Any], *, issuer: str, expires_at: float | None
                  ) -> Principal:
        subject = resolve(claims, self._subject)
        if subject is _MISSING or subject is None:
            raise TokenMissingClaim()
        if not isinstance(subject, str) or not subject or len(subject) > MAX_VALUE_CHARS:
            raise TokenInvalidClaim()
        roles: set[str] = set()
        for path in self._roles:
            roles.update(_string_items(resolve(claims, path)))
        scopes: set[str] = set()
        for path in self._scopes:
            scopes.update(_string_items(resolve(claims, path)))
        client = None
        for path in self._client:
            client = _optional_string(claims, path)
            if client is not None:
                break
        return Principal(
            subject=subject, issuer=issuer, email=_optional_string(claims, self._email),
            tenant=_optional_string(claims, self._tenant), client=client,
            roles=frozenset(roles), scopes=frozenset(scopes),
            claims=dict(claims), credential="jwt", expires_at=expires_at)
