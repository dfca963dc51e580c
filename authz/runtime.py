"""What is in force right now: config, pipeline and store, swapped atomically on reload.

Requests read ``runtime.pipeline`` once at their start, so a reload never changes the rules
half-way through a request; the old pipeline is closed after in-flight work had time to end.
A bad file never replaces a good one: it is logged with its key paths and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from authz import metrics
from authz.assembly import Shared, build_pipeline
from authz.config import Config, load_config
from authz.errors import ConfigError
from authz.pipeline import Pipeline
from authz.store import Store, StoreUnavailable, build_store

if TYPE_CHECKING:
    from authz.workers.peers import Peers

log = logging.getLogger("authz.runtime")

RETIRE_AFTER_SECONDS = 30.0


def key_files(config: Config) -> list[Path]:
    """Files the config points at whose contents matter as much as the config's own: the
    assertion signing keys and the audit signing key (mounted Secrets, rotated in place)."""
    paths = [Path(p) for p in config.identity.assertion.key_files]
    if config.audit.signing_key_file:
        paths.append(Path(config.audit.signing_key_file))
    return paths


def keys_digest(config: Config) -> str:
    h = hashlib.sha256()
    for path in key_files(config):
        try:
            h.update(path.read_bytes())
        except OSError:
            h.update(b"\0missing")  # reading it is the build's job, which says what is wrong
        h.update(b"\0")
    return h.hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Generation:
    """One loaded config and everything built from it."""

    config: Config
    sha256: str
    pipeline: Pipeline
    store: Store
    loaded_at: float
    keys_digest: str = ""  # of the key files the config names: a rotated key file is a change too


@dataclasses.dataclass(slots=True)
class ComponentHealth:
    ok: bool
    detail: str = ""


class Runtime:
    def __init__(self, config_path: str | os.PathLike[str], *, config: Config | None = None,
                 sha256: str = "",
                 pipeline_factory: Callable[[Config, Store], Pipeline] | None = None,
                 adjust: Callable[[Config], Config] | None = None) -> None:
        self.config_path = Path(config_path)
        # Applied to every config loaded (a worker names its own audit instance, on reload too).
        self._adjust = adjust or (lambda c: c)
        self.peers: Peers | None = None  # the other workers, when this process is one of several
        self.shared = Shared()  # outlives every generation: signing keys, bodies between Check and Process
        self._pipeline_factory = pipeline_factory or functools.partial(build_pipeline, shared=self.shared)
        self._initial = (config, sha256)
        self.current: Generation | None = None
        self.draining = False
        self.last_reload_error: str = ""
        self.store_health = ComponentHealth(ok=True)
        self._file_signature: tuple[object, ...] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Generations replaced by a reload and not closed yet: a stop closes them too (their
        # pipelines may hold the last reference to an audit log that must be sealed).
        self._retiring: list[tuple[Generation, bool]] = []
        self._reload_lock = asyncio.Lock()

    @property
    def last_reload_error(self) -> str:
        return self._last_reload_error

    @last_reload_error.setter
    def last_reload_error(self, error: str) -> None:
        # The gauge stays 1 for as long as the refused file stays: an alert can last as long.
        self._last_reload_error = error
        metrics.CONFIG_RELOAD_FAILING.set(1 if error else 0)

    # --- access used on the request path ---------------------------------------------------------

    @property
    def pipeline(self) -> Pipeline:
        assert self.current is not None, "runtime not started"
        return self.current.pipeline

    @property
    def config(self) -> Config:
        assert self.current is not None, "runtime not started"
        return self.current.config

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the config (raises ``ConfigError``) and build the first generation."""
        config, sha = self._initial
        if config is None:
            config, sha = load_config(self.config_path)
        config = self._adjust(config)
        self._install(await self._build(config, sha, previous=None))
        self._file_signature = self._signature()
        metrics.CONFIG_RELOADS.labels(result="success").inc()

    async def _build(self, config: Config, sha: str, previous: Generation | None,
                     digest: str | None = None) -> Generation:
        if previous is not None and previous.config.store == config.store:
            store = previous.store
        else:
            store = build_store(config.store)
        try:
            pipeline = self._pipeline_factory(config, store)
            await pipeline.start()
        except Exception:
            if previous is None or store is not previous.store:
                await store.close()
            raise
        return Generation(config, sha, pipeline, store, time.time(),
                          keys_digest(config) if digest is None else digest)

    def _install(self, gen: Generation) -> None:
        old, self.current = self.current, gen
        metrics.CONFIG_LAST_SUCCESS.set(gen.loaded_at)
        if old is not None:
            if old.sha256[:12] != gen.sha256[:12]:
                metrics.CONFIG_INFO.remove(old.sha256[:12])
            self._retiring.append((old, old.store is gen.store))
            self._spawn(self._retire(old, keep_store=old.store is gen.store))
        metrics.CONFIG_INFO.labels(sha256=gen.sha256[:12]).set(1)
        metrics.COMPONENT_UP.labels(component="config").set(1)

    async def _retire(self, old: Generation, *, keep_store: bool) -> None:
        await asyncio.sleep(RETIRE_AFTER_SECONDS)
        self._retiring = [r for r in self._retiring if r[0] is not old]
        await self._close_generation(old, keep_store=keep_store)

    @staticmethod
    async def _close_generation(gen: Generation, *, keep_store: bool) -> None:
        try:
            await gen.pipeline.close()
        finally:
            if not keep_store:
                await gen.store.close()

    async def reload(self, *, cause: str = "file changed") -> bool:
        """Load the file again; swap in the new generation only if it is entirely valid."""
        async with self._reload_lock:
            assert self.current is not None
            try:
                config, sha = await asyncio.to_thread(load_config, self.config_path)
                config = self._adjust(config)
                digest = await asyncio.to_thread(keys_digest, config)
                if sha == self.current.sha256 and digest == self.current.keys_digest:
                    log.info("config unchanged (%s)", cause)
                    self.last_reload_error = ""
                    return True
                gen = await self._build(config, sha, previous=self.current, digest=digest)
            except ConfigError as exc:
                self.last_reload_error = str(exc)
                metrics.CONFIG_RELOADS.labels(result="failure").inc()
                log.error("config reload refused, keeping the config in force (%s):\n%s",
                          self.current.sha256[:12], exc, extra={"event": "config_reload_failed"})
                return False
            except Exception as exc:
                self.last_reload_error = f"{type(exc).__name__}: {exc}"
                metrics.CONFIG_RELOADS.labels(result="failure").inc()
                log.exception("config reload failed, keeping the config in force")
                return False
            restart_needed = [k for k in ("grpc_address", "http_address", "max_concurrent_streams", "workers")
                              if getattr(config.server, k) != getattr(self.current.config.server, k)]
            if restart_needed:
                log.warning("config changed server.%s; that takes effect only after a restart",
                            ", server.".join(restart_needed))
            self._install(gen)
            self.last_reload_error = ""
            metrics.CONFIG_RELOADS.labels(result="success").inc()
            log.info("config reloaded (%s): sha256 %s", cause, sha[:12],
                     extra={"event": "config_reloaded"})
            return True

    def _signature(self) -> tuple[object, ...] | None:
        # os.stat follows symlinks: a Kubernetes ConfigMap update swaps the ..data symlink, which
        # changes the inode we see here even when size and mtime happen to match. The key files
        # the config names are watched the same way (a Secret rotated in place).
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        sig: tuple[object, ...] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, os.path.realpath(self.config_path))
        for path in key_files(self.current.config) if self.current is not None else ():
            try:
                k = os.stat(path)
                sig += (k.st_dev, k.st_ino, k.st_size, k.st_mtime_ns)
            except OSError:
                sig += (None,)
        return sig

    async def watch(self) -> None:
        """Poll the file; reload when what it points at changes."""
        while True:
            interval = self.config.reload.poll_seconds
            await asyncio.sleep(interval if interval > 0 else 5.0)
            if interval <= 0:
                continue
            sig = await asyncio.to_thread(self._signature)
            if sig is None:
                if self._file_signature is not None:
                    log.warning("config file %s is missing; keeping the config in force",
                                self.config_path)
                self._file_signature = None
                continue
            if sig != self._file_signature:
                self._file_signature = sig
                await self.reload()

    async def monitor_store(self) -> None:
        while True:
            store = self.current.store if self.current else None
            if store is not None:
                try:
                    partial = await store.check_health()  # a Cluster master down: its slots only
                    if not self.store_health.ok:
                        log.info("store %s is reachable again", store.backend)
                    if partial and partial != self.store_health.detail:
                        log.error("store %s: %s", store.backend, partial)
                    self.store_health = ComponentHealth(ok=True, detail=partial)
                except StoreUnavailable as exc:
                    if self.store_health.ok:
                        log.error("store %s is unreachable: %s", store.backend, exc)
                    self.store_health = ComponentHealth(ok=False, detail=str(exc))
                metrics.COMPONENT_UP.labels(component="store").set(1 if self.store_health.ok else 0)
            await asyncio.sleep(self.config.store.health_interval_seconds if self.current else 1)

    def readiness(self) -> tuple[bool, dict[str, dict[str, object]]]:
        components: dict[str, dict[str, object]] = {}
        cfg_ok = self.current is not None
        components["config"] = {"ok": cfg_ok, "sha256": self.current.sha256[:12] if self.current else "",
                                "last_reload_error": self.last_reload_error}
        store = self.current.store if self.current else None
        components["store"] = {"ok": self.store_health.ok,
                               "backend": store.backend if store is not None else "",
                               "detail": self.store_health.detail}
        components["draining"] = {"ok": not self.draining}
        store_required = bool(self.current and self.current.config.store.required_for_readiness)
        ready = cfg_ok and not self.draining and (self.store_health.ok or not store_required)
        # Stages that depend on something outside (identity: each issuer's keys) report it.
        for stage in self.current.pipeline.stages if self.current else ():
            health = getattr(stage, "health", None)
            if health is not None:
                state = components[stage.name] = health()
                ready = ready and (bool(state["ok"]) or not state.get("required", True))
        return ready, components

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start_background(self) -> None:
        self._spawn(self.watch())
        self._spawn(self.monitor_store())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        retiring, self._retiring = self._retiring, []
        for gen, keep_store in retiring:  # oldest first; the current one last (its store too)
            try:
                await self._close_generation(gen, keep_store=keep_store)
            except Exception:
                log.exception("closing a replaced configuration failed")
        if self.current is not None:
            await self._close_generation(self.current, keep_store=False)
