"""ext_proc adapter: ``ProcessingRequest`` pieces → our model; mutations → ``ProcessingResponse``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from authz.envoy import handoff
from authz.envoy.check import METADATA_NAMESPACE
from authz.model import Handoff, Mutations, Request
from authz.responses import Denial

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
Mode = processing_mode_pb2.ProcessingMode
ModeMessage = Any  # the generated ProcessingMode class (xds-protos ships no types)


def headers_dict(headers: pb.HttpHeaders, names: frozenset[str] | None = None) -> dict[str, str]:
    """The headers as one text per name (repeats joined by commas); only ``names`` when given
    (Process reads a handful of a request's headers: decoding the rest costs for nothing)."""
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        key = h.key.lower()
        if names is not None and key not in names:
            continue
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


# What Process reads of the request's own headers: its id and where it goes (the protocol of a
# refusal, the conditions of tools/list filtering). Conditions on other headers read the values
# Check handed over, as the client sent them.
REQUEST_NAMES = frozenset(("x-request-id", ":method", ":scheme", ":authority", ":path"))


def request_from_headers(headers: Mapping[str, str]) -> Request:
    return Request(
        id=headers.get("x-request-id", ""),
        method=headers.get(":method", ""),
        scheme=headers.get(":scheme", ""),
        host=headers.get(":authority", ""),
        path=headers.get(":path", ""),
        headers=dict(headers),
    )


def check_handoff(msg: pb.ProcessingRequest) -> Handoff | None:
    """What ``Check`` left for this request (forwarded by Envoy's metadata_options), or None."""
    if not msg.HasField("metadata_context"):
        return None
    fm = msg.metadata_context.filter_metadata
    if METADATA_NAMESPACE not in fm:
        return None
    fields = fm[METADATA_NAMESPACE].fields
    if handoff.FIELD not in fields:
        return None
    return handoff.decode(fields[handoff.FIELD].string_value)


def _header_mutation(m: Mutations, body_length: int | None) -> pb.HeaderMutation | None:
    set_headers = dict(m.set_headers)
    if body_length is not None:
        # Envoy rejects a buffered body mutation whose content-length disagrees (NOTES.md).
        set_headers["content-length"] = str(body_length)
    if not set_headers and not m.remove_headers:
        return None
    return pb.HeaderMutation(
        set_headers=[base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE)
            for k, v in set_headers.items()],
        remove_headers=sorted(m.remove_headers),
    )


def common_response(m: Mutations, *, body_phase: bool = False, buffered: bool = True) -> pb.CommonResponse:
    # A streamed body's chunks are replaced one by one: Envoy drops content-length itself then.
    body_length = len(m.body) if (m.body is not None and body_phase and buffered) else None
    common = pb.CommonResponse()
    hm = _header_mutation(m, body_length)
    if hm is not None:
        common.header_mutation.CopyFrom(hm)
    if m.body is not None and body_phase:
        common.body_mutation.CopyFrom(pb.BodyMutation(body=m.body))
    if m.clear_route_cache:
        common.clear_route_cache = True
    return common


def unchanged(m: Mutations) -> bool:
    return not (m.set_headers or m.remove_headers or m.body is not None or m.clear_route_cache)


# The serialized answers that change nothing, by phase (and body modes asked for): most answers
# of a stream are one of these, so they are built and encoded once.
_PLAIN: dict[tuple[str, str, str], bytes] = {}


def headers_answer(phase: str, m: Mutations, *, request_body: str = "", response_body: str = "") -> bytes:
    """``headers_response`` serialized, asking for the given body modes (none: no override)."""
    if not unchanged(m):
        mode = body_mode(request_body=request_body, response_body=response_body) if (
            request_body or response_body) else None
        out: bytes = headers_response(phase, m, mode=mode).SerializeToString()
        return out
    key = (phase, request_body, response_body)
    plain = _PLAIN.get(key)
    if plain is None:
        mode = body_mode(request_body=request_body, response_body=response_body) if (
            request_body or response_body) else None
        plain = _PLAIN[key] = headers_response(phase, m, mode=mode).SerializeToString()
    return plain


def body_answer(phase: str, m: Mutations, *, buffered: bool = True) -> bytes:
    """``body_response`` serialized."""
    if not unchanged(m):
        out: bytes = body_response(phase, m, buffered=buffered).SerializeToString()
        return out
    key = (phase, "", "")
    plain = _PLAIN.get(key)
    if plain is None:
        plain = _PLAIN[key] = body_response(phase, m).SerializeToString()
    return plain


def headers_response(phase: str, m: Mutations, *, mode: ModeMessage | None = None
                     ) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse(**{phase: pb.HeadersResponse(response=common_response(m))})
    if mode is not None:
        response.mode_override.CopyFrom(mode)
    return response


def body_response(phase: str, m: Mutations, *, buffered: bool = True) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        **{phase: pb.BodyResponse(response=common_response(m, body_phase=True, buffered=buffered))})


STREAMED_PIECE = 64 * 1024  # Envoy's advice for one StreamedBodyResponse


def streamed_body_responses(body: bytes, end: bool) -> list[pb.ProcessingResponse]:
    """A FULL_DUPLEX_STREAMED answer's next bytes, in pieces of at most 64 KiB (``end`` on the
    last): Envoy forwards exactly what Process sends."""
    pieces = [body[i:i + STREAMED_PIECE] for i in range(0, len(body), STREAMED_PIECE)] or [b""]
    return [pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
        body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(
            body=piece, end_of_stream=end and i == len(pieces) - 1)))))
        for i, piece in enumerate(pieces)]


def trailers_response(phase: str) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(**{phase: pb.TrailersResponse()})


def immediate_response(denial: Denial) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=denial.status),
        headers=pb.HeaderMutation(set_headers=[
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
                                       append_action=_OVERWRITE)
            for k, v in denial.headers.items()]),
        body=denial.body,
        details=denial.headers.get("x-authz-reason", "denied"),
    ))


_BODY_MODES = {"": Mode.NONE, "streamed": Mode.STREAMED, "duplex": Mode.FULL_DUPLEX_STREAMED,
               "partial": Mode.BUFFERED_PARTIAL, "buffered": Mode.BUFFERED}


def body_mode(*, request_body: str, response_body: str) -> ModeMessage:
    # Every field spelled out: Envoy checks an override against allowed_override_modes, and older
    # builds compare the raw values (a DEFAULT would match no entry and the override be ignored).
    # FULL_DUPLEX_STREAMED needs its trailers sent (they tell Process the body is complete).
    return Mode(request_header_mode=Mode.SEND, response_header_mode=Mode.SEND,
                request_body_mode=_BODY_MODES[request_body], response_body_mode=_BODY_MODES[response_body],
                request_trailer_mode=Mode.SKIP,
                response_trailer_mode=Mode.SEND if response_body == "duplex" else Mode.SKIP)
