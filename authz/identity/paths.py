"""Path rules that decide when a request needs no credential, written to fail closed.

A path with a dot segment, an encoded ``.``, ``/`` or ``\\``, or a backslash never matches a
prefix: Envoy should normalise paths (``normalize_path``, ``merge_slashes``), but if it does not,
``/public/../admin`` or ``/.well-known/oauth-protected-resource/%2e%2e/mcp`` must not pass as
anonymous while the upstream resolves them to a protected path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SUSPICIOUS = re.compile(r"%2e|%2f|%5c|\\|(^|/)\.\.?(/|$)", re.IGNORECASE)


def is_plain_path(path: str) -> bool:
    return _SUSPICIOUS.search(path) is None


def path_matches(path: str, prefixes: Sequence[str]) -> bool:
    """Segment-aware prefix match (``/public`` matches ``/public`` and ``/public/x``, not
    ``/publicity``); never true for a path that is not plain."""
    if not prefixes or not is_plain_path(path):
        return False
    for prefix in prefixes:
        base = prefix.rstrip("/")
        if not base or path == base or path.startswith(base + "/"):
            return True
    return False
