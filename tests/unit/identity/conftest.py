"""Fixtures for the identity tests: fake OIDC issuers over real HTTP, a stage wired to them."""

from __future__ import annotations

from typing import Any

import pytest
from identity_helpers import RESOURCE, identity_config

from authz.identity.assertion import KeyRing
from authz.identity.config import IdentityConfig
from authz.identity.stage import IdentityStage, build_identity_stage
from authz.identity.testing import FakeIssuer


@pytest.fixture
async def idp():
    async with FakeIssuer(audience=RESOURCE) as issuer:
        yield issuer


@pytest.fixture
async def idp_b():
    async with FakeIssuer(audience=RESOURCE) as issuer:
        yield issuer


@pytest.fixture
async def build():
    """Build stages with a private key ring; every stage built is closed after the test."""
    stages: list[IdentityStage] = []

    def _build(cfg: IdentityConfig, **kw: Any) -> IdentityStage:
        kw.setdefault("keyring", KeyRing())
        stage = build_identity_stage(cfg, **kw)
        stages.append(stage)
        return stage

    yield _build
    for stage in stages:
        await stage.close()


@pytest.fixture
async def stage(idp, idp_b, build) -> IdentityStage:
    return build(identity_config(idp, idp_b))
