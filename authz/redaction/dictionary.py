"""Dictionary terms as patterns: whole words, case-insensitive (on the shadow, so confusable
letters and full-width forms are already folded), any run of whitespace or hyphens between words
or none (``Umbrella\\nHealth``, ``Umbrella-Health``, ``UmbrellaHealth``), and a company's legal
form in any of its spellings (``Acme Corp`` finds ``ACME Corporation``; ``Globex`` finds
``Globex Inc.`` whole)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import re2

from authz.redaction.shadow import FOLD

# Spellings of one legal form; a term ending in one of them matches any of them.
LEGAL_FORMS: tuple[tuple[str, ...], ...] = (
    ("corp", "corporation", "co", "company"), ("inc", "incorporated"), ("ltd", "limited"),
    ("llc", "l.l.c"), ("plc",), ("gmbh",), ("ag",), ("sa", "s.a"), ("bv", "b.v"), ("nv", "n.v"),
    ("sarl", "s.a.r.l"), ("pty ltd", "pty. ltd", "pty limited"), ("lp", "l.p"), ("llp", "l.l.p"),
)

BETWEEN = r"[\s\-_]*"
_WORDS = re.compile(r"[\s\-_]+")


def _form(spelling: str) -> str:
    """One spelling of a legal form: its dots optional, a trailing dot allowed."""
    parts = [BETWEEN.join(re2.escape(w) for w in _WORDS.split(piece) if w)
             for piece in spelling.split(".")]
    return r"\.?".join(p for p in parts if p) + r"\b\.?"


def _forms(group: Sequence[str]) -> str:
    return "(?:" + "|".join(_form(s) for s in sorted(group, key=len, reverse=True)) + ")"


def term_pattern(term: str, variants: Sequence[Sequence[str]] = LEGAL_FORMS) -> tuple[str, bool]:
    """The pattern of one term, and whether it names its legal form (else any may follow it)."""
    folded = term.translate(FOLD).strip()
    lower = folded.casefold().rstrip(".")
    suffix = ""
    for group in variants:
        hit = next((s for s in sorted(group, key=len, reverse=True)
                    if lower.endswith(" " + s.rstrip(".")) or lower.endswith("-" + s.rstrip("."))), None)
        if hit is not None:
            folded = folded.rstrip(".")[:-len(hit.rstrip("."))]
            suffix = BETWEEN + _forms(group)
            break
    words = [w for w in _WORDS.split(folded) if w]
    if not words:
        return "", False
    core = BETWEEN.join(re2.escape(w) for w in words)
    lead = r"\b" if words[0][0].isalnum() or words[0][0] == "_" else ""
    if suffix:
        return f"{lead}{core}{suffix}", True
    tail = r"\b" if words[-1][-1].isalnum() or words[-1][-1] == "_" else ""
    return f"{lead}{core}{tail}", False


def dictionary_pattern(terms: Iterable[str], variants: Sequence[Sequence[str]] = LEGAL_FORMS) -> str:
    unique = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)
    formed: list[str] = []
    bare: list[str] = []
    for term in unique:
        pattern, has_form = term_pattern(term, variants)
        if pattern:
            (formed if has_form else bare).append(pattern)
    alternatives = list(formed)
    if bare:
        forms = "|".join(_forms(g) for g in variants)
        alternatives.append(f"(?:{'|'.join(bare)})" + (f"(?:{BETWEEN}(?:{forms}))?" if variants else ""))
    return f"(?i:{'|'.join(alternatives)})" if alternatives else ""
