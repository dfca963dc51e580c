"""A stand-in for the sidecar that records what Envoy sends, and a trivial upstream.

``RecordingSidecar`` serves ext_authz ``Check`` and ext_proc ``Process`` on one gRPC port the
way authz does, allows everything, and keeps every message per probe id (the ``x-probe-id``
request header) so a test can assert what Envoy really delivered. A request may ask for an
ext_proc ``mode_override`` with ``x-probe-mode: <request body mode>,<response body mode>[,skip]``
(``skip`` also asks Envoy to skip the response headers message), to check which overrides the
reference config honours.
"""

from __future__ import annotations

import collections
import http.server
import threading
from concurrent import futures
from typing import Any

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as proc_grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, status_pb2

Mode = processing_mode_pb2.ProcessingMode
PROBE_ID = "x-probe-id"
PROBE_MODE = "x-probe-mode"
# "authz" stands for the hand-off: Envoy opens a Process stream only when Check set it (the
# matcher around ext_proc in deploy/envoy/envoy.yaml). A probe sending PROBE_NO_HANDOFF gets none.
CHECK_METADATA = {"decided_by": "recording-sidecar", "route": "general", "authz": "{}"}
PROBE_NO_HANDOFF = "x-probe-no-handoff"


def header_entries(header_map: Any) -> list[tuple[str, str, bytes]]:
    return [(h.key, h.value, h.raw_value) for h in header_map.headers]


def first(entries: list[tuple[str, str, bytes]], name: str) -> str:
    for key, value, raw in entries:
        if key == name:
            return raw.decode() if raw else value
    return ""


class RecordingSidecar(auth_grpc.AuthorizationServicer, proc_grpc.ExternalProcessorServicer):
    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[str, Any]]] = collections.defaultdict(list)
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.port = 0

    def start(self, port: int) -> RecordingSidecar:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        auth_grpc.add_AuthorizationServicer_to_server(self, self._server)
        proc_grpc.add_ExternalProcessorServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)

    def _record(self, probe: str, kind: str, message: Any) -> None:
        with self._lock:
            self.seen[probe].append((kind, message))

    def messages(self, probe: str, kind: str | None = None) -> list[Any]:
        with self._lock:
            return [m for k, m in self.seen.get(probe, []) if kind is None or k == kind]

    def kinds(self, probe: str) -> list[str]:
        with self._lock:
            return [k for k, _ in self.seen.get(probe, [])]

    # ext_authz
    def Check(self, request: auth_pb2.CheckRequest, context: grpc.ServicerContext) -> auth_pb2.CheckResponse:
        http = request.attributes.request.http
        entries = header_entries(http.header_map)
        self._record(first(entries, PROBE_ID) or http.headers.get(PROBE_ID, ""), "check", request)
        metadata = struct_pb2.Struct()
        metadata.update({k: v for k, v in CHECK_METADATA.items()
                         if k != "authz" or not first(entries, PROBE_NO_HANDOFF)})
        return auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK),
                                      ok_response=auth_pb2.OkHttpResponse(), dynamic_metadata=metadata)

    # ext_proc
    def Process(self, request_iterator, context: grpc.ServicerContext):
        probe = ""
        for msg in request_iterator:
            kind = msg.WhichOneof("request")
            if kind == "request_headers":
                entries = header_entries(msg.request_headers.headers)
                probe = first(entries, PROBE_ID)
            self._record(probe, kind, msg)
            if kind == "request_headers":
                response = proc_pb2.ProcessingResponse(request_headers=proc_pb2.HeadersResponse())
                wanted = first(entries, PROBE_MODE)
                if wanted:
                    response.mode_override.CopyFrom(override_for(wanted))
                yield response
            elif kind == "response_headers":
                yield proc_pb2.ProcessingResponse(response_headers=proc_pb2.HeadersResponse())
            elif kind in ("request_body", "response_body"):
                yield proc_pb2.ProcessingResponse(**{kind: proc_pb2.BodyResponse()})
            else:
                yield proc_pb2.ProcessingResponse(**{kind: proc_pb2.TrailersResponse()})


def override_for(wanted: str) -> Mode:
    request_body, response_body, *rest = wanted.split(",")
    mode = Mode(request_body_mode=Mode.BodySendMode.Value(request_body),
                response_body_mode=Mode.BodySendMode.Value(response_body))
    if "skip" in rest:
        mode.response_header_mode = Mode.SKIP
    return mode


def metadata_dict(msg: proc_pb2.ProcessingRequest, namespace: str) -> dict[str, Any]:
    fm = msg.metadata_context.filter_metadata
    return json_format.MessageToDict(fm[namespace]) if namespace in fm else {}


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        received = self.rfile.read(length) if length else b""
        body = b'{"ok":true,"received":%d}' % len(received)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream", "recording")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


class Upstream:
    """An HTTP/1.1 server answering 200 with a small JSON body to any GET/POST/PUT."""

    def __init__(self, port: int) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Upstream)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Upstream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
