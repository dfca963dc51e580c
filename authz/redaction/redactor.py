"""Apply actions to findings in a body: JSON-aware (only string values change, the document stays
valid JSON with its structure and non-string values intact), plain text and form bodies too."""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

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
        norm = normalize(value)
        findings = self.scanner.scan(norm)
        if not findings:
            return value if norm == value else norm
        out, pos = [], 0
        for f in findings:
            self.found[f.type] += 1
            new = self.replacement(f)
            if new is None:
                continue
            out.append(norm[pos:f.start])
            out.append(new)
            pos = f.end
            self.changed = True
        out.append(norm[pos:])
        return "".join(out)

    def json_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json_value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.json_value(v) for k, v in value.items()}
        return value

    def body(self, raw: bytes, content_type: str) -> bytes:
        """The body with findings replaced (``raw`` itself when nothing changed)."""
        ctype = content_type.split(";", 1)[0].strip().lower()
        text = raw.decode("utf-8", "replace")
        if ctype == "application/json" or ctype.endswith("+json") or (not ctype and text.lstrip()[:1] in "{["):
            try:
                doc = json.loads(text)
            except ValueError:
                doc = None
            if doc is not None:
                new = self.json_value(doc)
                return json.dumps(new, ensure_ascii=False, separators=(",", ":")).encode() if self.changed else raw
        if ctype == "application/x-www-form-urlencoded":
            pairs = parse_qsl(text, keep_blank_values=True)
            new_pairs = [(k, self.text(v)) for k, v in pairs]
            return urlencode(new_pairs).encode() if self.changed else raw
        new_text = self.text(text)
        return new_text.encode() if self.changed else raw

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.found.items()))


def categories_of(types: Mapping[str, int], categories: Mapping[str, str]) -> list[str]:
    return sorted({categories.get(t, "pii") for t in types})
