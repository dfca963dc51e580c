"""Start N workers, keep them running, pass signals on, serve the one HTTP port.

Each worker is ``authz serve`` with ``--worker I`` (its gRPC port from ``plan.worker_addresses``,
its HTTP on a private Unix socket, its audit chain ``<base>-wI``). A worker that exits while we
are not stopping is counted (``authz_worker_restarts_total``) and started again (backoff up to
5 s). SIGHUP is passed to every worker (each also polls the config file itself); SIGTERM/SIGINT
too, and the supervisor exits once they all have (each drains as configured), answering
``/readyz`` from their drain meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from authz.identity.shared_keys import SHARED_KEYS_ENV
from authz.workers.front import Front
from authz.workers.plan import socket_path

log = logging.getLogger("authz.workers")

STABLE_SECONDS = 30.0  # a worker that ran this long restarts without backoff


class Supervisor:
    def __init__(self, config_path: str, *, addresses: list[str], http_address: str,
                 instance_base: str, extra_args: list[str] | None = None) -> None:
        self.config_path = config_path
        self.addresses = addresses
        self.http_address = http_address
        self.instance_base = instance_base
        self.extra_args = extra_args or []
        self.run_dir = Path(tempfile.mkdtemp(prefix="authz-workers-"))  # 0700: ours alone
        self.sockets = {i: socket_path(self.run_dir, i) for i in range(len(addresses))}
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.front = Front(self.sockets, alive=self._alive, pid=self._pid)
        self._stopping = False
        self._stop = asyncio.Event()
        self.http_port = 0

    def _alive(self, index: int) -> bool:
        proc = self.procs.get(index)
        return proc is not None and proc.returncode is None

    def _pid(self, index: int) -> int | None:
        proc = self.procs.get(index)
        return proc.pid if proc is not None and proc.returncode is None else None

    def argv(self, index: int) -> list[str]:
        return [sys.executable, "-m", "authz", "serve", "--config", self.config_path,
                "--grpc-address", self.addresses[index], "--worker", str(index),
                "--workers", str(len(self.addresses)), "--worker-dir", str(self.run_dir),
                "--instance-base", self.instance_base, *self.extra_args]

    async def _keep(self, index: int) -> None:
        backoff = 0.1
        while True:
            with contextlib.suppress(FileNotFoundError):
                self.sockets[index].unlink()
            started = time.monotonic()
            proc = self.procs[index] = await asyncio.create_subprocess_exec(
                *self.argv(index), stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, SHARED_KEYS_ENV: str(self.run_dir)})
            code = await proc.wait()
            if self._stopping:
                return
            self.front.retire(index)
            if time.monotonic() - started > STABLE_SECONDS:
                backoff = 0.1
            log.error("worker %d (pid %d) exited with %s; starting it again in %.1fs", index, proc.pid,
                      code, backoff, extra={"fields": {"event": "worker_restarted", "worker": index,
                                                       "exit_code": code}})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def request_stop(self) -> None:
        self._stopping = True
        self._signal_all(signal.SIGTERM)  # a second one makes the workers skip their drain
        self._stop.set()

    async def run(self) -> int:
        runner = web.AppRunner(self.front.app(), access_log=None, handle_signals=False)
        await runner.setup()
        host, _, port = self.http_address.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        sockets = getattr(site._server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else int(port)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._signal_all(signal.SIGHUP))
        keepers = [loop.create_task(self._keep(i)) for i in range(len(self.addresses))]
        log.info("authz supervisor: %d workers on %s, http %s:%d", len(self.addresses),
                 ", ".join(self.addresses), host, self.http_port,
                 extra={"fields": {"event": "listening", "workers": len(self.addresses),
                                   "http_port": self.http_port}})
        try:
            await self._stop.wait()
            await asyncio.gather(*keepers, return_exceptions=True)
        finally:
            for task in keepers:
                task.cancel()
            self._signal_all(signal.SIGKILL)
            await self.front.close()
            await runner.cleanup()
            shutil.rmtree(self.run_dir, ignore_errors=True)
        log.info("stopped")
        return 0


async def orphan_watch(parent: int, interval: float = 1.0) -> None:
    """In a worker: stop (as on SIGTERM) once the supervisor is gone (a kill -9 of it), so no
    orphan keeps the worker's port from the next supervisor."""
    while True:
        await asyncio.sleep(interval)
        if os.getppid() != parent:
            break
    log.error("the supervisor (pid %d) is gone: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)
