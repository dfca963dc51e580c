"""Issue 20: Client ID Metadata Documents through real Envoy: the MCP SDK client uses the URL of
its metadata document as its client id (no registration); the sidecar fetches it over HTTPS
(a private address allowed here by config, for the test), and refuses documents that name
another client, are too large or too slow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlencode

import anyio
import httpx
import pytest

from tests.e2e.signin_stack import (
    REDIRECT,
    MemoryTokens,
    Person,
    SigninStack,
    mcp_calls,
    oauth_provider,
    start_signin_stack,
)
from tests.helpers.https_documents import DocumentServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocumentServer]:
    server = DocumentServer(tmp_path_factory.mktemp("docs")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def signin(tmp_path_factory: pytest.TempPathFactory, docs: DocumentServer) -> Iterator[SigninStack]:
    running = start_signin_stack(tmp_path_factory.mktemp("signin-cimd"), extra=f"""\
  client_metadata_documents: {{allow_private_addresses: true, ca_file: {docs.cert}, timeout_seconds: 1,
                              max_bytes: 2048}}
""")
    try:
        yield running
    finally:
        running.stop()


def client_document(url: str) -> dict:
    return {"client_id": url, "client_name": "CIMD e2e client", "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "token_endpoint_auth_method": "none"}


def test_the_sdk_client_signs_in_with_a_metadata_document_url_and_no_registration(signin, docs):
    url = docs.url("/clients/e2e.json")
    docs.put("/clients/e2e.json", client_document(url), headers={"cache-control": "max-age=120"})
    person, storage = Person("oscar"), MemoryTokens()
    provider = oauth_provider(signin.url, person, storage, client_metadata_url=url)
    _, results = anyio.run(mcp_calls, signin.url, provider, [("whoami", {})])
    assert storage.client_info.client_id == url  # no DCR: the URL is the client id
    who = json.loads(results[0].content[0].text)
    assert who["headers"]["x-authz-client"] == url and who["headers"]["x-authz-user"] == "oscar"
    page = next(r for r in person.pages if "/oauth/callback" in str(r.url) and r.status_code == 200)
    assert "CIMD e2e client" in page.text
    # Public client: refresh with its client id only; the document was fetched once (cached).
    r = httpx.post(f"{signin.url}/oauth/token", timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": storage.tokens.refresh_token, "client_id": url})
    assert r.status_code == 200, r.text
    assert docs.hits["/clients/e2e.json"] == 1


@pytest.mark.parametrize("case, reason", [("other_client_id", "names another client_id"),
                                          ("oversized", "larger than 2048 bytes"), ("slow", "did not arrive in time"),
                                          ("not_json", "not JSON"), ("missing", "answered 404")])
def test_bad_metadata_documents_are_invalid_client_without_a_redirect(signin, docs, case, reason):
    path = f"/clients/{case}.json"
    url = docs.url(path)
    if case == "other_client_id":
        docs.put(path, client_document(docs.url("/clients/someone-else.json")))
    elif case == "oversized":
        docs.put(path, {**client_document(url), "client_name": "x" * 100, "padding": "y" * 4000})
    elif case == "slow":
        docs.put(path, client_document(url), delay=3)
    elif case == "not_json":
        docs.put(path, b"<html>hello</html>")
    params = {"response_type": "code", "client_id": url, "redirect_uri": REDIRECT, "state": "s",
              "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256",
              "resource": f"{signin.url}/mcp"}
    r = httpx.get(f"{signin.url}/oauth/authorize?{urlencode(params)}", timeout=10)
    assert r.status_code == 400 and "location" not in r.headers and "invalid_client" in r.text, r.text
    assert reason in r.text
