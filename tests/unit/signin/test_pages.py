"""The pages' headers: never framed, and the consent form may send the browser on to the
client's redirect URI (a browser applies form-action to the redirect after a submission)."""

from __future__ import annotations

import pytest

from authz.signin.pages import PAGE_HEADERS, consent_headers, consent_page


@pytest.mark.parametrize("uri, source", [
    ("http://127.0.0.1:53682/callback", "'self' http://127.0.0.1:53682"),
    ("https://app.example/cb?x=1", "'self' https://app.example"),
    ("com.example.app:/cb", "'self' com.example.app:"),
    ("https://app.example;script-src:x/cb", "'self'"),  # nothing that could add a directive
])
def test_form_action_names_the_redirect_origin_only(uri, source):
    csp = consent_headers(uri)["content-security-policy"]
    assert f"form-action {source};" in csp and "frame-ancestors 'none'" in csp
    assert consent_headers(uri)["x-frame-options"] == "DENY"
    assert "form-action 'self';" in PAGE_HEADERS["content-security-policy"]


def test_every_value_on_the_consent_page_is_escaped():
    html = consent_page(client_name="<b>x</b>", client_id="'\"><script>", redirect_host="h", user="u<",
                        scopes=[("s<", "d>")], resource="r", form_id="f'", csrf="c\"", action="/oauth/consent")
    assert "<b>x</b>" not in html and "<script>" not in html and "&lt;b&gt;" in html
