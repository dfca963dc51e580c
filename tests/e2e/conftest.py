"""End-to-end fixtures: real Envoy, the real sidecar, real upstreams, on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from authz.demo.issuer import mint_token
from authz.devstack import REFERENCE_CONFIG, Stack

pytestmark = pytest.mark.e2e


class Running:
    """A started stack plus helpers to mint tokens and send requests through Envoy."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = stack.url
        self.http = httpx.Client(base_url=stack.url, timeout=10)

    def token(self, sub: str, *, roles=(), scopes=(), client: str = "chatgpt", **kw) -> str:
        return mint_token(sub=sub, roles=roles, scopes=scopes, client=client, issuer=self.stack.issuer_url,
                          dev_dir=self.stack.workdir / "dev", **kw)

    def auth(self, token: str, **headers: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}", **headers}


def start_stack(config: Path = REFERENCE_CONFIG, **kw) -> Stack:
    return Stack(authz_config=config, **kw).start()


@pytest.fixture(scope="module")
def stack() -> Iterator[Running]:
    """The reference configuration (deploy/authz/authz.yaml), as `make run` uses it."""
    s = start_stack()
    running = Running(s)
    try:
        yield running
    finally:
        running.http.close()
        s.stop()
