"""Which paths carry which protocol: the ``policy.protocols`` part of the config file. The
protocol of a path alone decides how a request's body is read (``authz.request.view``)."""

from __future__ import annotations

from typing import Literal

from authz.request.view import DEFAULT_ROUTES
from authz.schema import Model


class ProtocolRoute(Model):
    """Which paths carry which protocol, so the body is parsed (and required) accordingly."""

    paths: tuple[str, ...]
    protocol: Literal["mcp", "llm"]
    hosts: tuple[str, ...] = ()
    # llm: paths (wildcards allowed) of other APIs let through unmetered and without a model
    # check, e.g. ["/v1/files*", "/v1/batches*"]; a POST to any other unknown path is refused.
    unmetered_paths: tuple[str, ...] = ()


DEFAULT_PROTOCOLS = tuple(ProtocolRoute(paths=r.paths, protocol=r.protocol)  # type: ignore[arg-type]
                          for r in DEFAULT_ROUTES)
