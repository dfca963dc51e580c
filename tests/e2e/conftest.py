"""End-to-end fixtures: real Envoy, the real sidecar, real upstreams, on free ports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from authz.dev.issuer import mint_token
from authz.dev.stack import REFERENCE_CONFIG, Stack

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an e2e test (`pytest -m "not e2e"` runs the quick rest).
    A ``pytestmark`` here would not do it: conftest marks do not reach test modules."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test through the stack shows what each process said last."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        running = getattr(item, "funcargs", {}).get("stack")
        if isinstance(running, Running):
            report.sections.append(("stack output (last lines per process)", running.stack.logs()))


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


@contextlib.contextmanager
def running_stack(config: Path = REFERENCE_CONFIG) -> Iterator[Running]:
    """A stack with ``config``, stopped when the block ends."""
    s = start_stack(config)
    running = Running(s)
    try:
        yield running
    finally:
        running.http.close()
        s.stop()


@pytest.fixture(scope="module")
def stack() -> Iterator[Running]:
    """The reference configuration (deploy/authz/authz.yaml), as `make run` uses it."""
    with running_stack() as running:
        yield running


class ThreadedIssuer:
    """authz.identity.testing.FakeIssuer on its own event loop thread, usable from sync tests:
    mint tokens, rotate keys, take it down."""

    def __init__(self, audience: str) -> None:
        import asyncio
        import threading

        from authz.identity.testing import FakeIssuer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = FakeIssuer(audience=audience)
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)

    def __getattr__(self, name: str):
        return getattr(self.fake, name)

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body
        self.text = body.decode("utf-8", "replace")


def raw_request(port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"",
                timeout: float = 10) -> RawResponse:
    """HTTP/1.1 exactly as written: for hostile inputs a well-behaved client refuses to send
    (header values with trailing spaces, repeated headers, odd schemes)."""
    import socket

    lines = [f"{method} {path} HTTP/1.1", f"host: 127.0.0.1:{port}", "connection: close",
             f"content-length: {len(body)}"] + [f"{k}: {v}" for k, v in headers]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        text = "\r\n".join(lines)
        try:
            head = text.encode("latin-1")
        except UnicodeEncodeError:  # beyond latin-1 (a zero-width space): the UTF-8 bytes
            head = text.encode("utf-8")
        sock.sendall(head + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        parsed[k.strip().lower()] = v.strip()
    if parsed.get("transfer-encoding") == "chunked":
        out, buf = b"", rest
        while buf:
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line or b"0", 16)
            if size == 0:
                break
            out, buf = out + buf[:size], buf[size + 2:]
        rest = out
    return RawResponse(int(status_line.split()[1]), parsed, rest)
