"""Envoy configs for the bench: the reference config with the route answering directly (the
Check scenarios), or as is with its upstream clusters pointed at a canned upstream (the
whole-path scenarios).

Every Check scenario measures Envoy as deployed (deploy/envoy/envoy.yaml: listener settings, the
ext_authz filter verbatim with its request body, timeouts and failure mode), minus what would
measure something else: the upstream (a Python upstream would be the bottleneck), the ext_proc
hop (Check is what these scenarios compare) and the stdout access log (a pipe we would read).
The whole-path scenarios keep every filter and route of deploy/envoy/envoy.yaml (so a change
there reaches them) and drop only the access log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz.dev.stack import Ports, envoy_binary, render_envoy_config

EXT_AUTHZ = "envoy.filters.http.ext_authz"
EXT_PROC = "envoy.filters.http.ext_proc"
UPSTREAM_CLUSTERS = ("mcp", "general", "medical", "financial")
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"
DIRECT_RESPONSE = {"status": 200, "body": {"inline_string": "ok\n"}}


def _connection_manager(cfg: dict[str, Any]) -> dict[str, Any]:
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                if f["name"] == HCM:
                    hcm: dict[str, Any] = f["typed_config"]
                    return hcm
    raise ValueError("the reference Envoy config has no http_connection_manager")


def bench_edit(*, ext_authz: bool) -> Callable[[dict[str, Any]], None]:
    """Edit the parsed reference config in place: every request answered by a direct response,
    after the reference ext_authz filter when ``ext_authz``, with no other HTTP filter."""
    def edit(cfg: dict[str, Any]) -> None:
        hcm = _connection_manager(cfg)
        names = [f["name"] for f in hcm["http_filters"]]
        if ext_authz and EXT_AUTHZ not in names:
            raise ValueError(f"the reference Envoy config has no {EXT_AUTHZ} filter (it has {names})")
        keep = {ROUTER, EXT_AUTHZ} if ext_authz else {ROUTER}
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] in keep]
        hcm.pop("access_log", None)
        vhosts = hcm["route_config"]["virtual_hosts"]
        vhosts[:] = [{"name": "bench", "domains": ["*"],
                      "routes": [{"match": {"prefix": "/"}, "direct_response": DIRECT_RESPONSE}]}]
    return edit


def render(ports: Ports, *, ext_authz: bool, workers: int = 1) -> str:
    """The bench Envoy config as YAML text, listening on ``ports.envoy``; ext_authz (if any)
    calls the gRPC server on ``ports.authz_grpc`` (and the ports after it, one per worker)."""
    return render_envoy_config(ports, edit=bench_edit(ext_authz=ext_authz), workers=workers)


def path_edit(*, ext_proc: bool) -> Callable[[dict[str, Any]], None]:
    """Edit the parsed reference config in place for a whole-path scenario: no access log, and
    without ``ext_proc`` no ext_proc filter (the Check-only baseline of the same path)."""
    def edit(cfg: dict[str, Any]) -> None:
        hcm = _connection_manager(cfg)
        names = [f["name"] for f in hcm["http_filters"]]
        for needed in (EXT_AUTHZ, EXT_PROC):
            if needed not in names:
                raise ValueError(f"the reference Envoy config has no {needed} filter (it has {names})")
        if not ext_proc:
            hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != EXT_PROC]
        hcm.pop("access_log", None)
    return edit


def render_path(ports: Ports, upstream: int, *, ext_proc: bool = True, workers: int = 1) -> str:
    """The reference Envoy config as deployed, listening on ``ports.envoy``, its sidecar clusters
    on ``ports.authz_grpc``/``authz_http`` and every upstream cluster (MCP server, models) sent
    to the canned upstream on port ``upstream``."""
    to_upstream = dataclasses.replace(ports, **{name: upstream for name in UPSTREAM_CLUSTERS})
    return render_envoy_config(to_upstream, edit=path_edit(ext_proc=ext_proc), workers=workers)


def envoy_argv(config: Path, *, concurrency: int) -> list[str]:
    return [envoy_binary(), "-c", str(config), "--concurrency", str(concurrency), "--log-level", "warning",
            "--disable-hot-restart"]
