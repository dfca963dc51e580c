"""The floor: a grpc.aio ext_authz servicer that allows everything and does nothing else.

``python -m bench.noop_authz --port 9001 [--event-loop uvloop]``. Whatever authz costs on top of
this is ours.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2

OK = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK),
                                     ok_response=external_auth_pb2.OkHttpResponse())


class Noop(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(self, request, context):
        return OK


async def serve(port: int) -> None:
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Noop(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"noop ext_authz listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="asyncio (the floor as defined) or uvloop (what authz serves on by default)")
    args = p.parse_args()
    try:
        if args.event_loop == "uvloop":
            import uvloop

            uvloop.run(serve(args.port))
        else:
            asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
