"""Strict JSON, the one reader of every JSON body a client sends.

A body is parsed here once per request (``authz.request.view``); ``PARSES`` counts the parses so
a test can hold us to that.
"""

from __future__ import annotations

import collections
import json
from typing import Any

from authz.jsontext import has_unpaired_surrogate

MAX_JSON_DEPTH = 64


class _Count:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


PARSES = _Count()  # bodies parsed by this process so far: a test holds us to one per request


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a decoded JSON ``value`` nests deeper than ``limit`` (iterative: never recurses)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # C-fast; a duplicate shows as fewer keys than pairs
    if len(out) != len(pairs):
        counts = collections.Counter(k for k, _ in pairs)
        raise ValueError(f"duplicate key {next(k for k, n in counts.items() if n > 1)!r}")
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's decoder takes NaN and Infinity; JSON does not


# Built once: json.loads(..., object_pairs_hook=...) builds a new decoder on every call.
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys (two parsers reading two different ``name``s is
    how a policy is bypassed), no NaN or Infinity, bounded nesting, no unpaired surrogate
    escape (a string no UTF-8 encoder can write: the audit log, a rewritten body). Raises
    ``ValueError``."""
    PARSES.n += 1
    try:
        text = body.decode("utf-8")
        value = _STRICT_DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    # Nesting deeper than the limit needs more brackets than the limit: skip the walk otherwise.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and too_deep(value):
        raise ValueError("JSON nested too deeply")
    if has_unpaired_surrogate(text, value):
        raise ValueError("JSON holds an unpaired surrogate escape (\\uD800-\\uDFFF), which is not Unicode")
    return value
