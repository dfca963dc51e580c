"""Apply actions to findings in a body: JSON-aware (only string values change, the document stays
valid JSON with its structure and non-string values intact), plain text and form bodies too."""

from __future__ import annotations

import bisect
import collections
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from authz.jsontext import dumps_utf8
from authz.policy.actions import MAX_JSON_DEPTH, too_deep
from authz.redaction.detectors import Finding, Scanner, normalize

MASK_LAST4 = frozenset({"card", "iban", "phone", "ssn"})


class Unscannable(ValueError):
    """A JSON body nested deeper than ``MAX_JSON_DEPTH``: it can be neither walked (the walk
    recurses) nor scanned as plain text (escapes such as ``\\u0040`` would hide what a JSON
    reader upstream decodes). The stage refuses it rather than forward it unscanned."""


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
            return norms
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
        return [norms[i] if not parts else "".join(parts) + joined[cursor[i]:starts[i] + len(norms[i])]
                for i, parts in enumerate(out)]

    def json_value(self, doc: Any) -> Any:
        strings: list[str] = []
        _collect(doc, strings)
        if not strings:
            return doc
        return _rebuild(doc, iter(self.texts(strings)))

    def body(self, raw: bytes, content_type: str) -> bytes:
        """The body with findings replaced (``raw`` itself when nothing changed). Raises
        ``Unscannable`` for a JSON body nested too deeply to walk."""
        ctype = content_type.split(";", 1)[0].strip().lower()
        text = raw.decode("utf-8", "replace")
        if ctype == "application/json" or ctype.endswith("+json") or (not ctype and text.lstrip()[:1] in "{["):
            try:
                doc = json.loads(text)
            except RecursionError:
                raise Unscannable(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
            except ValueError:
                doc = None
            # Deeper than the limit needs more brackets than the limit: skip the walk otherwise.
            if (doc is not None and text.count("[") + text.count("{") > MAX_JSON_DEPTH
                    and too_deep(doc)):
                raise Unscannable(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            if doc is not None:
                new = self.json_value(doc)
                return dumps_utf8(new) if self.changed else raw
        if ctype == "application/x-www-form-urlencoded":
            pairs = parse_qsl(text, keep_blank_values=True)
            new_pairs = list(zip([k for k, _ in pairs], self.texts([v for _, v in pairs]), strict=True))
            return urlencode(new_pairs).encode() if self.changed else raw
        new_text = self.text(text)
        return new_text.encode() if self.changed else raw

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
