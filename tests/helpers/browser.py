"""A real headless browser for page tests: Debian's chromium and chromedriver, driven by
selenium. ``require_chromium()`` installs them with apt-get when missing and running as root
(the project's test set-up, as CI runs), and otherwise skips the test saying how to get them."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest

PACKAGES = ["chromium", "chromium-driver"]


def _binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def require_chromium() -> tuple[str, str]:
    browser, driver = _binaries()
    if (browser is None or driver is None) and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], env=env,
                       capture_output=True, timeout=900)
        browser, driver = _binaries()
    if browser is None or driver is None:
        pytest.skip("the page tests need Debian's chromium and chromedriver: "
                    "apt-get install chromium chromium-driver (done automatically when run as root)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("the page tests need selenium (pip install -e '.[dev]')")
    return browser, driver


def headless_chromium(*, width: int = 390, height: int = 844) -> Any:
    """A phone-sized headless chromium (the default is an iPhone-sized viewport)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
