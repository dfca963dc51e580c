"""The floor: a grpc.aio ext_authz servicer that allows everything and does nothing else, and
(for the whole-path floor) a do-nothing ext_proc servicer on the same port.

``python -m bench.noop_authz --port 9001 [--event-loop uvloop] [--request-body MODE]
[--response-body MODE]``. The ext_proc servicer answers every message with an empty answer of
the matching kind; answering the request headers it asks for the body modes given (what authz
asks for on the scenario's request), so Envoy sends the same messages it sends authz. Given body
modes, Check also leaves a hand-off in Envoy's dynamic metadata as authz does, without which the
reference Envoy config opens no ext_proc stream.
Whatever authz costs on top of this is ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as proc_grpc
from google.rpc import code_pb2, status_pb2

OK = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK),
                                     ok_response=external_auth_pb2.OkHttpResponse())

Mode = processing_mode_pb2.ProcessingMode
BODY_MODES = {"none": Mode.NONE, "streamed": Mode.STREAMED, "partial": Mode.BUFFERED_PARTIAL,
              "buffered": Mode.BUFFERED}


def check_answer(handoff: str) -> external_auth_pb2.CheckResponse:
    """OK; with ``handoff``, carrying it as authz's hand-off to Process (dynamic metadata
    ``authz``): the reference Envoy config skips ext_proc for a request without one."""
    if not handoff:
        return OK
    answer = external_auth_pb2.CheckResponse()
    answer.CopyFrom(OK)
    answer.dynamic_metadata.update({"authz": handoff})
    return answer


class Noop(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, handoff: str = "") -> None:
        self.answer = check_answer(handoff)

    async def Check(self, request: external_auth_pb2.CheckRequest, context: Any) -> external_auth_pb2.CheckResponse:
        return self.answer


def answers(request_body: str, response_body: str) -> dict[str, proc_pb2.ProcessingResponse]:
    """The one answer to each kind of ext_proc message (built once: they never change)."""
    empty = proc_pb2.CommonResponse()
    headers = proc_pb2.HeadersResponse(response=empty)
    body = proc_pb2.BodyResponse(response=empty)
    request_headers = proc_pb2.ProcessingResponse(request_headers=headers)
    if request_body != "none" or response_body != "none":
        # Every field spelled out, as authz does: Envoy matches it against allowed_override_modes.
        request_headers.mode_override.CopyFrom(Mode(
            request_header_mode=Mode.SEND, response_header_mode=Mode.SEND,
            request_body_mode=BODY_MODES[request_body], response_body_mode=BODY_MODES[response_body],
            request_trailer_mode=Mode.SKIP, response_trailer_mode=Mode.SKIP))
    return {"request_headers": request_headers,
            "response_headers": proc_pb2.ProcessingResponse(response_headers=headers),
            "request_body": proc_pb2.ProcessingResponse(request_body=body),
            "response_body": proc_pb2.ProcessingResponse(response_body=body),
            "request_trailers": proc_pb2.ProcessingResponse(request_trailers=proc_pb2.TrailersResponse()),
            "response_trailers": proc_pb2.ProcessingResponse(response_trailers=proc_pb2.TrailersResponse())}


class NoopProcessor(proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, request_body: str, response_body: str) -> None:
        self.answers = answers(request_body, response_body)

    async def Process(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for msg in request_iterator:
            yield self.answers[msg.WhichOneof("request")]


async def serve(port: int, request_body: str = "none", response_body: str = "none") -> None:
    server = grpc.aio.server()
    # Asked for bodies, Check leaves a hand-off as authz does when Process has work (its size is
    # about that of authz's for the chat request's modes, principal and action).
    handoff = "" if request_body == response_body == "none" else json.dumps(
        {"rb": request_body, "pb": response_body, "p": {"sub": "oscar", "roles": ["accounting"]}})
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Noop(handoff), server)
    proc_grpc.add_ExternalProcessorServicer_to_server(NoopProcessor(request_body, response_body), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"noop ext_authz and ext_proc listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="asyncio (the floor as defined) or uvloop (what authz serves on by default)")
    p.add_argument("--request-body", choices=tuple(BODY_MODES), default="none",
                   help="the request body mode ext_proc asks for (default none)")
    p.add_argument("--response-body", choices=tuple(BODY_MODES), default="none",
                   help="the response body mode ext_proc asks for (default none)")
    args = p.parse_args()
    work = serve(args.port, args.request_body, args.response_body)
    try:
        if args.event_loop == "uvloop":
            import uvloop

            uvloop.run(work)
        else:
            asyncio.run(work)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
