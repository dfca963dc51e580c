"""The canonical form a record's hash is taken over: UTF-8 JSON, keys sorted, no whitespace.

For what audit records hold (strings, integers, booleans, null, arrays, objects with ASCII keys:
the writer never stores floats) this is byte for byte RFC 8785 (JCS), so any JCS library can
recompute the hashes; it is produced by the C JSON encoder because the writer hashes every
record it writes.
"""

from __future__ import annotations

import json
from typing import Any

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")).encode


def canonical(value: Any) -> bytes:
    return _encode(value).encode("utf-8")
