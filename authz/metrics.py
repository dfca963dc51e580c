"""Every Prometheus metric authz exports, in one place, with bounded label sets.

Label values come from fixed vocabularies (decision, reason codes, stage names, rpc names),
never from request input, so cardinality stays bounded however hostile the traffic.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Info
from prometheus_client.core import HistogramMetricFamily

# Latency buckets centred on what a sidecar hop should cost (tens of µs to tens of ms).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0)

class FastHistogram:
    """A histogram for the request path: no locks (one event loop thread writes it), a bisect
    and two additions per observation, exported like any prometheus_client histogram. The
    stock Histogram takes a lock per bucket update, which costs more than a policy decision."""

    class Child:
        __slots__ = ("bounds", "counts", "sum")

        def __init__(self, bounds: Sequence[float]) -> None:
            self.bounds = bounds
            self.counts = [0] * (len(bounds) + 1)
            self.sum = 0.0

        def observe(self, value: float) -> None:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1
            self.sum += value

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(sorted(buckets))
        self._children: dict[tuple[str, ...], FastHistogram.Child] = {}
        REGISTRY.register(self)

    def labels(self, **labels: str) -> FastHistogram.Child:
        key = tuple(str(labels[n]) for n in self.labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = FastHistogram.Child(self.bounds)
        return child

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            counts = list(child.counts)
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric(list(key), buckets, child.sum)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


_CHILDREN: dict[tuple[object, ...], Any] = {}


def child(metric: Any, **labels: str) -> Any:
    """``metric.labels(**labels)``, resolved once per label set: prometheus_client's own lookup
    costs microseconds, several times a request. Label values are bounded (module docstring),
    so this stays small."""
    key = (metric, *labels.items())
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(**labels)
    return found


BUILD_INFO = Info("authz_build", "Version of the running authz sidecar.")

DECISIONS = Counter(
    "authz_decisions_total", "Check decisions by outcome and stable reason code.",
    ["decision", "reason"])
RPC_SECONDS = FastHistogram(
    "authz_rpc_duration_seconds", "Time spent answering Envoy, per RPC and phase.",
    ["rpc"], buckets=LATENCY_BUCKETS)
STAGE_SECONDS = FastHistogram(
    "authz_stage_duration_seconds", "Time spent in each pipeline stage, per hook.",
    ["stage", "phase"], buckets=LATENCY_BUCKETS)
INFLIGHT = Gauge("authz_inflight_requests", "RPCs being processed right now.", ["rpc"])


class InFlight:
    """A lock-free in-flight count read by the gauge at scrape time (one event loop writes it)."""

    __slots__ = ("count",)

    def __init__(self, rpc: str) -> None:
        self.count = 0
        INFLIGHT.labels(rpc=rpc).set_function(lambda: self.count)

    def inc(self) -> None:
        self.count += 1

    def dec(self) -> None:
        self.count -= 1
PROCESS_STREAMS = Counter(
    "authz_process_streams_total", "ext_proc streams by how they ended.", ["outcome"])

CONFIG_RELOADS = Counter(
    "authz_config_reloads_total", "Config reload attempts by result.", ["result"])
CONFIG_LAST_SUCCESS = Gauge(
    "authz_config_last_reload_success_timestamp_seconds",
    "Unix time of the last successful config load.")
CONFIG_RELOAD_FAILING = Gauge(
    "authz_config_reload_failing",
    "1 while the config file on disk is refused (the last good config serves); 0 once a load succeeds.")
CONFIG_INFO = Gauge(
    "authz_config_info", "The config in force (value 1), labelled by the file's SHA-256 prefix.",
    ["sha256"])

STORE_ERRORS = Counter(
    "authz_store_errors_total", "Store operations that failed or timed out.", ["backend", "op"])
STORE_SECONDS = FastHistogram(
    "authz_store_operation_duration_seconds", "Store round trip time.", ["backend", "op"],
    buckets=LATENCY_BUCKETS)

COMPONENT_UP = Gauge(
    "authz_component_up", "1 if the component is healthy (config, store, draining).",
    ["component"])

# Identity. The ``issuer`` label is the configured issuer *name*: bounded by the config.
JWKS_FETCHES = Counter(
    "authz_jwks_fetches_total",
    "Fetches of an issuer's discovery document and JWK set, by result "
    "(ok, http_error, timeout, network_error, invalid).",
    ["issuer", "result"])
JWKS_REFETCH_SUPPRESSED = Counter(
    "authz_jwks_refetch_suppressed_total",
    "Unknown-kid refetches skipped because the issuer was fetched too recently.",
    ["issuer"])
JWKS_KEYS = Gauge("authz_jwks_keys", "Usable keys currently held per issuer.", ["issuer"])
JWKS_LAST_SUCCESS = Gauge(
    "authz_jwks_last_success_timestamp_seconds",
    "Unix time of the last successful JWK set fetch per issuer.", ["issuer"])
TOKEN_CACHE = Counter(
    "authz_identity_token_cache_total", "Verified-token cache lookups by result (hit, miss).",
    ["result"])
ASSERTIONS_SIGNED = Counter(
    "authz_identity_assertions_signed_total", "Identity assertions signed for backends.")
