"""Who may ask for tokens: dynamically registered clients (RFC 7591) and clients whose id is the
URL of their metadata document (Client ID Metadata Documents), and how redirect URIs match."""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any
from urllib.parse import urlsplit

from authz.signin.config import RegistrationConfig, check_scope_token
from authz.signin.errors import InvalidClientMetadata, InvalidRedirectUri

AUTH_METHODS = ("none", "client_secret_post", "client_secret_basic")
GRANT_TYPES = ("authorization_code", "refresh_token")
_TEXT_FIELDS = ("client_name", "client_uri", "logo_uri", "tos_uri", "policy_uri", "software_id",
                "software_version")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_redirect_uri(uri: object, application_type: str) -> str:
    """A redirect URI a client may register: absolute, no fragment; https, or http on a loopback
    address (RFC 8252 §7.3), or for native apps a private-use scheme (RFC 8252 §7.1)."""
    if not isinstance(uri, str) or not uri or len(uri) > 2000 or not uri.isprintable():
        raise InvalidRedirectUri("each redirect URI must be a string of at most 2000 characters")
    parts = urlsplit(uri)
    if parts.fragment or "#" in uri:
        raise InvalidRedirectUri("a redirect URI must not have a fragment")
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return uri
    if (application_type == "native" and "." in parts.scheme and parts.scheme not in ("http", "https")
            and not parts.netloc):
        return uri
    raise InvalidRedirectUri(f"redirect URI {uri!r} must use https, http on a loopback address, or "
                             "(native clients) a private-use scheme such as com.example.app:/callback")


def redirect_uri_matches(requested: str, registered: list[str]) -> bool:
    """Exact match, except that a loopback http redirect URI may use any port (RFC 8252 §7.3)."""
    if requested in registered:
        return True
    req = urlsplit(requested)
    if req.scheme != "http" or not req.hostname or not is_loopback_host(req.hostname):
        return False
    try:
        req.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    for uri in registered:
        reg = urlsplit(uri)
        if (reg.scheme == "http" and reg.hostname == req.hostname and reg.path == req.path
                and reg.query == req.query):
            return True
    return False


def _string_list(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidClientMetadata(f"{name} must be a list of strings")
    return value


def client_from_metadata(meta: dict[str, Any], cfg: RegistrationConfig, *, client_id: str,
                         scopes_supported: tuple[str, ...]) -> dict[str, Any]:
    """Validate registration metadata (RFC 7591 §2) into the record we keep. Raises
    ``InvalidClientMetadata`` / ``InvalidRedirectUri`` naming the field."""
    application_type = meta.get("application_type", "web")
    if application_type not in ("web", "native"):
        raise InvalidClientMetadata("application_type must be web or native")
    uris = _string_list(meta.get("redirect_uris"), "redirect_uris")
    if not uris:
        raise InvalidRedirectUri("at least one redirect URI is required")
    if len(uris) > cfg.max_redirect_uris:
        raise InvalidRedirectUri(f"at most {cfg.max_redirect_uris} redirect URIs")
    uris = [check_redirect_uri(u, application_type) for u in uris]
    method = meta.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise InvalidClientMetadata(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
    grants = _string_list(meta.get("grant_types", ["authorization_code"]), "grant_types")
    if not set(grants) <= set(GRANT_TYPES) or "authorization_code" not in grants:
        raise InvalidClientMetadata("grant_types must include authorization_code and may add refresh_token only")
    if _string_list(meta.get("response_types", ["code"]), "response_types") != ["code"]:
        raise InvalidClientMetadata('response_types must be ["code"]')
    scope = meta.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise InvalidClientMetadata("scope must be a space-separated string")
        try:
            asked = {check_scope_token(s) for s in scope.split()}
        except ValueError as exc:
            raise InvalidClientMetadata(str(exc)) from None
        if scopes_supported and not asked <= set(scopes_supported) | {"offline_access"}:
            raise InvalidClientMetadata("scope names a scope this server does not offer")
    record: dict[str, Any] = {
        "client_id": client_id, "redirect_uris": uris, "token_endpoint_auth_method": method,
        "grant_types": grants, "response_types": ["code"], "application_type": application_type,
        "client_id_issued_at": int(time.time()),
    }
    if scope is not None:
        record["scope"] = scope
    for name in _TEXT_FIELDS:
        value = meta.get(name)
        if value is not None:
            if not isinstance(value, str) or len(value) > 300 or not value.isprintable():
                raise InvalidClientMetadata(f"{name} must be a printable string of at most 300 characters")
            record[name] = value
    return record


def parse_metadata_body(body: bytes, limit: int) -> dict[str, Any]:
    if len(body) > limit:
        raise InvalidClientMetadata(f"the metadata document is larger than {limit} bytes")
    try:
        meta = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidClientMetadata("the metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise InvalidClientMetadata("the metadata must be a JSON object")
    return meta


def is_metadata_document_id(client_id: str) -> bool:
    """A client id that names its metadata document: an https URL with a path, nothing else."""
    parts = urlsplit(client_id)
    return (parts.scheme == "https" and bool(parts.hostname) and parts.path not in ("", "/")
            and not parts.fragment and not parts.username and not parts.password
            and "/./" not in parts.path and "/../" not in parts.path)
