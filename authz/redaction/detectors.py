"""Detectors: RE2 patterns (linear time, no catastrophic backtracking) run on the shadow of a text
(``authz.redaction.shadow``), plus validators (``authz.redaction.validators``) that turn "looks
like" into "is".

All detectors run as one combined RE2 scan (one pass over the text). A candidate that fails its
validator is not simply dropped: a shorter grouping of it is tried (``card ... 6467 12/27``: the
expiry is not part of the card), then every detector on its own over the candidate's span (an
IPv6 address the IPv4 pattern started on, a card after a number), so a value is found whatever
stands next to it. Findings carry the span of the ORIGINAL text they came from.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import re2

from authz.redaction import engine
from authz.redaction.dictionary import LEGAL_FORMS, dictionary_pattern
from authz.redaction.ner import PersonNames
from authz.redaction.shadow import Shadow, spaced
from authz.redaction.validators import IBAN_LENGTHS, VALIDATORS, compact, luhn, valid_iban

__all__ = ["CATEGORIES", "MODEL_DETECTORS", "PATTERNS", "Finding", "ScanTooComplex", "Scanner", "compile_custom",
           "luhn", "normalize", "valid_iban"]

# type -> category; the sensitivity header names categories.
CATEGORIES = {
    "email": "pii", "phone": "pii", "card": "pii", "ssn": "pii", "iban": "pii", "ipv4": "pii", "ipv6": "pii",
    "aws_key": "secret", "github_token": "secret", "openai_key": "secret", "anthropic_key": "secret",
    "slack_token": "secret", "jwt": "secret", "private_key": "secret", "password": "secret",
    "cloud_key": "secret", "token": "secret", "person": "pii",
}
# Detectors backed by a model (``authz.redaction.ner``, the ``authz[ner]`` extra): off unless listed.
MODEL_DETECTORS = ("person",)

# Between the digit groups of a number: a short run of spaces, dashes, dots, slashes or line
# breaks (the shadow has already made every Unicode dash a "-" and every space a " ").
SEP = r"[ \t\r\n./-]{1,3}"
HEX = "[0-9A-Fa-f]"
_H = HEX + "{1,4}"
_V4 = r"(?:\d{1,3}\.){3}\d{1,3}"
# An IPv6 address has eight groups or a "::" (so times and MAC addresses are not candidates).
IPV6_FULL = rf"(?:{_H}:){{7}}{_H}|(?:{_H}:){{6}}{_V4}"
IPV6_COMPRESSED = rf"(?:{_H}(?::{_H}){{0,6}})?::(?:(?:{_H}:){{0,5}}{_V4}|{_H}(?::{_H}){{0,6}})?"
_PASSWORD_WORD = r"(?:password|passwd|pwd|passphrase|passcode)"
_SECRET_WORD = (r"(?:secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?token|auth[_-]?token|secret[_-]?key"
                r"|private[_-]?key|token|credential|key)")
_QUOTED_OR_WORD = r"(?:\"[^\"\n\x00]{1,200}\"|'[^'\n\x00]{1,200}'|[^\s\"',;\x00]{4,200})"
_ASSIGN = r"[\"']?\s*(?::=|=>|[:=])\s*"

# type -> alternatives of (context before the value, the value). Order matters: the leftmost
# match wins, and at one position the first alternative that matches.
DETECTORS: dict[str, tuple[tuple[str, str], ...]] = {
    "private_key": (("", r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[A-Za-z0-9+/=\s:,\\-]+?"
                         r"-----END (?:[A-Z]+ )?PRIVATE KEY-----"),),
    "jwt": (("", r"\be[wy][A-Za-z0-9_-]{6,}={0,2}\.[A-Za-z0-9_-]{2,}={0,2}\.[A-Za-z0-9_-]*"),),
    "anthropic_key": (("", r"\bsk-ant-[A-Za-z0-9_-]{20,200}"),),
    "openai_key": (("", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}"),),
    "aws_key": (("", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),),
    "github_token": (("", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),),
    "slack_token": (("", r"\bxox[abposr]-[A-Za-z0-9-]{10,200}"),),
    "cloud_key": (
        (r"(?i:\baws_?secret(?:_?access)?_?key\b" + _ASSIGN + r"[\"']?)", r"[A-Za-z0-9/+]{40}"),
        (r"(?i:\b(?:AccountKey|SharedAccessKey|azure[_-]?(?:storage[_-]?)?(?:account[_-]?)?key"
         r"|azure[_-]?client[_-]?secret)\b" + _ASSIGN + r"[\"']?)", r"[A-Za-z0-9+/~._-]{20,200}={0,2}"),
        ("", r"\bAIza[0-9A-Za-z_-]{35}"),
    ),
    "password": (
        (r"(?i:\b[a-z0-9_.-]*?" + _PASSWORD_WORD + r"\b" + _ASSIGN + ")", _QUOTED_OR_WORD),  # DB_PASSWORD=
        (r"(?i:\b(?:password|passwd|passphrase|passcode|pin)\s+(?:is|was|=|:)\s+(?:set\s+to\s+|now\s+)?)",
         _QUOTED_OR_WORD.replace("{4,200}", "{3,200}")),
    ),
    "token": (
        (r"(?i:\bbearer\s+)", r"[A-Za-z0-9+/_.~-]{16,500}={0,2}"),
        (r"(?i:\b[a-z0-9_.-]*?" + _SECRET_WORD + r"\b" + _ASSIGN + ")", _QUOTED_OR_WORD),  # API_KEY=, "token":
    ),
    "email": (("", r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b"),),
    "iban": (("", r"\b[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{4}){2,7}(?:[ -]?[A-Za-z0-9]{1,4})?\b"),),
    "card": (("", r"\b(?:\d{13,19}|\d{4}(?:" + SEP + r"\d{4}){2}" + SEP + r"\d{1,4}(?:" + SEP + r"\d{1,3})?"
                  r"|\d{4}" + SEP + r"\d{6}" + SEP + r"\d{4,5})\b"),),
    "ssn": (
        ("", r"\b\d{3}" + SEP + r"\d{2}" + SEP + r"\d{4}\b"),
        (r"(?i:\b(?:ssn|social[ -]security(?:[ -](?:number|no\.?|#))?|ss#)[^0-9\n]{0,24})", r"\d{9}\b"),
    ),
    "phone": (
        ("", r"\+\d{1,3}[ .-]?(?:\(0\)[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}\b"),
        ("", r"(?:\b1[ .-])?\(\d{3}\) ?\d{3}[ .-]\d{4}\b"),
        ("", r"\b(?:1[ .-])?[2-9]\d{2}[ .-][2-9]\d{2}[ .-]\d{4}\b"),
        ("", r"\b\d{3}[.-]\d{3}[.-]\d{4}\b"),
        ("", r"\b0[1-9](?:[ .-]\d{2}){4}\b"),                                     # FR
        ("", r"\(0\d{2,4}\) ?\d{3,8}(?:[ -]\d{3,5})?\b"),                         # (030) 1234 5678
        ("", r"\b0[1-9]\d{1,3}[ /-]\d{3,8}(?:[ -]\d{3,5})?\b"),                   # UK, DE
    ),
    "ipv6": ((r"(?:^|[^0-9A-Za-z_:.])", r"(?:" + IPV6_FULL + "|" + IPV6_COMPRESSED + ")"),),
    "ipv4": (("", r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),),
}

PATTERNS: dict[str, str] = {name: "|".join(f"{ctx}(?:{value})" for ctx, value in alts)
                            for name, alts in DETECTORS.items()}

# Types whose candidates may be cut at a separator and tried again (a neighbour swallowed).
SHORTENABLE = frozenset({"card", "iban", "ssn", "phone", "ipv6", "ipv4"})

# A number right after one of these labels is that, not a card (even when Luhn agrees).
_NOT_A_CARD_BEFORE = re2.compile(r"(?i)\b(?:order|invoice|tracking|ticket|shipment|serial|ref|reference|"
                                 r"account|acct|id|isbn|imei|po)\s*(?:#|no\.?|number|nr\.?|:)?\s*#?\s*$")

# Context detectors, and the specific ones that name a value they found better.
RELABEL = frozenset({"password", "token"})
SPECIFIC = frozenset({"private_key", "jwt", "anthropic_key", "openai_key", "aws_key", "github_token",
                      "slack_token", "cloud_key"})

# Base64 blocks this long or longer are decoded and scanned (a decoding layer).
BASE64_BLOCK = re2.compile(r"[A-Za-z0-9+/]{24,}={0,2}|[A-Za-z0-9_-]{24,}")


class ScanTooComplex(ValueError):
    """A text with more failed candidates than the retry budget allows: not scanned to the end."""


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    type: str
    start: int
    end: int
    value: str       # the original text of the span
    norm: str = ""   # the shadow of the span: what placeholders and hashes are keyed by


def normalize(text: str) -> str:
    """The shadow of ``text`` (what detectors read). Kept for callers that scan a folded text;
    ``Scanner.scan`` folds by itself and reports spans of the text it was given."""
    return Shadow(text).value


@dataclasses.dataclass(frozen=True, slots=True)
class Decoding:
    """Decoding layers: HTML character references and percent-escapes (decoded in the shadow) and
    base64 blocks of ``base64_min`` characters or more (decoded and scanned; a finding masks the
    whole block), for findings of ``types`` (entity types or categories)."""

    types: frozenset[str] = frozenset({"secret", "pii"})
    escapes: bool = True
    base64_min: int = 24     # 0: off
    max_decoded: int = 64 * 1024


RETRY_BUDGET = 48   # places retried per failed candidate
# Places retried per scan: this many, plus one per this many characters. Beyond it the text is
# refused (ScanTooComplex) rather than scanned less carefully: a text made of candidates that
# fail validation would otherwise cost seconds, or hide a value behind them.
RETRY_PLACES = 4096
RETRY_CHARS_PER_PLACE = 4
CONTEXT = 32        # characters of context a retry window keeps before and after
RETRY_WINDOW = 256


class Scanner:
    """One compiled scan for a set of detectors, dictionaries and custom patterns."""

    def __init__(self, detectors: Iterable[str], dictionaries: Mapping[str, Iterable[str]] | None = None,
                 custom: Mapping[str, str] | None = None, *, decoding: Decoding | None = Decoding(),
                 variants: Mapping[str, Sequence[Sequence[str]]] | None = None,
                 names: PersonNames | None = None) -> None:
        # One alternation, one pass over the shadow, for the structured detectors and custom
        # patterns; one more per dictionary, over the spaced shadow (see _scan_shadow). Apart,
        # because a match's cost grows with the program it comes from, and a dictionary of
        # thousands of names is a large one.
        wanted = set(detectors)
        alternatives: list[tuple[str, str, str]] = []  # group, type, regex
        for name, alts in DETECTORS.items():
            if name in wanted:
                for i, (ctx, value) in enumerate(alts):
                    alternatives.append((f"{name}__{i}", name, f"{ctx}(?P<{name}__{i}>{value})"))
        for name, pattern in (custom or {}).items():
            alternatives.append((f"{name}__0", name, f"(?P<{name}__0>{pattern})"))
        structured = len(alternatives)
        for name, terms in (dictionaries or {}).items():
            pattern = dictionary_pattern(terms, (variants or {}).get(name, LEGAL_FORMS))
            if pattern:
                alternatives.append((f"{name}__0", name, f"(?P<{name}__0>{pattern})"))
        self.types = {group: kind for group, kind, _ in alternatives}
        self._combined = (re2.compile("|".join(rx for _, _, rx in alternatives[:structured]), engine.options())
                          if structured else None)
        self._dictionaries = [(kind, re2.compile(rx, engine.options())) for _, kind, rx in alternatives[structured:]]
        self._kinds: dict[int, str] = {}
        if self._combined is not None:
            self._kinds = {i: self.types[g] for g, i in self._combined.groupindex.items()}
        self._group_order = sorted(self._kinds)
        # For retries: every alternative on its own, and one set that says which match at a place.
        contexts = {f"{name}__{i}" for name, alts in DETECTORS.items() for i, (ctx, _) in enumerate(alts) if ctx}
        self._alternatives = [(kind, re2.compile(rx, engine.options()), group in contexts)
                              for group, kind, rx in alternatives[:structured]]
        self._set: Any = None
        if structured:
            self._set = re2.Set.MatchSet(engine.options())
            for _, _, rx in alternatives[:structured]:
                self._set.Add(rx)
            self._set.Compile()
        self._programs: list[tuple[Any, Sequence[int]]] = []
        if self._combined is not None:
            self._programs.append((self._combined, self._group_order))
        # The specific secret detectors, for a value a context detector (a password or token
        # after its keyword) found: "key AKIA..." is an AWS key, not just a token.
        specific = [rx for _, kind, rx in alternatives if kind in SPECIFIC]
        self._specific = re2.compile("|".join(specific), engine.options()) if specific else None
        self._specific_kinds: dict[int, str] = {}
        if self._specific is not None:
            self._specific_kinds = {i: self.types[g] for g, i in self._specific.groupindex.items()}
        self.decoding = decoding
        self.names = names  # the person detector (a NER model), when listed

    # --- the scan ----------------------------------------------------------------------------------

    def scan(self, text: str, *, names: bool = True) -> list[Finding]:
        """Findings in ``text``, in order, never overlapping, with spans of ``text`` itself.
        ``names``: the person detector reads it too, when there is one (not for the short
        windows where two pieces meet, read again only to join a value split mid-word)."""
        if (self._combined is None and not self._dictionaries and self.names is None) or not text:
            return []
        shadow = Shadow(text)
        found = self._scan_shadow(shadow)
        if names and self.names is not None:
            found = _merge(found, self._names(shadow))
        dec = self.decoding
        if dec is not None and dec.types:
            if dec.escapes and ("&" in text or "%" in text):
                decoded = Shadow(text, decode=True)
                if decoded.value != shadow.value:
                    extra = self._scan_shadow(decoded)
                    found = _merge(found, [f for f in extra if self._decoded_type(f.type)])
            if dec.base64_min and len(text) >= dec.base64_min:
                found = _merge(found, self._base64(shadow))
        return found

    def _scan_shadow(self, shadow: Shadow) -> list[Finding]:
        """The structured detectors on the shadow, then the dictionaries on the shadow with every
        whitespace, hyphen and underscore made a space (their patterns take any run of spaces
        between words: a name written across a line break, a tab or a hyphen reads as written with
        a space); a name overlapping a structured finding is left to it."""
        found = [self._finding(shadow, kind, s, e) for kind, s, e in self._find(shadow.value)]
        if not self._dictionaries:
            return found
        text = spaced(shadow.value)  # one for one: its offsets are the shadow's
        names: list[Finding] = []
        data = text.encode("utf-8", "surrogatepass")
        for kind, rx in self._dictionaries:
            for _, s, e in engine.matches(rx, {1: kind}, [1], text, data):
                names.append(self._finding(shadow, kind, s, e))
        names.sort(key=lambda f: f.start)
        return _merge(found, names)

    def _names(self, shadow: Shadow) -> list[Finding]:
        """Person names the model finds in the shadow (after every other detector: a name inside
        a structured finding or a dictionary term is left to it)."""
        assert self.names is not None
        if len(shadow.value) > self.names.max_chars:
            raise ScanTooComplex(f"the text is longer than the {self.names.max_chars} characters the person "
                                 "detector reads (redaction.ner.max_chars)")
        return [self._finding(shadow, "person", s, e) for s, e in self.names.spans(shadow.value)]

    def iter_types(self, text: str) -> Iterator[str]:
        for f in self.scan(text):
            yield f.type

    def _decoded_type(self, kind: str) -> bool:
        assert self.decoding is not None
        return kind in self.decoding.types or CATEGORIES.get(kind, "pii") in self.decoding.types

    @staticmethod
    def _finding(shadow: Shadow, kind: str, start: int, end: int) -> Finding:
        a, b = shadow.span(start, end)
        return Finding(kind, a, b, shadow.text[a:b], shadow.value[start:end])

    def _matches(self, s: str) -> Iterator[tuple[str, int, int]]:
        """(type, start, end) of each match of the combined scan, in character offsets."""
        if self._combined is None:
            return iter(())
        data = s.encode("utf-8", "surrogatepass")
        return engine.matches(self._combined, self._kinds, self._group_order, s, data)

    def _find(self, s: str) -> list[tuple[str, int, int]]:
        budget = [RETRY_PLACES + len(s) // RETRY_CHARS_PER_PLACE]
        out: list[tuple[str, int, int]] = []
        resume = 0
        for kind, start, end in self._matches(s):
            if end <= resume:
                continue
            if start >= resume:
                good = self._accept(kind, s, start, end)
                if kind in RELABEL:  # "key AKIA...", "private_key: -----BEGIN ...": the specific one
                    better, better_end = self._relabel(kind, s, start, end)
                    if better != kind:
                        kind, end, good = better, better_end, better_end
                if good == end:
                    out.append((kind, start, end))
                    resume = end
                    continue
                if good > 0:
                    out.append((kind, start, good))
                    resume = good
                lo = max(resume, start)
            else:
                lo = resume
            resume = self._retry(s, lo, end, out, resume, budget, (kind, start))
        return out

    def _relabel(self, kind: str, s: str, start: int, end: int) -> tuple[str, int]:
        if self._specific is None:
            return kind, end
        m = self._specific.match(s[start:start + 8192])
        if m is None or m.lastindex is None:
            return kind, end
        better = self._specific_kinds[m.lastindex]
        length = m.end(m.lastindex) - m.start(m.lastindex)
        if m.start(m.lastindex) != 0 or self._accept(better, s, start, start + length) != start + length:
            return kind, end
        return better, max(end, start + length)

    def _accept(self, kind: str, s: str, start: int, end: int) -> int:
        """``end`` when the candidate validates, the end of its longest valid shorter grouping,
        or -1."""
        check = VALIDATORS.get(kind)
        if kind == "card" and _NOT_A_CARD_BEFORE.search(s[max(0, start - 24):start]):
            return -1  # "Order #2594590454000728": a number labelled as something else
        if check is None or check(s[start:end]):
            return end
        if kind in SHORTENABLE:
            for cut in _cuts(kind, s, start, end):
                if check(s[start:cut]):
                    return cut
        return -1

    def _retry(self, s: str, lo: int, hi: int, out: list[tuple[str, int, int]], resume: int,
               total: list[int], failed: tuple[str, int]) -> int:
        """The candidates starting in ``[lo, hi)``, every detector on its own: at each place a
        detector matches (the leftmost first), every alternative that matches there is tried in
        order (validated, then shorter groupings); the first valid one is a finding and the search
        goes on from its end; none, and it goes on from the next character. Returns where the
        main scan resumes."""
        w0 = max(0, lo - CONTEXT)
        w1 = min(len(s), hi + RETRY_WINDOW)
        window = s[w0:w1]
        p, limit = lo - w0, hi - w0
        budget = RETRY_BUDGET
        skip = (failed[0], failed[1] - w0)  # already tried, and failed
        while p < limit and budget > 0:
            budget -= 1
            total[0] -= 1
            if total[0] < 0:
                raise ScanTooComplex("the text holds more near-miss candidates than can be retried within bounds")
            place = self._next_place(window, p, limit)
            if place is None:
                return resume
            found = self._at(window, place, p, w1 < len(s), skip, total)
            if found is None:
                p = place + 1
                continue
            kind, start, end = found
            out.append((kind, start + w0, end + w0))
            resume = end + w0
            p = end
        return resume

    def _next_place(self, window: str, p: int, limit: int) -> int | None:
        """Where the next match of any program starts (its whole match, context included), at or
        after ``p`` and before ``limit``."""
        places = [q for q in (engine.place(rx, window, p) for rx, _ in self._programs) if q is not None]
        place = min(places, default=None)
        return place if place is not None and place < limit else None

    def _at(self, window: str, place: int, p: int, cut_off: bool, skip: tuple[str, int],
            total: list[int]) -> tuple[str, int, int] | None:
        """The first alternative matching at ``place`` (in detector order) whose value starts at or
        after ``p`` and validates (or a shorter grouping of it does). ``skip``: the candidate
        that failed already. Each candidate tried counts against ``total``."""
        hits = self._set.Match(window[place:]) if self._set is not None else None
        for i in sorted(hits or ()):
            kind, rx, has_context = self._alternatives[i]
            if not has_context and (kind, place) == skip:
                continue
            m = engine.match_at(rx, window, place)
            if m is None:
                continue
            gs, ge = m
            if gs < p or (ge == len(window) and cut_off) or (kind, gs) == skip:
                continue
            total[0] -= 1
            if total[0] < 0:
                raise ScanTooComplex("the text holds more near-miss candidates than can be retried within bounds")
            good = self._accept(kind, window, gs, ge)
            if good > 0:
                return kind, gs, good
        return None

    def _base64(self, shadow: Shadow) -> list[Finding]:
        assert self.decoding is not None
        out: list[Finding] = []
        budget = self.decoding.max_decoded
        for m in BASE64_BLOCK.finditer(shadow.value):
            block = m.group()
            if len(block) < self.decoding.base64_min or budget <= 0 or len(block) > budget * 4 // 3 + 4:
                continue
            text = _b64text(block)
            if text is None:
                continue
            budget -= len(text)
            inner = [f for f in self.scan_plain(text) if self._decoded_type(f.type)]
            if inner:
                out.append(self._finding(shadow, inner[0].type, m.start(), m.end()))
        return out

    def scan_plain(self, text: str) -> list[Finding]:
        """``scan`` without decoding layers (what a decoded block is scanned with)."""
        return self._scan_shadow(Shadow(text))


def _cuts(kind: str, s: str, start: int, end: int) -> list[int]:
    """Where a candidate may be cut, longest first: before each separator run inside it, and for
    an IBAN where its country's length ends."""
    cuts = [i for i in range(end - 1, start, -1) if s[i - 1].isalnum() and not s[i].isalnum()]
    if kind == "iban":
        want = IBAN_LENGTHS.get(s[start:start + 2].upper())
        if want:
            n = 0
            for i in range(start, end):
                n += s[i].isalnum()
                if n == want:
                    if i + 1 < end and i + 1 not in cuts:
                        cuts.insert(0, i + 1)
                    break
    return cuts


