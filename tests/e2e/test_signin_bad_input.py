"""Issue 20: bad input to the authorization server through real Envoy, each answered with the
OAuth error its RFC names, never a crash; an unverified client or redirect URI is never redirected
to."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.e2e.signin_stack import REDIRECT, Person, SigninStack, start_signin_stack
from tests.helpers.forms import walk

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def signin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigninStack]:
    running = start_signin_stack(tmp_path_factory.mktemp("signin-bad"), extra="""\
  registration: {per_address_per_minute: 10}
""")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client_id(signin) -> str:
    r = httpx.post(f"{signin.url}/oauth/register", timeout=10, json={
        "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none", "application_type": "native",
        "grant_types": ["authorization_code", "refresh_token"], "client_name": "matrix"})
    assert r.status_code == 201, r.text
    assert "client_secret" not in r.json()
    return r.json()["client_id"]


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize_params(signin: SigninStack, client_id: str, challenge: str, **over: str | None) -> dict[str, str]:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "xyz",
              "code_challenge": challenge, "code_challenge_method": "S256", "resource": f"{signin.url}/mcp",
              "scope": "tools:calendar"}
    params.update(over)
    return {k: v for k, v in params.items() if v is not None}


def authorize(signin: SigninStack, params: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{signin.url}/oauth/authorize?{urlencode(params)}", timeout=10)


def redirected_error(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def code_for(signin: SigninStack, client_id: str, challenge: str) -> str:
    final, _ = walk(Person("oscar").browser, f"{signin.url}/oauth/authorize?"
                    f"{urlencode(authorize_params(signin, client_id, challenge))}", stop_at=REDIRECT, login="oscar")
    return parse_qs(urlsplit(final).query)["code"][0]


def exchange(signin: SigninStack, client_id: str, code: str, verifier: str | None, **over: str) -> httpx.Response:
    form = {"grant_type": "authorization_code", "client_id": client_id, "code": code, "redirect_uri": REDIRECT,
            "resource": f"{signin.url}/mcp", **over}
    if verifier is not None:
        form["code_verifier"] = verifier
    return httpx.post(f"{signin.url}/oauth/token", data=form, timeout=10)


def test_an_unknown_client_gets_an_error_page_and_no_redirect(signin):
    r = authorize(signin, authorize_params(signin, "no-such-client", pkce()[1]))
    assert r.status_code == 400 and "location" not in r.headers
    assert "invalid_client" in r.text and r.headers["x-frame-options"] == "DENY"


def test_an_unregistered_redirect_uri_is_never_redirected_to(signin, client_id):
    r = authorize(signin, authorize_params(signin, client_id, pkce()[1], redirect_uri="https://evil.example/cb"))
    assert r.status_code == 400 and "location" not in r.headers and "invalid_request" in r.text
    # Loopback redirect URIs may use any port (RFC 8252 §7.3): that one is accepted.
    other_port = REDIRECT.replace("53682", "40001")
    r = authorize(signin, authorize_params(signin, client_id, pkce()[1], redirect_uri=other_port))
    assert r.status_code == 302 and not r.headers["location"].startswith(other_port)  # on to the upstream


@pytest.mark.parametrize("over, error", [
    ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),      # no PKCE
    ({"code_challenge_method": "plain"}, "invalid_request"),                            # plain refused
    ({"code_challenge_method": None}, "invalid_request"),                               # defaults to plain
    ({"resource": None}, "invalid_target"),                                             # RFC 8707
    ({"resource": "https://other.example/mcp"}, "invalid_target"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "admin:everything"}, "invalid_scope"),
])
def test_bad_authorization_requests_go_back_with_the_oauth_error_state_and_iss(signin, client_id, over, error):
    params = redirected_error(authorize(signin, authorize_params(signin, client_id, pkce()[1], **over)))
    assert params["error"] == error and params["state"] == "xyz" and params["iss"] == signin.url


def test_a_repeated_parameter_is_refused_without_a_redirect(signin, client_id):
    # Which of two values would be the real one cannot be known, so nothing is trusted (RFC 6749 §3.1).
    for extra in ("&scope=invoices:read", f"&redirect_uri=https://evil.example/cb&client_id={client_id}"):
        query = urlencode(authorize_params(signin, client_id, pkce()[1])) + extra
        r = httpx.get(f"{signin.url}/oauth/authorize?{query}", timeout=10)
        assert r.status_code == 400 and "location" not in r.headers and "invalid_request" in r.text


def test_a_wrong_verifier_and_a_replayed_code_are_invalid_grant(signin, client_id):
    verifier, challenge = pkce()
    code = code_for(signin, client_id, challenge)
    wrong = exchange(signin, client_id, code, pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert exchange(signin, client_id, code, verifier).json()["error"] == "invalid_grant"  # burnt by the try

    verifier, challenge = pkce()
    code = code_for(signin, client_id, challenge)
    assert exchange(signin, client_id, code, None).json()["error"] == "invalid_request"  # no verifier
    ok = exchange(signin, client_id, code, verifier)
    assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store", ok.text
    replayed = exchange(signin, client_id, code, verifier)
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_grant"


def test_a_foreign_resource_or_another_client_at_the_token_endpoint(signin, client_id):
    verifier, challenge = pkce()
    code = code_for(signin, client_id, challenge)
    r = exchange(signin, client_id, code, verifier, resource="https://other.example/mcp")
    assert r.status_code == 400 and r.json()["error"] == "invalid_target"
    r = exchange(signin, "no-such-client", "whatever", verifier)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = httpx.post(f"{signin.url}/oauth/token", data={"grant_type": "password", "client_id": client_id}, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = httpx.post(f"{signin.url}/oauth/token", json={"grant_type": "authorization_code"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_a_client_metadata_document_on_a_private_address_is_not_fetched(signin):
    for url in ("https://127.0.0.1:9/client.json", "https://10.0.0.1/client.json", "https://[::1]/c.json",
                "https://169.254.169.254/latest/meta-data", "https://localhost/client.json"):
        r = authorize(signin, authorize_params(signin, url, pkce()[1]))
        assert r.status_code == 400 and "location" not in r.headers, url
        assert "invalid_client" in r.text and "not a public address" in r.text, url


@pytest.mark.parametrize("meta, error", [
    ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),
    ({"redirect_uris": []}, "invalid_redirect_uri"),
    ({"redirect_uris": ["https://app.example/cb#frag"]}, "invalid_redirect_uri"),
    ({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),
    ({"redirect_uris": [REDIRECT], "grant_types": ["implicit"]}, "invalid_client_metadata"),
    ({"redirect_uris": [REDIRECT], "application_type": "tv"}, "invalid_client_metadata"),
])
def test_bad_registrations_name_the_field(signin, meta, error):
    r = httpx.post(f"{signin.url}/oauth/register", json=meta, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == error, r.text


def test_a_registration_flood_is_refused_with_429(signin):
    statuses = [httpx.post(f"{signin.url}/oauth/register", timeout=10,
                           json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}).status_code
                for _ in range(25)]  # two windows at worst: one of them overflows
    assert 429 in statuses
    refused = httpx.post(f"{signin.url}/oauth/register", json={"redirect_uris": [REDIRECT]}, timeout=10)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
    assert refused.json()["error"] == "temporarily_unavailable"


def test_a_consent_post_without_the_browser_binding_is_refused(signin, client_id):
    # Walk to our consent page, then answer it from another browser (no cookie): 403, no code.
    person = Person("dana")
    params = authorize_params(signin, client_id, pkce()[1])
    response = person.browser.get(f"{signin.url}/oauth/authorize?{urlencode(params)}")
    from tests.helpers.forms import forms

    for _ in range(15):
        if response.is_redirect:
            response = person.browser.get(httpx.URL(str(response.url)).join(response.headers["location"]))
            continue
        if "/oauth/callback" in str(response.url):
            break
        form = forms(response.text)[0]
        data = {**form.fields, **({"login": "dana", "password": "dana"} if "login" in form.fields else {})}
        response = person.browser.post(httpx.URL(str(response.url)).join(form.action), data=data)
    consent = forms(response.text)[0]
    assert consent.fields.keys() >= {"form", "csrf"}
    stranger = httpx.post(f"{signin.url}/oauth/consent", data={**consent.fields, "decision": "allow"}, timeout=10)
    assert stranger.status_code == 403 and "location" not in stranger.headers
    forged = person.browser.post(f"{signin.url}/oauth/consent",
                                 data={**consent.fields, "csrf": "forged", "decision": "allow"})
    assert forged.status_code == 403 and "location" not in forged.headers
    # The real answer from the real browser still works, once; "deny" is access_denied with iss.
    denied = person.browser.post(f"{signin.url}/oauth/consent", data={**consent.fields, "decision": "deny"})
    error = redirected_error(denied)
    assert error["error"] == "access_denied" and error["iss"] == signin.url
    again = person.browser.post(f"{signin.url}/oauth/consent", data={**consent.fields, "decision": "allow"})
    assert again.status_code == 403


def test_a_sign_in_refused_upstream_goes_back_as_access_denied(signin, client_id):
    # The user cancels at the company's provider: it returns to our callback with an error.
    r = authorize(signin, authorize_params(signin, client_id, pkce()[1]))
    upstream = r.headers["location"]
    assert upstream.startswith(signin.idp.issuer)
    ours = parse_qs(urlsplit(upstream).query)["state"][0]
    back = httpx.get(f"{signin.url}/oauth/callback", params={"state": ours, "error": "access_denied"}, timeout=10)
    error = redirected_error(back)
    assert error == {"error": "access_denied", "error_description": "the sign-in provider did not sign you in",
                     "state": "xyz", "iss": signin.url}
    # That sign-in is over: the same callback again (or a made-up state) is an error page, no redirect.
    for state in (ours, "made-up"):
        again = httpx.get(f"{signin.url}/oauth/callback", params={"state": state, "code": "x"}, timeout=10)
        assert again.status_code == 400 and "location" not in again.headers and "expired" in again.text
