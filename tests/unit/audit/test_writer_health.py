"""A dead audit writer, or one whose writes fail, is reported: /readyz (the runtime's readiness),
authz_audit_writer_up and authz_component_up{component="audit"}, one log line, and the 503 an
allowed request then gets says the log cannot be written (not that it cannot keep up)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from authz import metrics
from authz.audit.log import WRITER_UP
from authz.errors import Unavailable
from authz.model import Context, Request
from authz.runtime import Runtime


def audit_stage(rt: Runtime):
    return next(s for s in rt.pipeline.stages if s.name == "audit")


def ctx(rid: str) -> Context:
    return Context(request=Request(id=rid, method="GET", scheme="http", host="h", path="/v1/models", headers={}))


def audit_up() -> float:
    return metrics.COMPONENT_UP.labels(component="audit")._value.get()


@pytest.fixture
async def rt(tmp_path):
    path = tmp_path / "authz.yaml"
    path.write_text(f"server:\n  instance_id: i1\naudit:\n  enabled: true\n  directory: {tmp_path / 'audit'}\n"
                    f"  durability: answered\n")
    runtime = Runtime(path)
    await runtime.start()
    yield runtime
    await runtime.close()


async def test_a_writer_that_stopped_makes_the_replica_unready(rt, caplog):
    stage = audit_stage(rt)
    assert rt.readiness()[0] and rt.readiness()[1]["audit"]["ok"]
    await stage.on_decision(ctx("before"), None)
    assert WRITER_UP._value.get() == 1 and audit_up() == 1

    def broken():
        raise RuntimeError("a bug in the writer")
    stage.log._take = broken  # the writer's next round raises: the task ends
    with caplog.at_level(logging.ERROR, logger="authz.audit"):
        stage.log._wake_writer()
        for _ in range(100):
            if stage.log._writer.done():
                break
            await asyncio.sleep(0.01)
    ready, components = rt.readiness()
    assert not ready
    assert not components["audit"]["ok"]
    assert "the audit writer stopped: RuntimeError('a bug in the writer')" in components["audit"]["detail"]
    assert "503 audit.unavailable" in components["audit"]["detail"]
    assert WRITER_UP._value.get() == 0 and audit_up() == 0
    assert [r for r in caplog.records if "audit writer of i1 stopped" in r.getMessage()]
    with pytest.raises(Unavailable) as info:
        await stage.on_decision(ctx("after"), None)
    assert info.value.reason == "audit.unavailable" and "cannot be written" in info.value.message
    del stage.log._take  # close() drains the queue with it


async def test_writes_that_fail_make_the_replica_unready_until_one_succeeds(rt, caplog):
    stage = audit_stage(rt)
    log = stage.log
    real_flush = log._flush

    def disk_full(*, sync: bool) -> None:
        log._pending = []
        raise OSError(28, "No space left on device")
    log._flush = disk_full
    with caplog.at_level(logging.ERROR, logger="authz.audit"):
        with pytest.raises(Unavailable) as info:
            await stage.on_decision(ctx("full-1"), None)
        with pytest.raises(Unavailable):
            await stage.on_decision(ctx("full-2"), None)
    assert "cannot be written" in info.value.message
    ready, components = rt.readiness()
    assert not ready and "No space left on device" in components["audit"]["detail"]
    assert WRITER_UP._value.get() == 0 and audit_up() == 0
    # One line when writes start failing, not one per request.
    assert len([r for r in caplog.records if "audit writes to" in r.getMessage()]) == 1

    log._flush = real_flush
    await stage.on_decision(ctx("space-again"), None)
    assert rt.readiness()[0] and rt.readiness()[1]["audit"]["ok"]
    assert WRITER_UP._value.get() == 1 and audit_up() == 1
