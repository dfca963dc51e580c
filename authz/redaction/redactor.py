"""Apply actions to findings in a body as the request view read it: JSON (only string values
change; the document keeps its structure and non-string values), form names and values,
multipart parts, text."""

from __future__ import annotations

import bisect
import collections
import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Any

from authz.redaction.detectors import Finding, Scanner, normalize

MASK_LAST4 = frozenset({"card", "iban", "phone", "ssn"})


class Redactor:
    """One request's redaction: placeholders are numbered consistently within it."""

    def __init__(self, scanner: Scanner, actions: Callable[[str], str], *, hmac_key: bytes = b"") -> None:
        self.scanner = scanner
        self.action_for = actions
        self.hmac_key = hmac_key
        self.placeholders: dict[tuple[str, str], str] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self.found: collections.Counter[str] = collections.Counter()
        self.changed = False

    def replacement(self, f: Finding) -> str | None:
        action = self.action_for(f.type)
        if action == "allow":
            return None
        if action == "placeholder":
            key = (f.type, f.value.casefold())
            if key not in self.placeholders:
                self.counters[f.type] += 1
                self.placeholders[key] = f"[{f.type.upper()}_{self.counters[f.type]}]"
            return self.placeholders[key]
        if action == "hash":
            digest = hmac.new(self.hmac_key, f.value.encode(), hashlib.sha256).hexdigest()[:16]
            return f"[{f.type.upper()}:{digest}]"
        # mask
        if f.type in MASK_LAST4:
            digits = [i for i, c in enumerate(f.value) if c.isalnum()]
            keep = set(digits[-4:])
            return "".join(c if (i in keep or not c.isalnum()) else "*" for i, c in enumerate(f.value))
        if f.type == "email":
            return "***@" + f.value.rsplit("@", 1)[1]
        return f"[REDACTED:{f.type}]"

    def text(self, value: str) -> str:
        return self.texts([value])[0]

    def texts(self, values: list[str]) -> list[str]:
        """Redact many strings with one scan: they are joined with a separator no detector can
        match across, scanned once, and the findings mapped back (the regex engine's per-call
        cost, not the bytes, dominated scanning JSON documents of many small strings)."""
        norms = [normalize(v) for v in values]
        joined = SEPARATOR.join(norms)
        findings = self.scanner.scan(joined)
        if not findings:
            return values
        starts, pos = [], 0
        for n in norms:
            starts.append(pos)
            pos += len(n) + len(SEPARATOR)
        out: list[list[str]] = [[] for _ in norms]
        cursor = list(starts)
        for f in findings:
            i = bisect.bisect_right(starts, f.start) - 1
            if f.end > starts[i] + len(norms[i]):
                continue  # cannot happen with the shipped detectors; never rewrite across strings
            self.found[f.type] += 1
            new = self.replacement(f)
            if new is None:
                continue
            out[i].append(joined[cursor[i]:f.start])
            out[i].append(new)
            cursor[i] = f.end
            self.changed = True
        # A string with nothing to replace goes back exactly as it came (not in its folded form).
        return [values[i] if not parts else "".join(parts) + joined[cursor[i]:starts[i] + len(norms[i])]
                for i, parts in enumerate(out)]

    def json_value(self, doc: Any) -> Any:
        strings: list[str] = []
        _collect(doc, strings)
        if not strings:
            return doc
        return _rebuild(doc, iter(self.texts(strings)))

    def rewrite(self, kind: str, document: Any) -> Any:
        """``document`` (an ``Outgoing`` document of a body of ``kind``) with findings replaced."""
        if kind == "json":
            return self.json_value(document)
        if kind == "form":
            pairs: tuple[tuple[str, str], ...] = document
            new = self.texts([n for n, _ in pairs] + [v for _, v in pairs])
            return tuple(zip(new[:len(pairs)], new[len(pairs):], strict=True))
        if kind == "multipart":
            return tuple(self.texts(list(document)))
        if kind == "text":
            return self.text(document)
        raise ValueError(f"a {kind} body cannot be scanned")

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.found.items()))


SEPARATOR = "\n\x00\n"


def _collect(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for v in value:
            _collect(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, out)


def _rebuild(value: Any, new: Any) -> Any:
    if isinstance(value, str):
        return next(new)
    if isinstance(value, list):
        return [_rebuild(v, new) for v in value]
    if isinstance(value, dict):
        return {k: _rebuild(v, new) for k, v in value.items()}
    return value


def categories_of(types: Mapping[str, int], categories: Mapping[str, str]) -> list[str]:
    return sorted({categories.get(t, "pii") for t in types})
