"""Redirect URIs (exact, loopback any port), registration metadata, and who may fetch what for
Client ID Metadata Documents."""

from __future__ import annotations

import pytest

from authz.signin.cimd import MetadataDocuments, address_allowed
from authz.signin.clients import (
    check_redirect_uri,
    client_from_metadata,
    is_metadata_document_id,
    redirect_uri_matches,
)
from authz.signin.config import ClientMetadataDocumentsConfig, RegistrationConfig
from authz.signin.errors import InvalidClient, InvalidClientMetadata, InvalidRedirectUri


@pytest.mark.parametrize("requested, registered, ok", [
    ("https://app.example/cb", ["https://app.example/cb"], True),
    ("https://app.example/cb/", ["https://app.example/cb"], False),
    ("https://app.example/cb?x=1", ["https://app.example/cb"], False),
    ("https://APP.example/cb", ["https://app.example/cb"], False),
    ("http://127.0.0.1:9999/cb", ["http://127.0.0.1:1234/cb"], True),      # RFC 8252: any port
    ("http://[::1]:9999/cb", ["http://[::1]/cb"], True),
    ("http://localhost:9/cb", ["http://localhost:1234/cb"], True),
    ("http://127.0.0.1:9999/other", ["http://127.0.0.1:1234/cb"], False),
    ("http://127.0.0.2:9999/cb", ["http://127.0.0.1:1234/cb"], False),
    ("https://127.0.0.1:9999/cb", ["https://127.0.0.1:1234/cb"], False),   # only http loopback
    ("http://127.0.0.1:99999999/cb", ["http://127.0.0.1:1234/cb"], False),
])
def test_redirect_uri_matching(requested, registered, ok):
    assert redirect_uri_matches(requested, registered) is ok


@pytest.mark.parametrize("uri, app, ok", [
    ("https://app.example/cb", "web", True),
    ("http://app.example/cb", "web", False),
    ("http://127.0.0.1/cb", "native", True),
    ("com.example.app:/cb", "native", True),
    ("com.example.app:/cb", "web", False),
    ("javascript:alert(1)", "native", False),
    ("https://app.example/cb#x", "web", False),
])
def test_which_redirect_uris_may_be_registered(uri, app, ok):
    if ok:
        assert check_redirect_uri(uri, app) == uri
    else:
        with pytest.raises(InvalidRedirectUri):
            check_redirect_uri(uri, app)


def test_registration_keeps_what_it_checked_and_nothing_else():
    record = client_from_metadata({"redirect_uris": ["https://a.example/cb"], "client_name": "A", "evil": "x",
                                   "scope": "tools:calendar"}, RegistrationConfig(), client_id="c1",
                                  scopes_supported=("tools:calendar",))
    assert "evil" not in record and record["client_name"] == "A"
    with pytest.raises(InvalidClientMetadata):
        client_from_metadata({"redirect_uris": ["https://a.example/cb"], "scope": "admin"}, RegistrationConfig(),
                             client_id="c1", scopes_supported=("tools:calendar",))


@pytest.mark.parametrize("client_id, ok", [
    ("https://app.example/client.json", True),
    ("https://app.example/", False),
    ("http://app.example/client.json", False),
    ("https://user:pw@app.example/c.json", False),
    ("https://app.example/a/../c.json", False),
    ("c_opaque", False),
])
def test_which_client_ids_are_metadata_documents(client_id, ok):
    assert is_metadata_document_id(client_id) is ok


@pytest.mark.parametrize("address, ok", [
    ("93.184.216.34", True), ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False),
    ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("::1", False),
    ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False), ("0.0.0.0", False),
    ("2606:4700::1111", True), ("224.0.0.1", False),
])
def test_only_public_addresses_are_fetched(address, ok):
    assert address_allowed(address, allow_private=False) is ok


async def test_a_name_that_resolves_inside_is_refused_before_any_connection():
    docs = MetadataDocuments(ClientMetadataDocumentsConfig(), RegistrationConfig())
    try:
        with pytest.raises(InvalidClient, match="not a public address"):
            await docs.client("https://localhost/client.json", scopes_supported=())
    finally:
        await docs.close()
