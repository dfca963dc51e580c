"""The canonical form a record's hash is taken over: UTF-8 JSON, keys sorted, no whitespace.

For what audit records hold (strings, integers, booleans, null, arrays, objects with ASCII keys:
the writer never stores floats) this is byte for byte RFC 8785 (JCS), so any JCS library can
recompute the hashes; it is produced by the C JSON encoder because the writer hashes every
record it writes.

A string holding a lone surrogate (JSON allows the escape; Unicode and JCS do not) is written
with U+FFFD in its place: one hostile value must never stop the writer.
"""

from __future__ import annotations

import json
from typing import Any

from authz.jsontext import replace_surrogates

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")).encode


def canonical(value: Any) -> bytes:
    text = _encode(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _encode(replace_surrogates(value)).encode("utf-8")
