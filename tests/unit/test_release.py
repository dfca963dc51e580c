"""A request that does not go upstream costs nothing: whatever a stage took in Check is given back
when Check ends in anything but an allow Envoy receives in time. Through a real grpc.aio server."""

import asyncio

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc

from authz.errors import Deny, Forbidden
from authz.model import Context
from authz.pipeline import Pipeline, Stage
from authz.runtime import Runtime
from authz.server import Server

GIVEN_BACK: list[str] = []


class Taker(Stage):
    """Takes something for every request (as the limits stage reserves a budget)."""

    name = "taker"

    async def on_request(self, ctx: Context) -> None:
        rid = ctx.request.id

        async def give_back() -> None:
            GIVEN_BACK.append(rid)
        ctx.on_refusal.append(give_back)


class Later(Stage):
    """Refuses or stalls after the taking, as redaction, approval or a slow stage would."""

    name = "later"

    async def on_request(self, ctx: Context) -> None:
        if ctx.request.path_only == "/blocked":
            raise Forbidden("held", reason="redaction.approval_required")
        if ctx.request.path_only == "/slow":
            await asyncio.sleep(0.3)


class Auditor(Stage):
    """Refuses an allowed request when it cannot record it (audit fail-closed)."""

    name = "auditor"

    async def on_decision(self, ctx: Context, deny: Deny | None) -> None:
        if deny is None and ctx.request.path_only == "/unrecorded":
            raise Forbidden("audit down", reason="audit.unavailable")


@pytest.fixture
async def stub(tmp_path):
    cfg = tmp_path / "authz.yaml"
    cfg.write_text("server:\n  drain_seconds: 0\nlog:\n  decisions: false\n")
    rt = Runtime(cfg, pipeline_factory=lambda c, s: Pipeline([Taker(), Later(), Auditor()]))
    await rt.start()
    srv = Server(rt, grpc_address="127.0.0.1:0", http_address="127.0.0.1:0")
    await srv.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    GIVEN_BACK.clear()
    yield auth_grpc.AuthorizationStub(channel)
    await channel.close()
    srv.request_stop()
    await srv.wait_and_stop()


def check(path: str) -> auth_pb2.CheckRequest:
    req = auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.id, http.method, http.host, http.path = path.strip("/"), "GET", "api.local", path
    return req


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0.01)


async def test_an_allowed_request_keeps_what_it_took(stub):
    resp = await stub.Check(check("/ok"))
    assert resp.HasField("ok_response")
    await settle()
    assert GIVEN_BACK == []


@pytest.mark.parametrize("path", ["/blocked", "/unrecorded"])
async def test_a_request_refused_after_the_taking_gives_it_back(stub, path):
    resp = await stub.Check(check(path))
    assert resp.HasField("denied_response")
    await settle()
    assert GIVEN_BACK == [path.strip("/")]


async def test_a_check_answered_after_envoys_deadline_gives_it_back(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(check("/slow"), timeout=0.05)  # Envoy stops waiting: it never forwards
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.5)
    assert GIVEN_BACK == ["slow"]
