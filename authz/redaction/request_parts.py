"""What a rule covers besides the body: the URL query string and a configured list of request
headers.

Headers are rewritten in place (a finding masked like in the body). The query string is read
percent-decoded, its parameters joined by ``&`` as one text. A finding inside a parameter's value
is replaced there: the replacement is percent-encoded into exactly the bytes of the value that
carried the finding, and every other byte of the path and query goes upstream as the client wrote
it (the new ``:path`` is set by Check). A finding that touches a parameter's name (or spans two
parameters) cannot be masked without changing what the parameters are: the request is refused
(403 ``redaction.query``, naming the entity types, never the values).
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Iterable
from urllib.parse import quote

from authz.errors import Forbidden
from authz.redaction.redactor import Redactor
from authz.request import Request

_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# What a replacement may keep unencoded in a query value besides letters, digits and "_.-~":
# the masking characters. Everything else ("@", spaces, brackets, ":") is percent-encoded.
_SAFE = "*"


@dataclasses.dataclass(frozen=True, slots=True)
class Parts:
    """What to change upstream: headers to set and, when the query was masked, the new path."""

    headers: dict[str, str]
    path: str | None = None


def scan_request_parts(red: Redactor, request: Request, headers: Iterable[str], *, query: bool) -> Parts:
    """Scan the query (masking values in place, refusing what cannot be masked) and ``headers``."""
    path = _query(red, request) if query and request.query else None
    out: dict[str, str] = {}
    for name in headers:
        values = request.header_values(name)
        if not values:
            continue
        value = ",".join(values)
        new_value = red.text(value)
        if new_value != value:
            out[name] = new_value
    return Parts(out, path)


@dataclasses.dataclass(frozen=True, slots=True)
class _Param:
    raw: str
    name_end: int            # in the raw parameter: where the value starts (after "=")
    text: str                # name=value, percent-decoded ("+" read as a space)
    value_start: int         # in ``text``
    offsets: list[int]       # raw offset (in the value) of each character of the decoded value, and its end


def _query(red: Redactor, request: Request) -> str | None:
    params = [_param(p) for p in request.query.split("&")]
    starts, pos = [], 0
    for p in params:
        starts.append(pos)
        pos += len(p.text) + 1
    text = "&".join(p.text for p in params)
    edits: dict[int, list[tuple[int, int, str]]] = {}
    refused: set[str] = set()
    for f, new in red.edits(text):
        if new is None:
            continue
        i = bisect.bisect_right(starts, f.start) - 1
        p = params[i]
        start, end = f.start - starts[i], f.end - starts[i]
        if start < p.value_start or end > len(p.text):
            refused.add(f.type)  # in a name, across the "=" or across parameters
            continue
        edits.setdefault(i, []).append((start - p.value_start, end - p.value_start, new))
    if refused:
        types = sorted(refused)
        raise Forbidden(f"the query string carries data that may not leave in a URL: {', '.join(types)}",
                        reason="redaction.query", details={"entity_types": types})
    if not edits:
        return None
    raws = [p.raw for p in params]
    for i, spans in edits.items():
        raws[i] = _masked(params[i], spans)
    red.changed = True
    return f"{request.path_only}?{'&'.join(raws)}"


def _param(raw: str) -> _Param:
    """One parameter; one without ``=`` (``?oscar%40acme.com``) is all value."""
    name_raw, eq, value_raw = raw.partition("=")
    if not eq:
        name_raw, value_raw = "", raw
    name, _ = _decode(name_raw)
    value, offsets = _decode(value_raw)
    return _Param(raw, len(name_raw) + len(eq), name + eq + value, len(name) + len(eq), offsets)


def _decode(raw: str) -> tuple[str, list[int]]:
    """``raw`` percent-decoded as ``urllib.parse.unquote_plus`` does (UTF-8, undecodable bytes
    kept as surrogates), and the raw offset each decoded character came from (plus the end)."""
    chars: list[str] = []
    offsets: list[int] = []
    pos = 0
    for m in _ESCAPES.finditer(raw):
        for i in range(pos, m.start()):
            chars.append(" " if raw[i] == "+" else raw[i])
            offsets.append(i)
        at = m.start()
        for ch in bytes.fromhex(m.group().replace("%", "")).decode("utf-8", "surrogateescape"):
            chars.append(ch)
            offsets.append(at)
            at += 3 if 0xDC80 <= ord(ch) <= 0xDCFF else 3 * len(ch.encode("utf-8"))
        pos = m.end()
    for i in range(pos, len(raw)):
        chars.append(" " if raw[i] == "+" else raw[i])
        offsets.append(i)
    offsets.append(len(raw))
    return "".join(chars), offsets


def _masked(p: _Param, spans: list[tuple[int, int, str]]) -> str:
    """The raw parameter with each span of its decoded value replaced by its replacement,
    percent-encoded; every other byte as it came."""
    value_raw = p.raw[p.name_end:]
    out, pos = [p.raw[:p.name_end]], 0
    for start, end, new in sorted(spans):
        a, b = p.offsets[start], p.offsets[end]
        out.append(value_raw[pos:a])
        out.append(quote(new, safe=_SAFE, errors="surrogateescape"))
        pos = b
    out.append(value_raw[pos:])
    return "".join(out)
