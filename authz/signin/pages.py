"""The pages a person sees: the consent page and the error page. Server-rendered HTML, no
JavaScript, readable on a phone; every value escaped; never framed (clickjacking)."""

from __future__ import annotations

import re
from html import escape
from urllib.parse import urlsplit

PAGE_HEADERS = {
    "content-type": "text/html; charset=utf-8",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}

_CSP_SOURCE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://[A-Za-z0-9.\-\[\]:]+|[a-z][a-z0-9+.-]*:)$")


def consent_headers(redirect_uri: str) -> dict[str, str]:
    """The page headers, with ``form-action`` also allowing where the answer redirects to: a
    browser applies form-action to the redirects that follow a form's submission too."""
    parts = urlsplit(redirect_uri)
    source = f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"
    allowed = f"'self' {source}" if _CSP_SOURCE.match(source) else "'self'"
    csp = PAGE_HEADERS["content-security-policy"].replace("form-action 'self'", f"form-action {allowed}")
    return {**PAGE_HEADERS, "content-security-policy": csp}


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;"
          "line-height:1.5;color:#222}h1{font-size:1.4rem}li{margin:.3rem 0}.who{color:#555}"
          "button{font-size:1rem;padding:.6rem 1.2rem;margin:.5rem .5rem 0 0;border-radius:.4rem;"
          "border:1px solid #888;background:#fff}button.allow{background:#1a5fb4;color:#fff;border-color:#1a5fb4}"
          "code{background:#f2f2f2;padding:0 .2rem}")


def _page(title: str, body: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>")


def consent_page(*, client_name: str, client_id: str, redirect_host: str, user: str,
                 scopes: list[tuple[str, str]], resource: str, form_id: str, csrf: str, action: str) -> str:
    items = "".join(f"<li><code>{escape(s)}</code>{(' — ' + escape(d)) if d else ''}</li>" for s, d in scopes)
    if not items:
        items = "<li>act as you at this service (no extra permissions)</li>"
    body = (
        f"<h1>Allow {escape(client_name)} to act as you?</h1>"
        f"<p class=who>Signed in as <b>{escape(user)}</b>.</p>"
        f"<p><b>{escape(client_name)}</b> (<code>{escape(client_id)}</code>), which will be sent back to "
        f"<b>{escape(redirect_host)}</b>, asks to use <code>{escape(resource)}</code> with:</p>"
        f"<ul>{items}</ul>"
        f"<form method=post action='{escape(action)}'>"
        f"<input type=hidden name=form value='{escape(form_id)}'>"
        f"<input type=hidden name=csrf value='{escape(csrf)}'>"
        "<button class=allow type=submit name=decision value=allow>Allow</button>"
        "<button type=submit name=decision value=deny>Deny</button></form>"
        "<p class=who>Only allow applications you trust. You can be asked again when it wants more.</p>")
    return _page("Allow access?", body)


def error_page(error: str, description: str) -> str:
    body = (f"<h1>Sign-in cannot continue</h1><p>{escape(description)}</p>"
            f"<p class=who>Error: <code>{escape(error)}</code>. You were not sent back to the application, "
            "because it could not be verified. Close this page and start again from the application.</p>")
    return _page("Sign-in error", body)
