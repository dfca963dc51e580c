"""Shared fixtures: a real Redis (never the machine's own on 6379)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.dev.stack import start_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """REDIS_URL when set (CI with a Redis of its own), else a private redis-server on a free port."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    url, proc = start_redis(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield url
    finally:
        proc.stop()