def _b64text(block: str) -> str | None:
    """The text a base64 block decodes to, or None when it is not text."""
    padded = block + "=" * (-len(block) % 4)
    try:
        raw = (base64.urlsafe_b64decode(padded) if ("-" in block or "_" in block)
               else base64.b64decode(padded, validate=True))
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(c.isprintable() or c in "\n\r\t" for c in text)
    return text if text and printable >= 0.95 * len(text) else None


def _merge(first: list[Finding], more: list[Finding]) -> list[Finding]:
    """``first`` (in order, not overlapping) plus the findings of ``more`` that overlap none of
    them nor an earlier one of ``more``, in order."""
    if not more:
        return first
    ends_before = [f.start for f in first]
    taken: list[Finding] = []
    for f in sorted(more, key=lambda f: f.start):
        j = bisect.bisect_left(ends_before, f.end)  # first[:j] start before f ends
        if j and first[j - 1].end > f.start:
            continue
        if taken and taken[-1].end > f.start:
            continue
        taken.append(f)
    return sorted(first + taken, key=lambda f: f.start)


merge_findings = _merge


def compile_custom(pattern: str) -> None:
    """Raise ValueError with RE2's reason when a user pattern cannot be used."""
    try:
        re2.compile(pattern, engine.options())  # log_errors off: no raw RE2 log lines on stderr
    except Exception as exc:  # re2.error, whose message may be bytes
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"not a pattern RE2 accepts (linear-time engine): {reason}") from None


# Kept importable from here (tests and the bench use them).
_ = (compact, luhn, valid_iban)
