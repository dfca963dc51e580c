"""Protobuf wire encoding of the one message on the hot path: an allowing ``CheckResponse``.

Building the same answer with upb message objects costs ~1 µs per header (a Python object per
``HeaderValueOption`` and ``HeaderValue``, then serialization); on a request path whose whole
budget is a few tens of µs that was the largest single cost after the signature. Here the
bytes are written directly: protobuf messages are field after field, each ``tag, length,
bytes``, and the encodings of values that repeat from request to request (removed header
names, the ``OK`` status) are computed once. ``tests/unit/test_wire.py`` proves every output
parses with upb to exactly the message the slow path builds.

Field numbers (envoy/service/auth/v3/external_auth.proto, envoy/config/core/v3/base.proto)::

    CheckResponse     status=1 (google.rpc.Status), ok_response=3, dynamic_metadata=4 (Struct)
    Struct            fields=1 (map entries: key=1, value=2); Value string_value=3
    OkHttpResponse    headers=2, headers_to_remove=5, response_headers_to_add=6
    HeaderValueOption header=1 (HeaderValue), append_action=3
    HeaderValue       key=1, value=2
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_LEN = 2  # wire type of length-delimited fields


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = tuple(_varint(n) for n in range(16384))  # every length below 16 KiB, precomputed


def varint(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else _varint(n)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return _VARINTS[(number << 3) | _LEN] + varint(len(payload)) + payload


# HeaderValueOption.append_action = OVERWRITE_IF_EXISTS_OR_ADD (2): tag (3 << 3 | 0), value 2.
_OVERWRITE = b"\x18\x02"


_OPTIONS: dict[tuple[str, str], bytes] = {}  # (name, value) -> encoded field, for values that repeat
_OPTIONS_MAX = 8192


def header_field(number: int, key: str, value: str) -> bytes:
    """Field ``number`` holding a ``HeaderValueOption`` that overwrites ``key`` with ``value``.

    The identity headers of a caller are the same strings on each of its requests: their
    encodings are kept (bounded; values over 256 characters, such as assertions, never are)."""
    if len(value) > 256:
        return field(number, header_option(key, value))
    cache_key = (key, value) if number == 2 else (f"{number}:{key}", value)
    encoded = _OPTIONS.get(cache_key)
    if encoded is None:
        if len(_OPTIONS) >= _OPTIONS_MAX:
            _OPTIONS.clear()
        encoded = _OPTIONS[cache_key] = field(number, header_option(key, value))
    return encoded


def header_option(key: str, value: str) -> bytes:
    """One ``HeaderValueOption`` (without its own field tag) that overwrites ``key``."""
    k = key.encode()
    v = value.encode()
    inner = b"\x0a" + varint(len(k)) + k + b"\x12" + varint(len(v)) + v
    return b"\x0a" + varint(len(inner)) + inner + _OVERWRITE


_REMOVES: dict[str, bytes] = {}  # header name -> encoded headers_to_remove field (names are few)


def _remove_field(name: str) -> bytes:
    encoded = _REMOVES.get(name)
    if encoded is None:
        encoded = field(5, name.encode())
        if len(_REMOVES) < 4096:  # names come from config and a few stages: bounded anyway
            _REMOVES[name] = encoded
    return encoded


def ok_http_response(headers: Mapping[str, str], remove: Iterable[str],
                     response_headers: Mapping[str, str]) -> bytes:
    """An ``OkHttpResponse``: set ``headers`` upstream, remove ``remove`` (sorted, as the slow
    path did, so the bytes are deterministic), add ``response_headers`` to the client's answer."""
    parts = [header_field(2, k, v) for k, v in headers.items()]
    parts += [_remove_field(name) for name in sorted(remove)]
    parts += [header_field(6, k, v) for k, v in response_headers.items()]
    return b"".join(parts)


def string_struct(fields: Mapping[str, str]) -> bytes:
    """A ``google.protobuf.Struct`` of string values (the hand-off's metadata): each entry of its
    ``fields`` map (1) is a message of key (1) and ``Value`` (2), whose string_value is field 3."""
    out = b""
    for key, text in fields.items():
        value = field(3, text.encode())
        out += field(1, field(1, key.encode()) + field(2, value))
    return out


# status=1: google.rpc.Status with code OK (0) serializes to an empty message.
_STATUS_OK = field(1, b"")


def ok_check_response(ok_response: bytes, dynamic_metadata: bytes = b"") -> bytes:
    """``CheckResponse{status: OK, ok_response, dynamic_metadata}`` from encoded parts
    (``dynamic_metadata``: a serialized ``google.protobuf.Struct``, or empty for none)."""
    out = _STATUS_OK + field(3, ok_response)
    if dynamic_metadata:
        out += field(4, dynamic_metadata)
    return out
