"""Reading audit lines strictly: what a line says is what its bytes say, to every reader.

A JSON parser lets the last of two equal keys win, reads ``NaN`` and ``Infinity``, and accepts
``\\u0061`` for ``a``: a line written that way can say one thing to ``grep`` and another to
``verify``. Every line the writer writes is the canonical encoding of its record with the hash
added as the last member, so a reader can hold each line to exactly that: ``parse_line`` refuses
duplicate keys and non-JSON constants, and ``canonical_problem`` says when the bytes are not
the canonical encoding of what they parse to.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from authz.audit.canonical import canonical


class DamagedLine(ValueError):
    """A line that is not one well-formed record."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DamagedLine(f"duplicate key {key!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise DamagedLine(f"{name} is not JSON")


_decoder = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant)


def parse_line(line: bytes) -> dict[str, Any]:
    """One record, or ``DamagedLine`` saying why not."""
    try:
        value = _decoder.decode(line.decode("utf-8"))
    except DamagedLine:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DamagedLine(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise DamagedLine("not a JSON object")
    return value


def check_line(line: bytes, record: dict[str, Any]) -> tuple[str | None, str]:
    """(why ``line`` is not the line the writer would have written for ``record``: its
    canonical form with ``"hash"`` added last, or None; the SHA-256 its content hashes to)."""
    body = canonical({k: v for k, v in record.items() if k != "hash"})
    digest = hashlib.sha256(body).hexdigest()
    if "hash" not in record:
        return "it has no hash", digest
    expected = body[:-1] + (b',"hash":' if len(body) > 2 else b'"hash":') + canonical(record["hash"]) + b"}"
    if line != expected:
        return ("its bytes are not the canonical encoding of what it parses to (a duplicate key, "
                "another escape, spacing, key order or number form): readers could disagree on what "
                "it says"), digest
    return None, digest
