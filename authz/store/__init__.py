"""Shared state for limits, budgets and approvals: one interface, two implementations.

``RedisStore`` is what replicas share; ``MemoryStore`` is the embedded default when no Redis
URL is configured, with the same semantics inside one process.
"""

from typing import TYPE_CHECKING

from authz.store.base import Store, StoreUnavailable
from authz.store.memory import MemoryStore
from authz.store.redis import RedisStore

if TYPE_CHECKING:
    from authz.config import StoreConfig

__all__ = ["MemoryStore", "RedisStore", "Store", "StoreUnavailable", "build_store"]


def build_store(cfg: "StoreConfig") -> Store:
    import logging

    if cfg.redis_url:
        from authz.store.resp import parse_seed

        return RedisStore(cfg.redis_url, timeout=cfg.timeout_ms / 1000,
                          connect_timeout=cfg.connect_timeout_ms / 1000,
                          max_connections=cfg.max_connections, prefix=cfg.key_prefix,
                          cluster=cfg.cluster, seeds=[parse_seed(s) for s in cfg.cluster_seeds])
    logging.getLogger("authz.store").warning(
        "no store.redis_url configured: using the in-process memory store; rate limits, budgets "
        "and approvals are then per process and are not shared between replicas")
    return MemoryStore(prefix=cfg.key_prefix)
