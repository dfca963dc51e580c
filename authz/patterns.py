"""Wildcard patterns for paths, hosts, names and models (``*`` matches any run of characters),
compiled once. The lowest layer: the request reading and the matching language both use it."""

from __future__ import annotations

import re
from collections.abc import Iterable


class Glob:
    """``*`` matches any run of characters (including ``/``); everything else is literal.
    Case-sensitive unless ``ignore_case``. Patterns without ``*`` are compared as strings."""

    __slots__ = ("_exact", "_regex")

    def __init__(self, patterns: Iterable[str], *, ignore_case: bool = False) -> None:
        exact: set[str] = set()
        regexes: list[str] = []
        for p in patterns:
            if ignore_case:
                p = p.lower()
            if "*" in p:
                regexes.append(".*".join(re.escape(part) for part in p.split("*")))
            else:
                exact.add(p)
        self._exact = frozenset(exact)
        flags = re.IGNORECASE if ignore_case else 0
        self._regex = re.compile("(?:" + "|".join(regexes) + r")\Z", flags) if regexes else None

    def __call__(self, value: str) -> bool:
        if value in self._exact:
            return True
        return bool(self._regex and self._regex.match(value))

    def __bool__(self) -> bool:
        return bool(self._exact or self._regex)


def host_without_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
