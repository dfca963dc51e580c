"""Client ID Metadata Documents: fetching a client's metadata from the URL that is its id.

It is a fetch of a URL any client names, so it is bounded every way: https only; the host's
addresses are resolved first and the connection goes only to addresses that are public (no
loopback, private, link-local, multicast or reserved ranges unless configured, for tests), so DNS
cannot point us inside the network; no redirects; ``timeout_seconds`` for the whole exchange;
``max_bytes`` read at most; documents cached per ``Cache-Control`` (``max-age``, ``no-store``),
at most a day.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from authz.signin.clients import client_from_metadata, is_metadata_document_id, parse_metadata_body
from authz.signin.config import ClientMetadataDocumentsConfig, RegistrationConfig
from authz.signin.errors import InvalidClient, InvalidClientMetadata

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?", re.IGNORECASE)
_NO_STORE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\b", re.IGNORECASE)
MAX_CACHED = 1000


class BlockedAddress(OSError):
    pass


def address_allowed(address: str, *, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if allow_private:
        return not ip.is_unspecified and not ip.is_multicast
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PublicOnlyResolver(AbstractResolver):
    """Resolves like the system, then keeps only addresses we may connect to (all or nothing:
    a name with any blocked address is refused, so a mixed answer cannot be raced)."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=socket.AF_UNSPEC)
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            if not address_allowed(address, allow_private=self.allow_private):
                raise BlockedAddress(f"{host} resolves to a non-public address")
            results.append({"hostname": host, "host": address, "port": int(sockaddr[1]), "family": fam,
                            "proto": proto, "flags": socket.AI_NUMERICHOST})
        if not results:
            raise OSError(f"{host} has no address")
        return results

    async def close(self) -> None:
        return None


class MetadataDocuments:
    """Fetches and caches client metadata documents. One per process configuration."""

    def __init__(self, cfg: ClientMetadataDocumentsConfig, registration: RegistrationConfig, *,
                 clock: Any = time.monotonic) -> None:
        self.cfg = cfg
        self.registration = registration
        self.clock = clock
        self._cache: dict[str, tuple[dict[str, Any], float]] = {}
        self._session: aiohttp.ClientSession | None = None

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ctx = ssl.create_default_context(cafile=self.cfg.ca_file) if self.cfg.ca_file else True
            connector = aiohttp.TCPConnector(
                resolver=PublicOnlyResolver(allow_private=self.cfg.allow_private_addresses),
                ssl=ctx, use_dns_cache=False, limit=50)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def client(self, client_id: str, *, scopes_supported: tuple[str, ...]) -> dict[str, Any]:
        """The client record for a URL client id, or ``InvalidClient`` saying why not."""
        if not self.cfg.enabled or not is_metadata_document_id(client_id):
            raise InvalidClient("unknown client")
        cached = self._cache.get(client_id)
        if cached is not None and cached[1] > self.clock():
            return cached[0]
        meta, max_age = await self._fetch(client_id)
        if meta.get("client_id") != client_id:
            raise InvalidClient("the client metadata document names another client_id")
        if meta.get("token_endpoint_auth_method", "none") != "none":
            raise InvalidClient("a client metadata document client must be a public client "
                                "(token_endpoint_auth_method none)")
        try:
            record = client_from_metadata({**meta, "token_endpoint_auth_method": "none",
                                           "grant_types": meta.get("grant_types",
                                                                   ["authorization_code", "refresh_token"])},
                                          self.registration, client_id=client_id,
                                          scopes_supported=scopes_supported)
        except (InvalidClientMetadata, Exception) as exc:
            raise InvalidClient(f"the client metadata document is invalid: {getattr(exc, 'description', exc)}"
                                ) from None
        record["metadata_document"] = True
        if max_age > 0:
            if len(self._cache) >= MAX_CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[client_id] = (record, self.clock() + max_age)
        return record

    async def _check_host(self, url: str) -> None:
        """An address literal never reaches a resolver (aiohttp connects to it as it is), so it
        is judged here; a name is resolved and judged here and again when connecting."""
        host = (urlsplit(url).hostname or "").strip("[]")
        allow = self.cfg.allow_private_addresses
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            await PublicOnlyResolver(allow_private=allow).resolve(host, 443)
            return
        if not address_allowed(host, allow_private=allow):
            raise BlockedAddress(f"{host} is not a public address")

    async def _fetch(self, url: str) -> tuple[dict[str, Any], float]:
        limit = self.cfg.max_bytes
        try:
            async with asyncio.timeout(self.cfg.timeout_seconds):
                await self._check_host(url)
                async with self._client_session().get(
                        url, allow_redirects=False, headers={"accept": "application/json"}) as resp:
                    if resp.status != 200:
                        raise InvalidClient(f"the client metadata document answered {resp.status}")
                    declared = resp.content_length
                    if declared is not None and declared > limit:
                        raise InvalidClient(f"the client metadata document is larger than {limit} bytes")
                    body = await resp.content.read(limit + 1)
                    cache_control = resp.headers.get("cache-control", "")
        except TimeoutError:
            raise InvalidClient("the client metadata document did not arrive in time") from None
        except BlockedAddress:
            raise InvalidClient("the client metadata document's host is not a public address") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedAddress):  # a name that changed its answer since the check
                raise InvalidClient("the client metadata document's host is not a public address") from None
            raise InvalidClient(f"the client metadata document could not be fetched ({type(exc).__name__})"
                                ) from None
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            raise InvalidClient(f"the client metadata document could not be fetched ({type(exc).__name__})"
                                ) from None
        try:
            meta = parse_metadata_body(body, limit)
        except InvalidClientMetadata as exc:
            raise InvalidClient(exc.description) from None
        return meta, self._max_age(cache_control)

    def _max_age(self, cache_control: str) -> float:
        if _NO_STORE.search(cache_control):
            return 0
        m = _MAX_AGE.search(cache_control)
        age = int(m.group(1)) if m else self.cfg.cache_seconds
        return min(age, 86400)
