"""What a request to the authorization server works with: the config in force, the objects
built from it (``Parts``), the state in the store, and how a client id is resolved."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp

from authz.identity.assertion import KeyRing
from authz.signin.cimd import MetadataDocuments
from authz.signin.clients import is_metadata_document_id
from authz.signin.config import SigninConfig
from authz.signin.errors import InvalidClient
from authz.signin.state import SigninState
from authz.signin.upstream import Upstream

if TYPE_CHECKING:  # the whole config, for annotations only: authz.config imports this package's section
    from authz.config import Config


class Parts:
    """What one ``signin`` config builds: the upstream client and the metadata-document fetcher
    (each with its connections and caches), rebuilt when the section changes."""

    def __init__(self, cfg: SigninConfig) -> None:
        assert cfg.upstream is not None
        self.cfg = cfg
        self.session = aiohttp.ClientSession(trust_env=False)
        self.upstream = Upstream(cfg.upstream, session=self.session)
        self.documents = MetadataDocuments(cfg.client_metadata_documents, cfg.registration)

    async def close(self) -> None:
        await self.session.close()
        await self.documents.close()


class InForce(NamedTuple):
    """Read once per request, so a reload never changes the rules half-way through it."""

    config: Config
    cfg: SigninConfig
    parts: Parts
    state: SigninState
    keys: KeyRing  # the runtime's signing keys (installed when the pipeline in force was built)


async def find_client(client_id: str, cfg: SigninConfig, parts: Parts, state: SigninState
                  ) -> dict[str, Any]:
    if not client_id or len(client_id) > 2000:
        raise InvalidClient("client_id is missing")
    if is_metadata_document_id(client_id):
        return await parts.documents.client(client_id, scopes_supported=cfg.scopes_supported)
    client = await state.client(client_id)
    if client is None:
        raise InvalidClient("unknown client")
    return client
