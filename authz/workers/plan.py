"""How many workers, and where each listens."""

from __future__ import annotations

import math
import os
from pathlib import Path

import aiohttp

from authz.config import Config


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity, bounded by the cgroup v2 ``cpu.max`` quota
    (a container's CPU limit), rounded up; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max" and float(period) > 0:
            cpus = min(cpus, math.ceil(float(quota) / float(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def worker_count(config: Config, override: int | None = None) -> int:
    """``--workers``, else ``server.workers``, else the CPUs when a Redis store is configured
    (more than one worker needs it; config validation refuses an explicit N > 1 without it)."""
    if override is not None:
        return override
    if config.server.workers is not None:
        return config.server.workers
    return available_cpus() if config.store.redis_url else 1


def worker_addresses(grpc_address: str, http_address: str, count: int) -> list[str]:
    """Worker i listens on the i-th port from ``grpc_address``'s upward, skipping the HTTP port
    (the defaults 9001 and 9002 give 9001, 9003, 9004, ...). Envoy's ``authz`` cluster lists the
    same ports."""
    host, _, port = grpc_address.rpartition(":")
    http_host, _, http_port = http_address.rpartition(":")
    skip = int(http_port) if http_host in (host, "0.0.0.0", "::", "[::]") or host in ("0.0.0.0", "[::]") else -1
    if int(port) == 0:  # each picks a free port (tests that read them back)
        return [grpc_address] * count
    out: list[str] = []
    candidate = int(port)
    while len(out) < count:
        if candidate != skip:
            out.append(f"{host}:{candidate}")
        candidate += 1
    return out


def instance_base(config: Config) -> str:
    """What each worker's audit instance is named after: ``server.instance_id`` or host-pid of
    the supervisor (in a container pid 1, so a restarted worker continues its chain)."""
    import socket

    return config.server.instance_id or f"{socket.gethostname()}-{os.getpid()}"


def worker_instance(base: str, index: int) -> str:
    return f"{base}-w{index}"


def socket_path(run_dir: Path, index: int) -> Path:
    """The worker's private HTTP socket (readiness, metrics, keys, hand-over of what Check kept)."""
    return run_dir / f"w{index}.sock"


def socket_session(path: Path, *, timeout: float, decompress: bool = True) -> aiohttp.ClientSession:
    """An HTTP client for a worker's private socket (``socket_path``). It keeps no cookies: a
    caller's never reach the next request."""
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)),
                                 cookie_jar=aiohttp.DummyCookieJar(),
                                 timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=decompress)
