"""Apply actions to findings in a body as the request view read it: JSON (only string values
change; the document keeps its structure and non-string values), form names and values,
multipart parts, text."""

from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any

from authz.redaction.detectors import Finding, Scanner, merge_findings

MASK_LAST4 = frozenset({"card", "iban", "phone", "ssn"})


class _Stars(dict[int, str]):
    """``str.translate`` table: each letter or digit (of any script) to ``*``, the rest kept."""

    def __missing__(self, cp: int) -> str:
        value = "*" if chr(cp).isalnum() else chr(cp)
        self[cp] = value
        return value


_STARS = _Stars()


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
            key = (f.type, " ".join((f.norm or f.value).casefold().split()))
            if key not in self.placeholders:
                self.counters[f.type] += 1
                self.placeholders[key] = f"[{f.type.upper()}_{self.counters[f.type]}]"
            return self.placeholders[key]
        if action == "hash":
            value = " ".join((f.norm or f.value).split())
            digest = hmac.new(self.hmac_key, value.encode(), hashlib.sha256).hexdigest()[:16]
            return f"[{f.type.upper()}:{digest}]"
        # mask: on the text as written, or on its decoded shadow when it was written encoded
        value = f.norm if f.norm and ("&" in f.value or "%" in f.value) else f.value
        if f.type in MASK_LAST4:  # every letter and digit a "*" but the last four
            k, kept = len(value), 0
            while k > 0 and kept < 4:
                k -= 1
                kept += value[k].isalnum()
            return value[:k].translate(_STARS) + value[k:]
        if f.type == "email" and "@" in value:
            return "***@" + value.rsplit("@", 1)[1]
        return f"[REDACTED:{f.type}]"

    def text(self, value: str) -> str:
        return self.texts([value])[0]

    def edits(self, text: str) -> list[tuple[Finding, str | None]]:
        """The findings in ``text`` (counted), each with what replaces it (None: allowed), for a
        caller that writes the replacements itself (the query string, into its encoded form)."""
        out: list[tuple[Finding, str | None]] = []
        for f in self.scanner.scan(text):
            self.found[f.type] += 1
            out.append((f, self.replacement(f)))
        return out

    def texts(self, values: list[str], *, joined: bool = False) -> list[str]:
        """Redact many strings with one scan. Each string changes only inside the spans of its
        findings: everything else goes back exactly as it came (the shadow detection ran on is
        never forwarded). ``joined``: the strings are adjacent pieces of one text (the values of
        a document, the parts of a message) and a value split across two of them is found, the
        replacement put in the first piece and the rest of the value taken out of the others;
        otherwise no finding spans two strings."""
        return self._texts(values, [joined] * (len(values) - 1))

    def _texts(self, values: list[str], soft: list[bool]) -> list[str]:
        """``texts`` with the joining said per pair: ``soft[i]``, whether ``values[i]`` and
        ``values[i + 1]`` are pieces of one text (several groups of strings, one scan). Returns
        ``values`` itself when nothing was found."""
        if not values:
            return values
        seps = [SOFT if s else SEPARATOR for s in soft]
        starts, pos, pieces = [], 0, []
        for i, v in enumerate(values):
            starts.append(pos)
            pos += len(v)
            pieces.append(v)
            if i < len(seps):
                pos += len(seps[i])
                pieces.append(seps[i])
        text = "".join(pieces)
        findings = self.scanner.scan(text)
        if any(soft):
            findings = self._across(values, starts, findings, soft)
        if not findings:
            return values
        out: list[list[str]] = [[] for _ in values]
        cursor = list(starts)
        for f in findings:
            first = bisect.bisect_right(starts, f.start) - 1
            if f.end <= starts[first] + len(values[first]):  # inside one string: the common case
                self.found[f.type] += 1
                new = self.replacement(f)
                if new is not None:
                    out[first] += (text[cursor[first]:f.start], new)
                    cursor[first] = f.end
                    self.changed = True
                continue
            last = bisect.bisect_right(starts, f.end - 1) - 1
            if last != first:
                if not all(soft[first:last]):
                    continue  # cannot happen: no detector matches across the hard separator
                # the value as the pieces hold it, without the spaces that joined them
                parts = (values[i][max(f.start - starts[i], 0):f.end - starts[i]] for i in range(first, last + 1))
                f = dataclasses.replace(f, value="".join(parts))
            self.found[f.type] += 1
            new = self.replacement(f)
            if new is None:
                continue
            for i in range(first, last + 1):
                lo = max(f.start, starts[i])
                hi = min(f.end, starts[i] + len(values[i]))
                if hi <= lo:
                    continue
                out[i].append(text[cursor[i]:lo])
                out[i].append(new if i == first else "")
                cursor[i] = hi
            self.changed = True
        # A string with nothing to replace goes back as the very same object.
        return [values[i] if not parts else "".join(parts) + text[cursor[i]:starts[i] + len(values[i])]
                for i, parts in enumerate(out)]

    def _across(self, values: list[str], starts: list[int], findings: list[Finding],
                soft: list[bool]) -> list[Finding]:
        """Findings split mid-word between two adjacent pieces (``AKIAIOSF`` | ``ODNN7EXAMPLE``,
        ``oscar@`` | ``acme.com``), which the space joining them hides: the ends of each such
        pair are scanned written together, in one scan for all pairs.

        A value found there that overlaps a finding of the main scan is dropped (the main scan's
        stands), so each end is read only up to the nearest finding of the main scan: a pair
        whose last or first character is already in a finding is not read again."""
        windows: list[tuple[int, int, int]] = []  # piece, where its tail starts, tail length
        texts: list[str] = []
        found_starts = [f.start for f in findings]
        found_ends = [f.end for f in findings]  # in order too: findings never overlap
        for i in range(len(values) - 1):
            if not soft[i]:
                continue  # two strings of their own (a hard separator between them)
            end = starts[i] + len(values[i])
            k = bisect.bisect_right(found_starts, end) - 1  # the last finding starting before the join
            if k >= 0 and found_ends[k] > end - 1:
                continue  # it covers the last character of the piece (or the join)
            tail_start = max(end - ACROSS, starts[i], found_ends[k] if k >= 0 else 0)
            head_end = starts[i + 1] + min(ACROSS, len(values[i + 1]))
            if k + 1 < len(findings):
                head_end = min(head_end, found_starts[k + 1])
            left = values[i][tail_start - starts[i]:]
            right = values[i + 1][:head_end - starts[i + 1]]
            if left and right and left[-1] in _WORDISH and right[0] in _WORDISH and _split_value(left, right):
                windows.append((i, tail_start, len(left)))
                texts.append(left + right)
        if not windows:
            return findings
        joined = SEPARATOR.join(texts)
        offsets, pos = [], 0
        for t in texts:
            offsets.append(pos)
            pos += len(t) + len(SEPARATOR)
        extra: list[Finding] = []
        for f in self.scanner.scan(joined, names=False):
            k = bisect.bisect_right(offsets, f.start) - 1
            i, tail_start, tail = windows[k]
            a, b = f.start - offsets[k], f.end - offsets[k]
            if not a < tail < b:
                continue  # inside one piece: the main scan has it
            extra.append(Finding(f.type, tail_start + a, starts[i + 1] + (b - tail), f.value, f.norm))
        return merge_findings(findings, extra)

    def json_value(self, doc: Any) -> Any:
        """``doc`` with findings replaced in string values (the prose of a document read as one
        text, so a value split across content parts or messages is found), object keys and
        numbers (read as their digits; a number with a finding becomes the string replacing it)."""
        prose: list[str] = []
        fields: list[str] = []
        keys: dict[str, str] = {}
        numbers: list[str] = []
        _collect(doc, prose, fields, keys, numbers)
        # One scan for the whole document: the prose as one text, every other string on its own.
        names = list(keys)
        values = prose + fields + names + numbers
        new = self._texts(values, [i < len(prose) - 1 for i in range(len(values) - 1)])
        if new is values:
            return doc
        a, b, c = len(prose), len(prose) + len(fields), len(prose) + len(fields) + len(names)
        new_keys = dict(zip(names, new[b:c], strict=True))
        return _rebuild(doc, None, iter(new[:a]), iter(new[a:b]), new_keys, iter(new[c:]))

    def rewrite(self, kind: str, document: Any) -> Any:
        """``document`` (an ``Outgoing`` document of a body of ``kind``) with findings replaced."""
        if kind == "json":
            return self.json_value(document)
        if kind == "form":
            pairs: tuple[tuple[str, str], ...] = document
            n = len(pairs)  # one scan: the names each on its own, the values as one text
            both = self._texts([k for k, _ in pairs] + [v for _, v in pairs], [i >= n for i in range(2 * n - 1)])
            return tuple(zip(both[:n], both[n:], strict=True))
        if kind == "multipart":
            return tuple(self.texts(list(document), joined=True))
        if kind == "text":
            return self.text(document)
        raise ValueError(f"a {kind} body cannot be scanned")

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.found.items()))


