"""RFC 8785 JSON Canonicalization Scheme: one byte string per JSON value, so a hash over a
record means the same thing to the writer and to an auditor's verifier on another machine.

Keys sorted by their UTF-16 code units, no insignificant whitespace, strings with the minimal
JSON escapes, numbers as ECMAScript prints them (integers plainly, others shortest round-trip).
"""

from __future__ import annotations

import json
import math
from typing import Any


def _number(value: float | int) -> str:
    if isinstance(value, bool):
        raise TypeError("booleans are not numbers")
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError("NaN and Infinity have no JSON form")
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)  # shortest round-trip digits, like ECMAScript
    if "e" in text:
        mantissa, exp = text.split("e")
        sign = "-" if exp.startswith("-") else "+"
        text = f"{mantissa}e{sign}{int(exp.lstrip('+-'))}"
        if mantissa.endswith(".0"):
            text = text.replace(".0e", "e")
    return text


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def canonical(value: Any) -> bytes:
    return _encode(value).encode("utf-8")


def _encode(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(f"object keys must be strings, got {type(k).__name__}")
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(f"{_string(k)}:{_encode(v)}" for k, v in items) + "}"
    raise TypeError(f"{type(value).__name__} is not JSON")
