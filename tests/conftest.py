"""Shared fixtures: a real Redis (never the machine's own on 6379)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def cluster_port() -> int:
    """A cluster node's bus listens on port + 10000, so both must be free and port <= 55535."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """Three masters on free ports (no replicas), made a cluster by ``redis-cli --cluster create``.
    ``cluster-require-full-coverage no``: with a master down, the others keep serving their slots
    (Redis's default refuses every command then)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ports: list[int] = []
        self.procs: list[Any] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, i: int, port: int) -> None:
        _, proc = start_redis(self.base / str(i), port=port, extra=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
            "--cluster-require-full-coverage", "no"])
        if i < len(self.procs):
            self.procs[i] = proc
        else:
            self.procs.append(proc)

    def start(self) -> RedisCluster:
        import shutil
        import subprocess

        if shutil.which("redis-cli") is None:
            pytest.fail("redis-cli not found: install redis-tools (apt-get install redis-tools)")
        for i in range(3):
            port = cluster_port()
            self.start_node(i, port)
            self.ports.append(port)
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 20) -> None:
        import subprocess
        import time

        deadline = time.monotonic() + timeout
        info = ""
        while time.monotonic() < deadline:
            info = "".join(subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True,
                                          text=True).stdout for p in self.ports)
            if info.count("cluster_state:ok") == len(self.ports):
                return
            time.sleep(0.2)
        pytest.fail(f"the test cluster did not converge: {info}")

    def slot_owner(self, key: str) -> int:
        """The index of the node serving ``key``."""
        import redis

        client = redis.RedisCluster.from_url(self.url)
        try:
            node = client.get_node_from_key(key)
            return self.ports.index(int(node.port))
        finally:
            client.close()

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(Path(tmp_path_factory.mktemp("cluster")))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
