"""Fixtures for the demo tests: the aiohttp apps through aiohttp's test client, the MCP app on a
free port under uvicorn, and the programs themselves as child processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from aiohttp.test_utils import TestClient, TestServer

from authz.dev import llm, mcp_server

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def model() -> AsyncIterator[TestClient]:
    """The 'medical' demo model."""
    async with TestClient(TestServer(llm.build_app("medical"))) as client:
        yield client


@pytest.fixture
async def mcp_url() -> AsyncIterator[str]:
    """The demo MCP server on a free port; yields the endpoint URL."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(mcp_server.build_app(), log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "the MCP server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.contextmanager
def program(module: str, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Run ``python -m module args`` until its one "listening on URL" line; yield (URL, lines).

    On exit it gets SIGTERM and must stop cleanly (exit 0) having written nothing to stdout.
    """
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    lines: list[str] = []
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            while not any("listening on" in line for line in lines):
                assert sel.select(max(0.0, deadline - time.monotonic())), f"{module} never said it listens"
                line = proc.stderr.readline()
                assert line, f"{module} exited: {lines}"
                lines.append(line.rstrip("\n"))
        url = re.search(r"listening on (http://\S+)", lines[-1]).group(1)
        yield url, lines
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert out == "" and err == "", (out, err)
