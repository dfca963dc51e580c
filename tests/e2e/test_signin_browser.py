"""Issue 20: the consent and error pages in a real headless browser (Debian's chromium), phone
sized, through Envoy: a person signs in at the upstream provider, reads our consent page, allows
or denies; an unknown client gets an error page and stays here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.e2e.signin_stack import REDIRECT, SigninStack, start_signin_stack
from tests.helpers.browser import headless_chromium, require_chromium

pytestmark = pytest.mark.e2e

CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.fixture(scope="module")
def signin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigninStack]:
    require_chromium()
    running = start_signin_stack(tmp_path_factory.mktemp("signin-browser"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def browser():
    driver = headless_chromium()
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def register(signin: SigninStack, name: str) -> str:
    r = httpx.post(f"{signin.url}/oauth/register", timeout=10, json={
        "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none", "client_name": name})
    return r.json()["client_id"]


def authorize_url(signin: SigninStack, client_id: str, scope: str = "tools:calendar invoices:read") -> str:
    return f"{signin.url}/oauth/authorize?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "st8",
        "code_challenge": CHALLENGE, "code_challenge_method": "S256", "resource": f"{signin.url}/mcp",
        "scope": scope})


def to_our_consent_page(driver, signin: SigninStack, url: str, login: str) -> None:
    """Sign in at the upstream provider like a person: type the login, press the buttons."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    for _ in range(10):
        if driver.current_url.startswith(f"{signin.url}/oauth/callback"):
            return
        logins = driver.find_elements(By.NAME, "login")
        if logins:
            logins[0].send_keys(login)
            driver.find_element(By.NAME, "password").send_keys("any")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        time.sleep(0.3)
    raise AssertionError(f"never reached the consent page: {driver.current_url}")


def wait_for(driver, prefix: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if driver.current_url.startswith(prefix):
            return driver.current_url
        time.sleep(0.1)
    raise AssertionError(f"not at {prefix}: {driver.current_url}")


def fits_the_screen(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_a_person_reads_the_consent_page_on_a_phone_and_allows(signin, browser):
    from selenium.webdriver.common.by import By

    client_id = register(signin, "Calendar Helper")
    to_our_consent_page(browser, signin, authorize_url(signin, client_id), "oscar")
    assert browser.title == "Allow access?"
    heading = browser.find_element(By.TAG_NAME, "h1").text
    assert heading == "Allow Calendar Helper to act as you?"
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Signed in as oscar@example.com" in body and "tools:calendar" in body and "invoices:read" in body
    assert "read your calendar" in body and "127.0.0.1:53682" in body  # where the answer goes
    assert browser.find_elements(By.TAG_NAME, "script") == [] and fits_the_screen(browser)
    allow = browser.find_element(By.CSS_SELECTOR, "button[value=allow]")
    assert allow.is_displayed() and allow.size["height"] >= 30  # a tappable button
    allow.click()
    final = wait_for(browser, REDIRECT)
    params = {k: v[0] for k, v in parse_qs(urlsplit(final).query).items()}
    assert params["state"] == "st8" and params["iss"] == signin.url and params["code"]


def test_deny_sends_access_denied_back_to_the_client(signin, browser):
    from selenium.webdriver.common.by import By

    client_id = register(signin, "Nosy App")
    to_our_consent_page(browser, signin, authorize_url(signin, client_id), "dana")
    browser.find_element(By.CSS_SELECTOR, "button[value=deny]").click()
    params = {k: v[0] for k, v in parse_qs(urlsplit(wait_for(browser, REDIRECT)).query).items()}
    assert params["error"] == "access_denied" and params["iss"] == signin.url and "code" not in params


def test_a_hostile_client_name_is_shown_as_text(signin, browser):
    from selenium.webdriver.common.by import By

    client_id = register(signin, "<img src=x onerror=alert(1)>Evil")
    to_our_consent_page(browser, signin, authorize_url(signin, client_id), "vera")
    assert "<img src=x onerror=alert(1)>Evil" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_elements(By.TAG_NAME, "img") == []


def test_an_unknown_client_gets_an_error_page_and_stays_here(signin, browser):
    from selenium.webdriver.common.by import By

    browser.get(authorize_url(signin, "no-such-client"))
    assert browser.current_url.startswith(f"{signin.url}/oauth/authorize")
    assert browser.title == "Sign-in error"
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Sign-in cannot continue" in text and "invalid_client" in text and fits_the_screen(browser)
