"""RFC 9728 OAuth 2.0 Protected Resource Metadata, as MCP clients discover it.

For ``resource: https://mcp.example.com/mcp`` the document is served at both
``/.well-known/oauth-protected-resource/mcp`` (RFC 9728 §3.1: the well-known segment goes
between host and path) and the bare ``/.well-known/oauth-protected-resource`` that older
clients try. Nothing is derived from the request's Host header: without a configured
``resource`` there is no document and the challenge carries no ``resource_metadata``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from authz.identity.config import IdentityConfig
from authz.identity.paths import path_matches

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def is_metadata_path(path: str) -> bool:
    """True for the well-known path and its path-suffixed forms (these never need a token)."""
    return path_matches(path.split("?", 1)[0], (WELL_KNOWN,))


def _resource_path(resource: str) -> str:
    return urlsplit(resource).path.rstrip("/")


def metadata_url(cfg: IdentityConfig) -> str | None:
    """Where clients find the metadata document: the WWW-Authenticate ``resource_metadata``."""
    if cfg.resource_metadata_url:
        return cfg.resource_metadata_url
    if not cfg.resource:
        return None
    parts = urlsplit(cfg.resource)
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + _resource_path(cfg.resource), "", ""))


def metadata_paths(cfg: IdentityConfig) -> tuple[str, ...]:
    """The request paths that serve the document (for the HTTP port's routes)."""
    if not cfg.resource:
        return ()
    suffix = _resource_path(cfg.resource)
    return (WELL_KNOWN, WELL_KNOWN + suffix) if suffix else (WELL_KNOWN,)


def protected_resource_metadata(cfg: IdentityConfig, path: str) -> dict[str, Any] | None:
    """The JSON document for a request to ``path``, or None (answer 404)."""
    if not cfg.enabled or not cfg.resource:
        return None
    if path.split("?", 1)[0].rstrip("/") not in {p.rstrip("/") for p in metadata_paths(cfg)}:
        return None
    doc: dict[str, Any] = {"resource": cfg.resource}
    servers = cfg.metadata.authorization_servers or tuple(i.issuer for i in cfg.issuers)
    if servers:
        doc["authorization_servers"] = list(servers)
    if cfg.metadata.scopes_supported:
        doc["scopes_supported"] = list(cfg.metadata.scopes_supported)
    doc["bearer_methods_supported"] = list(cfg.metadata.bearer_methods_supported)
    if cfg.metadata.resource_name:
        doc["resource_name"] = cfg.metadata.resource_name
    if cfg.metadata.resource_documentation:
        doc["resource_documentation"] = cfg.metadata.resource_documentation
    return doc
