"""Typed config: one YAML file in, frozen validated objects out.

Every problem is reported with the dotted path of the offending key (``store.timeout_ms``,
``identity.issuers[0].audiences``); unknown keys are errors, so a typo never silently turns a
check off. Strings may reference environment variables as ``${NAME}`` or ``${NAME:-default}``
(secrets and Redis URLs come from the pod's environment); a reference to an unset variable
without a default is an error.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from authz.audit.config import AuditConfig
from authz.errors import ConfigError
from authz.identity.config import IdentityConfig
from authz.limits.config import LimitsConfig
from authz.policy.config import PolicyConfig
from authz.redaction.config import RedactionConfig
from authz.routing.config import RoutingConfig
from authz.schema import Model
from authz.sessions.config import SessionsConfig
from authz.signin.config import SigninConfig
from authz.store.resp import parse_seed
from authz.tracing import TracingConfig

MAX_CONFIG_BYTES = 8 * 1024 * 1024


def _check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (port 0-65535), got {value!r}")
    return value


# Prefixes a header namespace must not cover: they belong to the proxy, tracing or the client.
_HEADERS_NOT_OURS = ("x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-envoy-internal",
                     "x-b3-traceid", "x-api-key", "x-real-ip")


class ServerConfig(Model):
    """Listening addresses and lifecycle. Addresses take effect at start only (not on reload)."""

    grpc_address: str = "127.0.0.1:9001"
    http_address: str = "127.0.0.1:9002"
    instance_id: str = Field("", pattern=r"^[A-Za-z0-9_.-]{0,128}$")  # default: <host name>-<pid>
    drain_seconds: float = Field(5.0, ge=0, le=600)
    grace_seconds: float = Field(10.0, ge=0, le=600)
    debug_headers: bool = False
    max_concurrent_streams: int = Field(1000, ge=1)
    # The ext_authz filter's with_request_body.max_request_bytes (0: not known). A body that long
    # may have been cut without Envoy saying so; it is then never trusted for a decision.
    max_request_bytes: int = Field(1024 * 1024, ge=0)
    # uvloop: libuv's event loop (measured ~20% more Checks per second than asyncio's own on the
    # 2-core dev box, the gRPC hop included); asyncio: the standard library's. Takes effect at start.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # The sidecar's header namespace: every request header under it is removed before the stages
    # set theirs, so no client-sent value under it ever reaches the upstream.
    header_namespace: str = "x-authz-"
    # Serving processes, each with its own event loop (authz/workers/). Unset: the CPUs this
    # process may use (affinity and the cgroup's cpu.max quota) when a Redis store is configured,
    # else 1. More than one needs Redis: limits, sessions and approvals must be shared to be exact.
    workers: int | None = Field(None, ge=1, le=64)

    @field_validator("header_namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        v = v.lower()
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{2,62}-", v) or any(
                h.startswith(v) for h in _HEADERS_NOT_OURS):
            raise ValueError("must be a lower-case header name prefix ending in '-' (such as "
                             "x-authz-) that covers no standard header")
        return v

    @field_validator("grpc_address", "http_address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _check_address(v)


class LogConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    decisions: bool = True  # one line per decision


class StoreConfig(Model):
    """Where shared state lives. Empty ``redis_url`` selects the in-process memory store."""

    redis_url: str = ""
    timeout_ms: int = Field(50, ge=1, le=60_000)
    connect_timeout_ms: int = Field(500, ge=1, le=60_000)
    max_connections: int = Field(64, ge=1, le=10_000)
    key_prefix: str = "authz:"
    cluster: bool = False  # a Redis Cluster: redis_url names any one node
    # More nodes of the Cluster to read the slot map from ("host:port", "[v6]:port"), after the
    # URL's own; the URL's credentials and TLS settings apply to them.
    cluster_seeds: tuple[str, ...] = Field((), max_length=64)
    required_for_readiness: bool = False  # a shared Redis down must not unready every replica
    health_interval_seconds: float = Field(2.0, gt=0, le=300)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if v and not re.match(r"^(redis|rediss|unix)://", v):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("cluster_seeds")
    @classmethod
    def _seeds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, seed in enumerate(v):
            parse_seed(seed, f"[{i}]")
        if len(set(v)) != len(v):
            raise ValueError("lists a node twice")
        return v

    @model_validator(mode="after")
    def _seeds_need_a_cluster(self) -> StoreConfig:
        if self.cluster_seeds and not self.cluster:
            raise ValueError("cluster_seeds is set but cluster is false: seeds are nodes of a Redis Cluster")
        if self.cluster_seeds and not self.redis_url.startswith(("redis://", "rediss://")):
            raise ValueError("cluster_seeds needs a redis:// or rediss:// redis_url (its credentials and "
                             "TLS settings apply to every seed)")
        return self



class ReloadConfig(Model):
    poll_seconds: float = Field(2.0, ge=0, le=3600)  # 0 disables watching (SIGHUP still reloads)


class Config(Model):
    version: Literal[1] = 1
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    store: StoreConfig = StoreConfig()
    reload: ReloadConfig = ReloadConfig()
    identity: IdentityConfig = IdentityConfig()
    policy: PolicyConfig = PolicyConfig()
    routing: RoutingConfig = RoutingConfig()
    limits: LimitsConfig = LimitsConfig()
    redaction: RedactionConfig = RedactionConfig()
    audit: AuditConfig = AuditConfig()
    sessions: SessionsConfig = SessionsConfig()
    tracing: TracingConfig = TracingConfig()
    signin: SigninConfig = SigninConfig()

    @model_validator(mode="after")
    def _api_keys_store(self) -> Config:
        if self.identity.api_keys.store == "redis" and not self.store.redis_url:
            raise ValueError("identity.api_keys.store is redis but store.redis_url is empty: "
                             "set store.redis_url (or use store: config)")
        return self

    @model_validator(mode="after")
    def _workers_store(self) -> Config:
        if (self.server.workers or 1) > 1 and not self.store.redis_url:
            raise ValueError(f"server.workers is {self.server.workers} but store.redis_url is empty: "
                             "workers share nothing but the store, so limits, budgets, sessions and "
                             "approvals are exact only in Redis; set store.redis_url or workers: 1")
        return self

    @model_validator(mode="after")
    def _signin_issuer(self) -> Config:
        # The sidecar's own tokens are one more issuer for the identity stage.
        if self.signin.enabled:
            from authz.signin.keys import with_signin_issuer

            object.__setattr__(self, "identity", with_signin_issuer(self.identity, self.signin))
        return self

    @property
    def instance_id(self) -> str:
        """Names this replica in logs and its audit chain. ``<host name>-<pid>`` by default:
        unique among processes sharing a host (and an audit directory); a container's
        restarted sidecar usually keeps its pid (1) and so its chain. Set it to keep one chain
        across restarts elsewhere."""
        import socket

        return self.server.instance_id or f"{socket.gethostname()}-{os.getpid()}"


# --- loading -------------------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: in a security policy the second one silently
    winning is how a rule gets lost."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=deep)
    return result


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, env: Mapping[str, str], path: str, problems: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append((path, f"environment variable {name} is not set and has no default"))
            return ""
        return _ENV_REF.sub(sub, value) if "${" in value else value
    if isinstance(value, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_config(text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
                 ) -> Config:
    """Parse and validate YAML text. Raises ``ConfigError`` listing every problem with its path."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [(where, f"invalid YAML: {problem}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", "the top level must be a mapping")])
    problems: list[tuple[str, str]] = []
    raw = _interpolate(raw, os.environ if env is None else env, "", problems)
    if problems:
        raise ConfigError(source, problems)
    return validate_config(raw, source=source)


_NAMED_KEY = re.compile(r"([a-z_]+(?:\.[a-z_0-9]+)+) ")


def validate_config(raw: Mapping[str, Any], *, source: str = "<config>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            path = _loc_to_path(err["loc"])
            if err["type"] == "value_error":
                message = message.removeprefix("Value error, ")
                # A check across sections has no location of its own: it names the key it is about.
                named = _NAMED_KEY.match(message)
                if not path and named:
                    path, message = named.group(1), message[named.end():]
            problems.append((path, message))
        raise ConfigError(source, problems) from None


def load_config(path: str | os.PathLike[str]) -> tuple[Config, str]:
    """Read, parse and validate a config file. Returns the config and the SHA-256 of the file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read file: {exc.strerror or exc}")]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), [("", f"file larger than {MAX_CONFIG_BYTES} bytes")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [("", f"not UTF-8: {exc}")]) from None
    return parse_config(text, source=str(path)), hashlib.sha256(data).hexdigest()
