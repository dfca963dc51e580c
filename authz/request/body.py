"""A request body read once, into the one form every stage works on.

``Body.kind`` says how it was read:

- ``json``: ``document`` is the decoded value (strict JSON, see ``authz.request.jsonbody``);
- ``form``: ``document`` is a tuple of ``FormField`` (``application/x-www-form-urlencoded``);
- ``multipart``: ``document`` is a tuple of ``Part`` (``multipart/form-data``), each part's
  content decoded by its ``Content-Transfer-Encoding``;
- ``text``: ``document`` is the text (UTF-8; bytes that are not UTF-8 kept as they are);
- ``none``: no body;
- ``encoded``: a ``Content-Encoding`` other than identity: nothing inside was read;
- ``unreadable``: JSON too deep to walk, or a body cut short: ``problem`` says which.

Every form keeps what it needs to write the body back with exactly the bytes that were not
rewritten (``encode_form``, ``encode_multipart``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import quopri
import re
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import quote_plus, unquote_plus

from authz.request.jsonbody import parse_json

BodyKind = Literal["none", "json", "form", "multipart", "text", "encoded", "unreadable"]


@dataclasses.dataclass(frozen=True, slots=True)
class FormField:
    """One ``name=value`` pair of a form body, with the raw bytes it came from."""

    name: str
    value: str
    raw_name: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """One part of a multipart body: its name, its decoded text, and where its content sits."""

    name: str
    filename: str | None
    content_type: str
    transfer_encoding: str  # "" (as is), "base64" or "quoted-printable"
    text: str
    start: int  # content span in the raw body
    end: int


@dataclasses.dataclass(slots=True)
class Body:
    kind: BodyKind
    raw: bytes
    document: Any = None
    problem: str = ""


NO_BODY = Body("none", b"")

_JSON_MEDIA = re.compile(r"application/(?:[a-z0-9.+-]+\+)?json\Z")


def media_type(content_types: Sequence[str]) -> str:
    """The media type a client labelled its body with ("" when it sent none), lower-case,
    without parameters. Two labels (two headers, or a list in one) come back joined with ``,``:
    no single type, which no protocol that asks for one accepts."""
    if not content_types:
        return ""
    joined = ",".join(content_types)
    return joined.split(";", 1)[0].strip().lower()


def is_json_media(mtype: str) -> bool:
    return bool(_JSON_MEDIA.match(mtype))


def content_encoded(encodings: Sequence[str]) -> bool:
    """Whether a ``Content-Encoding`` other than identity applies to the body."""
    return any(token.strip().lower() not in ("", "identity")
               for value in encodings for token in value.split(","))


def read_json(raw: bytes) -> Body:
    """The body as JSON (raises ``ValueError`` when it is not)."""
    return Body("json", raw, parse_json(raw))


def read_plain(raw: bytes, mtype: str, content_type: str) -> Body:
    """A body on a path of no declared protocol: JSON when it is JSON whatever the label (an
    upstream may ignore the label; a ``\\u``-escaped value must be read decoded), else the form
    or multipart its label names, else text."""
    if not raw:
        return NO_BODY
    stripped = raw.lstrip()
    if stripped[:1] in (b"{", b"[", b'"') or is_json_media(mtype):
        try:
            return read_json(raw)
        except RecursionError:
            return Body("unreadable", raw, problem="JSON nested too deeply")
        except ValueError as exc:
            if "too deeply" in str(exc):
                return Body("unreadable", raw, problem=str(exc))
    if mtype == "application/x-www-form-urlencoded":
        return Body("form", raw, read_form(raw))
    if mtype == "multipart/form-data":
        boundary = _param(content_type, "boundary")
        parts = read_multipart(raw, boundary.encode("latin-1", "replace")) if boundary else None
        if parts is not None:
            return Body("multipart", raw, parts)
    return Body("text", raw, raw.decode("utf-8", "surrogateescape"))


def _param(content_type: str, name: str) -> str:
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return ""


# --- forms -------------------------------------------------------------------------------------

def _unquote(raw: bytes) -> str:
    return unquote_plus(raw.decode("latin-1"), encoding="utf-8", errors="surrogateescape")


def read_form(raw: bytes) -> tuple[FormField, ...]:
    fields = []
    for segment in raw.split(b"&"):
        if not segment:
            continue
        name, _, value = segment.partition(b"=")
        fields.append(FormField(_unquote(name), _unquote(value), name))
    return tuple(fields)


def _quote(text: str) -> bytes:
    return quote_plus(text, errors="surrogateescape").encode()


def encode_form(raw: bytes, fields: Sequence[FormField], pairs: Sequence[tuple[str, str]]) -> bytes:
    """The form with only the changed names and values re-encoded; every other byte as it was."""
    out: list[bytes] = []
    it = iter(zip(fields, pairs, strict=True))
    for segment in raw.split(b"&"):
        if segment:
            field, (name, value) = next(it)
            if name != field.name or value != field.value:
                raw_name = field.raw_name if name == field.name else _quote(name)
                segment = raw_name + b"=" + _quote(value)
        out.append(segment)
    return b"&".join(out)


# --- multipart ---------------------------------------------------------------------------------

_DISPOSITION_PARAM = re.compile(r';\s*([a-zA-Z*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))')


def read_multipart(raw: bytes, boundary: bytes) -> tuple[Part, ...] | None:
    """The parts of a multipart body, or None when it does not follow the grammar (RFC 2046)
    closely enough to be sure what a server would read."""
    delimiter = b"--" + boundary
    pos = raw.find(delimiter)
    if pos != 0 and raw.find(b"\r\n" + delimiter) != pos - 2:
        return None
    parts: list[Part] = []
    while True:
        pos += len(delimiter)
        if raw[pos:pos + 2] == b"--":
            return tuple(parts)
        line_end = raw.find(b"\r\n", pos)
        if line_end < 0 or raw[pos:line_end].strip(b" \t"):
            return None
        headers_end = raw.find(b"\r\n\r\n", line_end)
        if headers_end < 0:
            return None
        header_block = raw[line_end + 2:headers_end] if headers_end > line_end else b""  # none: b""
        start = headers_end + 4
        end = raw.find(b"\r\n" + delimiter, start)
        if end < 0:
            return None
        part = _part(header_block, raw, start, end)
        if part is None:
            return None
        parts.append(part)
        pos = end + 2


def _part(header_block: bytes, raw: bytes, start: int, end: int) -> Part | None:
    headers: dict[str, str] = {}
    for line in header_block.decode("utf-8", "replace").split("\r\n") if header_block else ():
        key, sep, value = line.partition(":")
        if not sep:
            return None
        headers[key.strip().lower()] = value.strip()
    name, filename = "", None
    for m in _DISPOSITION_PARAM.finditer(headers.get("content-disposition", "")):
        value = m.group(2) if m.group(2) is not None else m.group(3).strip()
        if m.group(1).lower() == "name":
            name = value
        elif m.group(1).lower() == "filename":
            filename = value
    encoding = headers.get("content-transfer-encoding", "").lower()
    content = raw[start:end]
    try:
        if encoding == "base64":
            decoded = base64.b64decode(content, validate=False)
        elif encoding == "quoted-printable":
            decoded = quopri.decodestring(content)
        else:
            encoding, decoded = "", content
    except (binascii.Error, ValueError):
        return None
    return Part(name, filename, headers.get("content-type", ""), encoding,
                decoded.decode("utf-8", "surrogateescape"), start, end)


def encode_part(part: Part, text: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    if part.transfer_encoding == "base64":
        return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    if part.transfer_encoding == "quoted-printable":
        return quopri.encodestring(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return data


def encode_multipart(raw: bytes, parts: Sequence[Part], new_texts: Sequence[str]) -> bytes:
    """The body with only the changed parts' contents replaced; every other byte as it was."""
    out, cursor = [], 0
    for part, text in zip(parts, new_texts, strict=True):
        if text == part.text:
            continue
        out.append(raw[cursor:part.start])
        out.append(encode_part(part, text))
        cursor = part.end
    out.append(raw[cursor:])
    return b"".join(out)