SEPARATOR = "\n\x00\n"  # no detector matches across it
ACROSS = 32                # characters of each side scanned together where two pieces meet mid-word
_WORDISH = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ@._+-%&#=")
SOFT = " "                # a space: values split across pieces are found across it
_TAIL_MARK = re.compile(r"[0-9@A-Z]")
_HEAD_MARK = re.compile(r"[0-9@]")


# Strings under these keys name the structure of a message (its type, role, model, ids), not
# what it says: they are scanned on their own, so they do not stand between two pieces of prose.
STRUCTURAL = frozenset({
    "type", "role", "model", "id", "name", "jsonrpc", "method", "object", "tool_call_id", "tool_use_id",
    "call_id", "stop_reason", "finish_reason", "media_type", "mime_type", "mimeType", "detail", "format",
    "encoding_format", "service_tier", "reasoning_effort", "tool_choice", "status", "uri",
})


def _split_value(left: str, right: str) -> bool:
    """Whether two pieces meeting mid-word may be one value cut in two: the word ending the first
    has a digit, an @ or a capital (a key, a number, an address, a name), or the word starting the
    second has a digit or an @. Prose that merely runs on ("next year" | "the") is not scanned
    again."""
    tail = left.rsplit(None, 1)[-1] if not left[-1].isspace() else ""
    head = right.split(None, 1)[0] if not right[0].isspace() else ""
    if tail.isascii() and head.isascii():  # the common case, in C
        return _TAIL_MARK.search(tail) is not None or _HEAD_MARK.search(head) is not None
    return any(c.isdigit() or c == "@" or c.isupper() for c in tail) or any(c.isdigit() or c == "@" for c in head)


