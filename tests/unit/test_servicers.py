"""The gRPC surface, through a real grpc.aio server and channel (no Envoy)."""

import json

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as proc_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.errors import Forbidden, Unauthenticated
from authz.model import Context, Exchange, Principal
from authz.pipeline import Pipeline, Stage
from authz.runtime import Runtime
from authz.server import Server


class Tagger(Stage):
    name = "tagger"

    async def on_request(self, ctx: Context) -> None:
        if ctx.request.header("x-deny") == "401":
            raise Unauthenticated("who are you", reason="token.missing",
                                  headers={"WWW-Authenticate": 'Bearer resource_metadata="m"'})
        if ctx.request.path_only == "/forbidden":
            raise Forbidden("no", reason="policy.denied")
        ctx.mutations.set_header("x-authz-user", "oscar")
        ctx.mutations.remove_header("authorization")
        ctx.handoff.principal = Principal(subject="oscar")
        ctx.handoff.want_body("response", "streamed")

    async def on_response_headers(self, ex: Exchange) -> None:
        if ex.response_status == 500:
            raise Forbidden("hidden", reason="test.response_denied")
        ex.mutations.set_header("x-seen-subject", ex.handoff.principal.subject)

    async def on_complete(self, ex: Exchange) -> None:
        COMPLETED.append(ex.facts.get("outcome"))


COMPLETED: list = []


@pytest.fixture
async def server(tmp_path):
    cfg = tmp_path / "authz.yaml"
    cfg.write_text("server:\n  debug_headers: true\n  drain_seconds: 0\nlog:\n  decisions: false\n")
    rt = Runtime(cfg, pipeline_factory=lambda c, s: Pipeline([Tagger()]))
    await rt.start()
    srv = Server(rt, grpc_address="127.0.0.1:0", http_address="127.0.0.1:0")
    await srv.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    yield srv, channel
    await channel.close()
    srv.request_stop()
    await srv.wait_and_stop()


def check_request(path="/ok", headers=None) -> auth_pb2.CheckRequest:
    req = auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.id, http.method, http.host, http.path = "rid-1", "POST", "api.local", path
    for k, v in (headers or {}).items():
        http.headers[k] = v
    return req


async def test_check_allow_sets_headers_and_metadata(server):
    _, channel = server
    resp = await auth_grpc.AuthorizationStub(channel).Check(check_request())
    assert resp.status.code == 0 and resp.HasField("ok_response")
    assert {h.header.key: h.header.value for h in resp.ok_response.headers} == {"x-authz-user": "oscar"}
    assert list(resp.ok_response.headers_to_remove) == ["authorization"]
    from authz.envoy import handoff

    assert handoff.decode(resp.dynamic_metadata[handoff.FIELD]).principal.subject == "oscar"
    assert resp.ok_response.response_headers_to_add[0].header.key == "x-authz-check"


async def test_check_deny_is_rendered_with_reason_and_headers(server):
    _, channel = server
    stub = auth_grpc.AuthorizationStub(channel)
    resp = await stub.Check(check_request(headers={"x-deny": "401"}))
    assert resp.status.code == 16  # UNAUTHENTICATED
    denied = resp.denied_response
    assert denied.status.code == 401
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers["www-authenticate"] == 'Bearer resource_metadata="m"'
    assert headers["x-authz-reason"] == "token.missing"
    body = json.loads(denied.body)
    assert body == {"error": "token.missing", "message": "who are you", "request_id": "rid-1"}

    resp = await stub.Check(check_request(path="/forbidden?x=1"))
    assert resp.status.code == 7 and resp.denied_response.status.code == 403


async def test_check_reads_raw_header_map_and_bytes_body(server):
    _, channel = server
    req = check_request()
    http = req.attributes.request.http
    http.raw_body = "héllo".encode()
    http.header_map.headers.extend([
        base_pb2.HeaderValue(key="x-deny", raw_value=b"401"),
    ])
    resp = await auth_grpc.AuthorizationStub(channel).Check(req)
    assert resp.denied_response.status.code == 401


def _headers(phase_headers: dict) -> proc_pb2.HttpHeaders:
    return proc_pb2.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in phase_headers.items()]))


def _metadata(subject: str) -> base_pb2.Metadata:
    from authz.envoy import handoff
    from authz.model import Handoff

    md = base_pb2.Metadata()
    s = struct_pb2.Struct()
    s.update(handoff.encode(Handoff(principal=Principal(subject=subject), response_body="streamed")))
    md.filter_metadata["envoy.filters.http.ext_authz"].CopyFrom(s)
    return md


async def test_process_answers_each_phase_and_sees_check_metadata(server):
    _, channel = server
    COMPLETED.clear()
    msgs = [
        proc_pb2.ProcessingRequest(request_headers=_headers({":path": "/x", ":method": "GET",
                                                             "x-request-id": "r"}),
                                   metadata_context=_metadata("oscar")),
        proc_pb2.ProcessingRequest(response_headers=_headers({":status": "200"})),
    ]
    call = proc_grpc.ExternalProcessorStub(channel).Process(iter(msgs))
    responses = [r async for r in call]
    assert [r.WhichOneof("response") for r in responses] == ["request_headers", "response_headers"]
    set_headers = {h.header.key: h.header.raw_value.decode()
                   for h in responses[1].response_headers.response.header_mutation.set_headers}
    assert set_headers == {"x-seen-subject": "oscar",
                           "x-authz-process": "request_headers,response_headers"}
    assert COMPLETED == ["completed"]


async def test_process_denial_becomes_an_immediate_response(server):
    _, channel = server
    COMPLETED.clear()
    msgs = [
        proc_pb2.ProcessingRequest(request_headers=_headers({":path": "/x"})),
        proc_pb2.ProcessingRequest(response_headers=_headers({":status": "500"})),
    ]
    responses = [r async for r in proc_grpc.ExternalProcessorStub(channel).Process(iter(msgs))]
    last = responses[-1]
    assert last.WhichOneof("response") == "immediate_response"
    assert last.immediate_response.status.code == 403
    assert json.loads(last.immediate_response.body)["error"] == "test.response_denied"
    assert COMPLETED == ["denied"]


async def test_health_and_reflection_are_served(server):
    _, channel = server
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", "envoy.service.auth.v3.Authorization",
                 "envoy.service.ext_proc.v3.ExternalProcessor"):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    rstub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = [a async for a in rstub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
    names = {s.name for s in answers[0].list_services_response.service}
    assert "envoy.service.auth.v3.Authorization" in names


async def test_http_port_serves_health_readiness_and_metrics(server):
    import aiohttp

    srv, _ = server
    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{srv.http_port}"
        async with session.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with session.get(f"{base}/readyz") as r:
            body = await r.json()
            assert r.status == 200 and body["ready"] is True
            assert set(body["components"]) == {"config", "store", "draining"}
        async with session.get(f"{base}/metrics") as r:
            text = await r.text()
            assert "authz_decisions_total" in text and "authz_config_reloads_total" in text


async def test_drain_marks_not_serving_before_stopping(server):
    srv, channel = server
    srv.runtime.config.server  # noqa: B018
    srv.request_stop()
    srv.runtime.draining = True
    await srv._set_serving(False)
    resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
