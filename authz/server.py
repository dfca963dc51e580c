"""``authz serve``: one grpc.aio server (ext_authz, ext_proc, health, reflection) and one HTTP
server (metrics, health, published documents), sharing one event loop and one runtime.

Shutdown on SIGTERM: mark not-ready (gRPC health NOT_SERVING, /readyz 503), keep answering for
``drain_seconds`` so Envoy and Kubernetes notice, then stop accepting RPCs and give in-flight
ones ``grace_seconds`` to finish. A second signal skips the drain.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

import grpc
from aiohttp import web
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authz import __version__, metrics, tracing
from authz.config import Config
from authz.envoy.servicers import AuthorizationServicer, ExternalProcessorServicer
from authz.envoy.servicers import add_process_to_server as add_process_servicer
from authz.envoy.servicers import add_to_server as add_check_servicer
from authz.http import build_app
from authz.runtime import Runtime
from authz.workers.front import trust_front_peer
from authz.workers.peers import install as install_peer_routes

log = logging.getLogger("authz.server")

SERVICE_NAMES = (
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
    external_processor_pb2.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name,
)


class Server:
    def __init__(self, runtime: Runtime, *, grpc_address: str, http_address: str,
                 http_socket: str = "") -> None:
        self.runtime = runtime
        self.http_socket = http_socket  # a worker serves HTTP on a private socket; the supervisor the port
        self.grpc_address = grpc_address
        self.http_address = http_address
        self.grpc_port = 0
        self.http_port = 0
        self._stop = asyncio.Event()
        self._fast_stop = asyncio.Event()
        self.health: health.aio.HealthServicer | None = None

    async def start(self) -> None:
        cfg: Config = self.runtime.config
        self.grpc = grpc.aio.server(options=[
            ("grpc.max_concurrent_streams", cfg.server.max_concurrent_streams),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ])
        add_check_servicer(AuthorizationServicer(self.runtime), self.grpc)
        add_process_servicer(ExternalProcessorServicer(self.runtime), self.grpc)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        self.grpc_port = self.grpc.add_insecure_port(self.grpc_address)
        if self.grpc_port == 0:
            raise OSError(f"cannot listen for gRPC on {self.grpc_address}")
        await self.grpc.start()
        await self._set_serving(True)

        host, _, port = self.http_address.rpartition(":")
        app = build_app(self.runtime)
        if self.http_socket:
            install_peer_routes(app, self.runtime.shared.stash, self.runtime.shared.placeholders)
            app.middlewares.append(trust_front_peer)
        self._http_runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._http_runner.setup()
        if self.http_socket:
            host, port = self.http_socket, "0"
            await web.UnixSite(self._http_runner, self.http_socket).start()
        else:
            site = web.TCPSite(self._http_runner, host.strip("[]"), int(port), reuse_address=True)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []  # aiohttp keeps the asyncio server private
            self.http_port = sockets[0].getsockname()[1] if sockets else int(port)
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        log.info("authz %s listening: grpc %s:%d, http %s:%d (instance %s, %s event loop)", __version__,
                 self.grpc_address.rpartition(":")[0], self.grpc_port, host, self.http_port,
                 instance_id(cfg), loop, extra={"fields": {"event": "listening", "grpc_port": self.grpc_port,
                                                           "http_port": self.http_port, "event_loop": loop}})

    async def _set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.health is None:
            return
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    def request_stop(self) -> None:
        if self._stop.is_set():
            self._fast_stop.set()
            log.warning("second stop signal: skipping the drain")
        self._stop.set()

    async def wait_and_stop(self) -> None:
        await self._stop.wait()
        cfg = self.runtime.config.server
        self.runtime.draining = True
        metrics.COMPONENT_UP.labels(component="draining").set(0)
        await self._set_serving(False)
        if cfg.drain_seconds and not self._fast_stop.is_set():
            log.info("draining for %.1fs before stopping", cfg.drain_seconds)
            try:
                await asyncio.wait_for(self._fast_stop.wait(), timeout=cfg.drain_seconds)
            except TimeoutError:
                pass
        log.info("stopping: giving in-flight requests up to %.1fs", cfg.grace_seconds)
        await self.grpc.stop(0 if self._fast_stop.is_set() else cfg.grace_seconds)
        await self._http_runner.cleanup()
        if self.runtime.peers is not None:
            await self.runtime.peers.close()
        await self.runtime.close()
        log.info("stopped")


def instance_id(cfg: Config) -> str:
    return cfg.instance_id


def settle_heap() -> None:
    """Everything built so far (config, compiled policy, protos, modules) lives for the whole
    process: move it out of the collector's sight, and collect the young generation less often.
    Requests allocate many short-lived objects; a full scan of the startup heap per cycle was a
    measurable share of every request. (``bench.inprocess`` does the same before it measures.)"""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def serve(runtime: Runtime, *, grpc_address: str | None = None,
                http_address: str | None = None, http_socket: str = "") -> int:
    await runtime.start()
    cfg = runtime.config
    tracing.setup(cfg.tracing, instance=cfg.instance_id)  # process-wide; a reload does not change it
    server = Server(runtime, grpc_address=grpc_address or cfg.server.grpc_address,
                    http_address=http_address or cfg.server.http_address, http_socket=http_socket)
    await server.start()
    metrics.BUILD_INFO.info({"version": __version__})
    metrics.COMPONENT_UP.labels(component="draining").set(1)
    runtime.start_background()
    settle_heap()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.request_stop)
    loop.add_signal_handler(signal.SIGINT, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(
        runtime.reload(cause="SIGHUP")))
    await server.wait_and_stop()
    return 0
