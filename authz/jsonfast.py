"""JSON the sidecar reads but does not judge (answers, their usage): parsed by orjson where it
reads the document exactly as the standard library does, by the standard library otherwise.

orjson differs in three ways, each sent to the standard library: it refuses what it cannot hold
(NaN, Infinity, an exponent past a double, a lone surrogate escape, nesting past 1024, a text not
UTF-8), and reads an integer past 64 bits as a float, which re-encoding would then change (a run of
19 digits or more takes the standard library's path). Duplicate keys: both keep the last.
Request bodies are not read here: ``authz.request.jsonbody`` is their one strict reader.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_NUMBER = re.compile(rb"[0-9]{19}")
_LONG_NUMBER_TEXT = re.compile(r"[0-9]{19}")


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``, faster. Raises ``ValueError`` (or ``RecursionError``) as it does."""
    long_number = _LONG_NUMBER_TEXT.search(data) if isinstance(data, str) else _LONG_NUMBER.search(data)
    if long_number is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)
