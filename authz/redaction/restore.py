"""Giving users back what the model never saw.

A request rule with ``placeholder`` and ``restore: true`` replaces ``Acme Corp`` with
``[CUSTOMER_1]`` on the way out; the answer's ``[CUSTOMER_1]`` becomes ``Acme Corp`` again on the
way back, for this exchange only. The mapping is made in ``Check`` and used in ``Process``: it
never travels in the hand-off (Envoy metadata, which access logs may print), only a random key
does. ``PlaceholderStore`` keeps it in this process, owned by the runtime, taken once, expiring
and bounded. A restart between a request's ``Check`` and its answer loses the mapping: the user
then reads the placeholders as the model wrote them (nothing sensitive is shown). The mapping is
never logged or audited.
"""

from __future__ import annotations

import collections
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping

from authz.redaction.detectors import Finding
from authz.redaction.redactor import Redactor

# placeholder -> (entity type, the original value)
Originals = dict[str, tuple[str, str]]


class RecordingRedactor(Redactor):
    """A ``Redactor`` that remembers which original each placeholder it wrote stands for."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.originals: Originals = {}

    def replacement(self, f: Finding) -> str | None:
        new = super().replacement(f)
        if new is not None and self.action_for(f.type) == "placeholder":
            self.originals.setdefault(new, (f.type, f.value))
        return new


def seed(redactor: Redactor, originals: Mapping[str, tuple[str, str]]) -> None:
    """Number ``redactor``'s placeholders on from the request's: the same value keeps the same
    placeholder across request and answer."""
    for placeholder, (kind, value) in originals.items():
        redactor.placeholders[(kind, value.casefold())] = placeholder
        redactor.counters[kind] += 1


class Restorer:
    """Replaces the placeholders of one exchange with their originals."""

    def __init__(self, originals: Mapping[str, tuple[str, str]]) -> None:
        self.values = {p: v for p, (_, v) in originals.items()}
        # Longest first: [CUSTOMER_12] before [CUSTOMER_1].
        alternatives = sorted(self.values, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
        self.count = 0

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, value: str, *, json_string: bool = False) -> str:
        """``value`` with placeholders restored; ``json_string``: the text sits inside a JSON
        string (tool-call arguments), so the original is written escaped."""
        if self._pattern is None or "[" not in value:
            return value
        sub: Callable[[re.Match[str]], str]
        if json_string:
            def sub(m: re.Match[str]) -> str:
                self.count += 1
                return json.dumps(self.values[m.group(0)], ensure_ascii=False)[1:-1]
        else:
            def sub(m: re.Match[str]) -> str:
                self.count += 1
                return self.values[m.group(0)]
        return self._pattern.sub(sub, value)


class PlaceholderStore:
    """Placeholder mappings between ``Check`` and ``Process``, in this process only."""

    def __init__(self, *, max_entries: int = 100_000, ttl_seconds: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl = ttl_seconds  # an answer may stream for minutes (Envoy's request_timeout)
        self._clock = clock
        self._entries: collections.OrderedDict[str, tuple[float, Originals]] = collections.OrderedDict()
        self.prefix = ""  # with several workers: the one holding the mapping ("w1."), see BodyStash

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, originals: Originals) -> str:
        key = self.prefix + secrets.token_urlsafe(12)
        self.adopt(key, originals)
        return key

    def adopt(self, key: str, originals: Originals) -> None:
        """Keep a mapping made elsewhere (another worker's, fetched for this Process)."""
        now = self._clock()
        self._entries[key] = (now + self.ttl, dict(originals))
        while self._entries:
            oldest, (expires, _) = next(iter(self._entries.items()))
            if expires >= now and len(self._entries) <= self.max_entries:
                break
            del self._entries[oldest]

    def take(self, key: str) -> Originals:
        """The mapping under ``key`` (empty when unknown or expired); either way it is gone."""
        entry = self._entries.pop(key, None)
        if entry is None or entry[0] < self._clock():
            return {}
        return entry[1]
