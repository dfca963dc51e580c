"""Tracing: off by default (free), and when on a span per Check continuing the caller's trace,
with a child span per stage."""

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from authz import tracing
from authz.envoy.servicers import AuthorizationServicer
from authz.errors import Forbidden
from authz.model import Context
from authz.pipeline import Pipeline, Stage
from authz.runtime import Runtime

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class Deny(Stage):
    name = "policy"

    async def on_request(self, ctx: Context) -> None:
        raise Forbidden("no", reason="policy.denied")


@pytest.fixture
def exporter():
    exp = InMemorySpanExporter()
    tracing.setup(tracing.TracingConfig(), exporter=exp)
    yield exp
    tracing.reset()


async def test_a_check_continues_the_callers_trace_with_a_span_per_stage(tmp_path, exporter):
    cfg = tmp_path / "authz.yaml"
    cfg.write_text("log: {decisions: false}\n")
    rt = Runtime(cfg, pipeline_factory=lambda c, s: Pipeline([Deny()]))
    await rt.start()
    req = auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path = "GET", "/x"
    http.headers["traceparent"] = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    resp = auth_pb2.CheckResponse.FromString(await AuthorizationServicer(rt).Check(req, None))
    assert resp.denied_response.status.code == 403
    spans = {s.name: s for s in exporter.get_finished_spans()}
    check, stage = spans["authz.check"], spans["authz.stage.policy"]
    assert format(check.context.trace_id, "032x") == TRACE_ID
    assert stage.parent.span_id == check.context.span_id
    assert check.attributes["authz.decision"] == "deny" and check.attributes["authz.reason"] == "policy.denied"
    await rt.close()


def test_tracing_is_off_unless_configured():
    tracing.reset()
    tracing.setup(tracing.TracingConfig())
    assert tracing.TRACER is None
