"""`make run`'s store: REDIS_URL when set, else its own redis-server on a documented port (so the
walk-through's `authz limits show` reads what the sidecar counted), else memory, said plainly."""

from __future__ import annotations

import socket

import pytest
import redis

from authz.dev import stack as devstack
from authz.dev.stack import demo_store, free_port


def test_redis_url_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    url, proc, line = demo_store(tmp_path)
    assert (url, proc) == ("redis://127.0.0.1:1/0", None) and "REDIS_URL" in line


def test_memory_when_no_redis_server(monkeypatch, tmp_path):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(devstack.shutil, "which", lambda name: None)
    url, proc, line = demo_store(tmp_path)
    assert (url, proc) == ("", None)
    assert "in-process memory" in line and "authz limits show" in line


def test_starts_its_own_redis_on_the_documented_port(monkeypatch, tmp_path):
    if devstack.shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    monkeypatch.delenv("REDIS_URL", raising=False)
    port = free_port()
    monkeypatch.setattr(devstack, "DEMO_REDIS_PORT", port)  # the real one is 6390; tests use free ports
    url, proc, line = demo_store(tmp_path)
    try:
        assert url == f"redis://127.0.0.1:{port}/0" and f"export REDIS_URL={url}" in line
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
    finally:
        proc.stop()


def test_refuses_a_taken_port_instead_of_reading_someone_elses_redis(monkeypatch, tmp_path):
    if devstack.shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    monkeypatch.delenv("REDIS_URL", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        monkeypatch.setattr(devstack, "DEMO_REDIS_PORT", taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="already in use"):
            demo_store(tmp_path)


def test_the_walk_through_reads_the_port_make_run_uses():
    readme = (devstack.ROOT / "README.md").read_text()
    assert f"REDIS_URL=redis://127.0.0.1:{devstack.DEMO_REDIS_PORT}/0 authz limits show" in readme
    assert "redis://127.0.0.1:6379" not in readme
