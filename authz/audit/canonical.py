"""The canonical form a record's hash is taken over: UTF-8 JSON, keys sorted, no whitespace.

For what audit records hold (strings, integers, booleans, null, arrays, objects with ASCII keys:
the writer never stores floats) this is byte for byte RFC 8785 (JCS), so any JCS library can
recompute the hashes.

The writer hashes every record it writes, on the event loop, so the encoder is orjson (about a
microsecond a record, against 10-14 for the standard library's). Whatever orjson refuses (an
integer beyond 64 bits, a string holding a lone surrogate) goes through the standard library's
encoder, which writes the same bytes for everything both accept (tests/unit/audit/test_canonical
proves it). A lone surrogate (JSON allows the escape; Unicode and JCS do not) is written as
U+FFFD, and a NaN or infinite float (never stored) as null: one odd value must never stop the
writer.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from authz.jsontext import replace_surrogates

_SORTED = orjson.OPT_SORT_KEYS
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")).encode


def canonical(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=_SORTED)
    except TypeError:  # orjson.JSONEncodeError: a big integer, a lone surrogate, a foreign type
        return canonical_std(value)


def canonical_std(value: Any) -> bytes:
    """The same bytes from the standard library's encoder (and the fallback for what orjson refuses)."""
    text = _encode(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _encode(replace_surrogates(value)).encode("utf-8")
