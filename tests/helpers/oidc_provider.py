"""A real upstream OIDC provider for the sign-in tests: node ``oidc-provider`` from the npm
registry, installed on first use into ``.cache/oidc-provider`` (pinned in
tests/e2e/upstream_idp/package.json), with one static client and no dynamic registration.

``require_oidc_provider()`` skips the calling test with a message when node/npm are missing or
the install fails; ``OidcProvider`` runs it on a free port.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from authz.dev.stack import ROOT, ManagedProcess, free_port, http_ok

SOURCE = ROOT / "tests" / "e2e" / "upstream_idp"
CACHE = ROOT / ".cache" / "oidc-provider"


def _pinned() -> str:
    return json.loads((SOURCE / "package.json").read_text())["dependencies"]["oidc-provider"]


def _installed() -> str | None:
    try:
        return json.loads((CACHE / "node_modules" / "oidc-provider" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def require_oidc_provider() -> Path:
    """The directory to run the provider from, installing it when needed; skips without npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the upstream OIDC provider of the sign-in tests "
                    "(Debian: apt-get install nodejs npm); the test installs oidc-provider from npm itself")
    CACHE.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCE / "package.json", CACHE / "package.json")
    shutil.copy(SOURCE / "idp.mjs", CACHE / "idp.mjs")
    if _installed() != _pinned():
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--omit=dev"], cwd=CACHE,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or _installed() != _pinned():
            pytest.skip(f"npm install oidc-provider failed (is the npm registry reachable?): {done.stderr[-500:]}")
    return CACHE


class OidcProvider:
    def __init__(self, *, client_id: str, client_secret: str, redirect_uri: str, port: int | None = None) -> None:
        self.directory = require_oidc_provider()
        self.port = port or free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.client_id = client_id
        self.client_secret = client_secret
        self.proc = ManagedProcess("oidc-provider", ["node", "idp.mjs", str(self.port), client_id, client_secret,
                                                     redirect_uri], cwd=self.directory)

    def start(self) -> OidcProvider:
        self.proc.start()
        try:
            self.proc.wait_ready(lambda: http_ok(f"{self.issuer}/.well-known/openid-configuration"), timeout=30)
        except BaseException:
            self.proc.stop()
            raise
        return self

    def stop(self) -> None:
        self.proc.stop()
