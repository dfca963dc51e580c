"""ext_authz adapter: ``CheckRequest`` → ``Request``; a decision → ``CheckResponse``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from authz.envoy import handoff, wire
from authz.model import Context, Request
from authz.responses import Denial

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
METADATA_NAMESPACE = "envoy.filters.http.ext_authz"  # where ext_proc finds what Check decided

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def request_from_check(msg: auth_pb2.CheckRequest, *, body_limit: int = 0) -> Request:
    """Our request from Envoy's. ``body_limit`` is the ext_authz filter's ``max_request_bytes``
    (0: unknown); see ``_cut`` for why it matters."""
    attrs = msg.attributes
    http = attrs.request.http
    header_lists: dict[str, tuple[str, ...]] = {}
    raw_headers = http.header_map.headers
    if raw_headers:  # encode_raw_headers: one entry per header line; repeats kept apart
        headers: dict[str, str] = {}
        repeated: dict[str, list[str]] | None = None
        for h in raw_headers:  # the hottest loop of a Check: one pass, lists only for repeats
            key = h.key  # Envoy's header maps hold lower-case names
            raw = h.raw_value
            value = raw.decode("utf-8", "replace") if raw else h.value
            if key in headers:
                if repeated is None:
                    repeated = {}
                repeated.setdefault(key, [headers[key]]).append(value)
                headers[key] = f"{headers[key]},{value}"
            else:
                headers[key] = value
        if repeated:
            header_lists = {k: tuple(v) for k, v in repeated.items()}
    else:
        headers = {k.lower(): v for k, v in http.headers.items()}
    body = http.raw_body if http.raw_body else http.body.encode("utf-8")
    addr = attrs.source.address.socket_address
    return Request(
        # x-request-id (not Envoy's internal stream id) is what the access log, Process, the
        # upstream and the audit record all see: one id for one request everywhere.
        id=headers.get("x-request-id") or http.id,
        method=http.method or headers.get(":method", ""),
        scheme=http.scheme or headers.get(":scheme", ""),
        host=http.host or headers.get(":authority", ""),
        path=http.path or headers.get(":path", ""),
        headers=headers,
        header_lists=header_lists,
        body=body,
        body_truncated=_cut(headers, body, body_limit),
        protocol=http.protocol,
        source_address=addr.address,
        context_extensions=dict(attrs.context_extensions) if len(attrs.context_extensions) else {},
    )


def _cut(headers: Mapping[str, str], body: bytes, body_limit: int) -> bool:
    """Whether the body Envoy sent may be only the start of the request's.

    Envoy says so in ``x-envoy-auth-partial-body`` (and drops a client's own), but it compares
    what it sends with what it has buffered so far: when the buffer fills exactly at the limit
    with more still to arrive, it says ``false``. So a body that is shorter than the request's
    ``content-length``, or as long as the limit itself, is taken as cut too."""
    if headers.get(PARTIAL_BODY_HEADER, "").lower() == "true":
        return True
    if body_limit and len(body) >= body_limit:
        return True
    declared = headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > len(body)


def _header_options(headers: Mapping[str, str]) -> list[base_pb2.HeaderValueOption]:
    return [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v),
                                       append_action=_OVERWRITE)
            for k, v in headers.items()]


def to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    try:
        s.update(data)
    except (OverflowError, TypeError, ValueError):  # e.g. a claim of 10**400 (a Struct holds doubles)
        s = struct_pb2.Struct()
        s.update(_struct_safe(data))
    return s


def _struct_safe(value: Any) -> Any:
    """``value`` with what a Struct cannot hold (integers beyond a double, other types) as text."""
    if isinstance(value, Mapping):
        return {str(k): _struct_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_struct_safe(v) for v in value]
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        try:
            return float(value) if isinstance(value, int) else value
        except OverflowError:
            return str(value)
    return str(value)


def allow_response(ctx: Context, *, extra_response_headers: Mapping[str, str] | None = None
                   ) -> bytes:
    """The serialized ``CheckResponse`` allowing ``ctx.request`` with its mutations (encoded by
    ``authz.envoy.wire``: this is the hot path)."""
    m = ctx.mutations
    response_headers = m.response_headers
    if extra_response_headers:
        response_headers = {**response_headers, **extra_response_headers}
    ok = wire.ok_http_response(m.set_headers, m.remove_headers, response_headers)
    metadata = check_metadata(ctx)
    return wire.ok_check_response(ok, wire.string_struct(metadata) if metadata else b"")


def allow_response_message(ctx: Context, *, extra_response_headers: Mapping[str, str] | None = None
                           ) -> auth_pb2.CheckResponse:
    """The same answer built as upb messages: the reference the wire encoding is tested against."""
    m = ctx.mutations
    ok = auth_pb2.OkHttpResponse(
        headers=_header_options(m.set_headers),
        headers_to_remove=sorted(m.remove_headers),
        response_headers_to_add=_header_options({**m.response_headers,
                                                 **(extra_response_headers or {})}),
    )
    response = auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)
    metadata = check_metadata(ctx)
    if metadata:
        response.dynamic_metadata.CopyFrom(to_struct(metadata))
    return response


def check_metadata(ctx: Context) -> dict[str, str]:
    """What Process (ext_proc) needs to know about this request, as Envoy dynamic metadata:
    nothing when Process has nothing to do (a Struct costs ~1 µs a field, on every request)."""
    if not ctx.handoff.needed:
        return {}
    return handoff.encode(ctx.handoff)


def deny_response(denial: Denial, *, metadata: Mapping[str, Any] | None = None
                  ) -> auth_pb2.CheckResponse:
    code = code_pb2.UNAUTHENTICATED if denial.status == 401 else code_pb2.PERMISSION_DENIED
    response = auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code),
        denied_response=auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=denial.status),
            headers=_header_options(denial.headers),
            body=denial.body.decode("utf-8", "replace"),
        ),
    )
    if metadata:
        response.dynamic_metadata.CopyFrom(to_struct(metadata))
    return response