def _collect(value: Any, prose: list[str], fields: list[str], keys: dict[str, str], numbers: list[str]) -> None:
    stack: list[tuple[Any, str | None]] = [(value, None)]
    while stack:
        item, key = stack.pop()
        if isinstance(item, str):
            (fields if key in STRUCTURAL else prose).append(item)
        elif isinstance(item, dict):
            for k in item:
                keys.setdefault(k, k)
            stack.extend((v, k) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((v, key) for v in reversed(item))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            numbers.append(repr(item))


def _rebuild(value: Any, key: str | None, prose: Any, fields: Any, keys: dict[str, str], numbers: Any) -> Any:
    if isinstance(value, str):
        return next(fields if key in STRUCTURAL else prose)
    if isinstance(value, list):
        return [_rebuild(v, key, prose, fields, keys, numbers) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            new_key: str = keys.get(k) or k
            while new_key in out:  # two keys masked alike: keep both
                new_key += "_"
            out[new_key] = _rebuild(v, k, prose, fields, keys, numbers)
        return out
    if isinstance(value, int | float) and not isinstance(value, bool):
        new = next(numbers)
        return value if new == repr(value) else new
    return value


def categories_of(types: Mapping[str, int], categories: Mapping[str, str]) -> list[str]:
    return sorted({categories.get(t, "pii") for t in types})
