"""A person at a browser, for tests that walk sign-in pages with plain HTTP: follow redirects,
fill and submit the first form of a page (with a chosen button), stop at a given URL prefix."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif self.forms and tag == "input":
            if a.get("type") == "submit" and a.get("name"):
                self.forms[-1].buttons.append((a["name"], a.get("value", "")))
            elif a.get("name") and a.get("type") != "submit":
                self.forms[-1].fields[a["name"]] = a.get("value", "")
        elif self.forms and tag == "button" and a.get("name"):
            self.forms[-1].buttons.append((a["name"], a.get("value", "")))


def forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def walk(client: httpx.Client, url: str, *, stop_at: str, login: str = "", button: str | None = None,
         max_steps: int = 20) -> tuple[str, list[httpx.Response]]:
    """GET ``url`` and go on like a person would: follow redirects, submit forms (filling
    ``login`` / ``password`` inputs with ``login``; pressing the button whose value is
    ``button`` when there is a choice) until a redirect to ``stop_at...``. Returns that URL and
    every response seen (for tests that look at a page on the way)."""
    seen: list[httpx.Response] = []
    response = client.get(url)
    for _ in range(max_steps):
        seen.append(response)
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if location.startswith(stop_at):
                return location, seen
            response = client.get(location)
            continue
        page_forms = forms(response.text) if "html" in response.headers.get("content-type", "") else []
        if response.status_code != 200 or not page_forms:
            raise AssertionError(f"stuck at {response.url} ({response.status_code}): {response.text[:500]}")
        form = page_forms[0]
        data = dict(form.fields)
        for name in ("login", "password"):
            if name in data:
                data[name] = login
        chosen = [b for b in form.buttons if b[1] == button] or form.buttons[:1]
        if chosen:
            data[chosen[0][0]] = chosen[0][1]
        target = urljoin(str(response.url), form.action or str(response.url))
        response = client.post(target, data=data) if form.method == "post" else client.get(target, params=data)
    raise AssertionError(f"no redirect to {stop_at} after {max_steps} steps")
