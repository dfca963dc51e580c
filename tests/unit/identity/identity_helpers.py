"""Helpers shared by the identity tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

from typing import Any

from authz.identity.config import IdentityConfig, hash_api_key
from authz.identity.stage import IdentityStage
from authz.identity.testing import FakeIssuer
from authz.model import Context, Request

RESOURCE = "https://mcp.example.com/mcp"
API_KEY = "sk-test-0123456789abcdef0123456789"


def make_request(headers: dict[str, str] | None = None, *, path: str = "/mcp",
                 method: str = "POST", header_lists: dict[str, tuple[str, ...]] | None = None,
                 request_id: str = "req-1") -> Request:
    return Request(id=request_id, method=method, scheme="https", host="mcp.example.com",
                   path=path, headers={k.lower(): v for k, v in (headers or {}).items()},
                   header_lists=header_lists or {})


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def identity_config(*issuers: FakeIssuer, **overrides: Any) -> IdentityConfig:
    raw: dict[str, Any] = {
        "resource": RESOURCE,
        "issuers": [{"name": f"idp{i}", "issuer": idp.issuer,
                     "claims": {"roles": ["roles", "realm_access.roles", "permissions"],
                                "tenant": "org_id"},
                     "jwks_cache": {"refetch_interval_seconds": 10}}
                    for i, idp in enumerate(issuers)],
        "api_keys": {"keys": [{"name": "batch", "sha256": hash_api_key(API_KEY),
                               "subject": "svc-batch", "roles": ["service"]}]},
        "headers": {"strip": ["x-user-id"]},
        "anonymous_paths": ["/public"],
        "passthrough_authorization_paths": ["/legacy"],
    }
    raw.update(overrides)
    return IdentityConfig.model_validate(raw)


async def run(stage: IdentityStage, request: Request) -> Context:
    ctx = Context(request=request)
    await stage.on_request(ctx)
    return ctx


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: float | None = None) -> None:
        import time

        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
