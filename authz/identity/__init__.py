"""Identity: verify who is calling (JWT from any configured issuer, or an API key), bind the
person and the LLM client to the request, and prove it to the backend with a signed assertion.

Public API (imported lazily, so ``authz.identity.assertion`` can share ``authz.identity.jose`` without
pulling in aiohttp or Prometheus on a backend)::

    IdentityConfig                        the ``identity:`` config section
    build_identity_stage(cfg, ...)        -> IdentityStage (a pipeline Stage; async close())
    protected_resource_metadata(cfg, p)   RFC 9728 document for request path p, or None
    metadata_paths(cfg)                   the paths that serve it
    hash_api_key(key)                     the digest to put in api_keys.keys[].sha256
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IdentityConfig": "authz.identity.config",
    "IssuerConfig": "authz.identity.config",
    "hash_api_key": "authz.identity.config",
    "IdentityStage": "authz.identity.stage",
    "build_identity_stage": "authz.identity.stage",
    "protected_resource_metadata": "authz.identity.metadata",
    "metadata_paths": "authz.identity.metadata",
    "metadata_url": "authz.identity.metadata",
    "is_metadata_path": "authz.identity.metadata",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'authz.identity' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
