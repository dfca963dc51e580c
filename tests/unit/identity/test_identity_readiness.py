"""Honest readiness for identity: keys are fetched at start, each issuer's key state is reported,
and a sidecar that can verify no issuer's tokens is not ready (unless config says otherwise)."""

from __future__ import annotations

import asyncio

from identity_helpers import identity_config


async def test_keys_are_fetched_at_start_and_reported(idp, build):
    stage = build(identity_config(idp))
    assert stage.health()["ok"] is False  # nothing fetched yet
    await stage.start()
    health = stage.health()
    assert health["ok"] is True and health["issuers"]["idp0"]["ok"] is True
    assert idp.hits  # fetched at start, before any token


async def test_an_issuer_down_at_start_is_not_ready_until_it_answers(idp, build):
    idp.down = True
    cfg = identity_config(idp, issuers=[{"name": "idp0", "issuer": idp.issuer,
                                         "jwks_cache": {"refetch_interval_seconds": 1}}])
    stage = build(cfg)
    await stage.start()
    health = stage.health()
    assert health["ok"] is False and health["required"] is True
    assert "http_error" in str(health["issuers"]["idp0"]["last_error"])
    idp.down = False
    for _ in range(40):  # the background warm-up retries without waiting for a token
        if stage.health()["ok"]:
            break
        await asyncio.sleep(0.1)
    assert stage.health()["ok"] is True


async def test_one_issuer_with_keys_is_enough_and_config_can_waive_it(idp, idp_b, build):
    idp_b.down = True
    stage = build(identity_config(idp, idp_b))
    await stage.start()
    health = stage.health()
    assert health["ok"] is True and health["issuers"]["idp1"]["ok"] is False
    idp.down = True
    waived = build(identity_config(idp, idp_b, required_for_readiness=False))
    await waived.start()
    assert waived.health() == {**waived.health(), "ok": False, "required": False}
