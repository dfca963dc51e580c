"""Every Prometheus metric authz exports, in one place, with bounded label sets.

Label values come from fixed vocabularies (decision, reason codes, stage names, rpc names),
never from request input, so cardinality stays bounded however hostile the traffic.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

# Latency buckets centred on what a sidecar hop should cost (tens of µs to tens of ms).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0)

BUILD_INFO = Info("authz_build", "Version of the running authz sidecar.")

DECISIONS = Counter(
    "authz_decisions_total", "Check decisions by outcome and stable reason code.",
    ["decision", "reason"])
RPC_SECONDS = Histogram(
    "authz_rpc_duration_seconds", "Time spent answering Envoy, per RPC and phase.",
    ["rpc"], buckets=LATENCY_BUCKETS)
STAGE_SECONDS = Histogram(
    "authz_stage_duration_seconds", "Time spent in each pipeline stage, per hook.",
    ["stage", "phase"], buckets=LATENCY_BUCKETS)
INFLIGHT = Gauge("authz_inflight_requests", "RPCs being processed right now.", ["rpc"])
PROCESS_STREAMS = Counter(
    "authz_process_streams_total", "ext_proc streams by how they ended.", ["outcome"])

CONFIG_RELOADS = Counter(
    "authz_config_reloads_total", "Config reload attempts by result.", ["result"])
CONFIG_LAST_SUCCESS = Gauge(
    "authz_config_last_reload_success_timestamp_seconds",
    "Unix time of the last successful config load.")
CONFIG_INFO = Gauge(
    "authz_config_info", "The config in force (value 1), labelled by the file's SHA-256 prefix.",
    ["sha256"])

STORE_ERRORS = Counter(
    "authz_store_errors_total", "Store operations that failed or timed out.", ["backend", "op"])
STORE_SECONDS = Histogram(
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
