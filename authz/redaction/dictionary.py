"""Dictionary terms as patterns: whole words, case-insensitive, matched on the spaced shadow
(confusable letters and full-width forms folded, every whitespace, hyphen and underscore made a
space: ``Umbrella\\nHealth`` and ``Umbrella - Health`` read ``Umbrella Health``), with the words of
a term written with any run of spaces between them or none (``UmbrellaHealth``), and a company's legal form in
any of its spellings (``Acme Corp`` finds ``ACME Corporation``; ``Globex`` finds ``Globex Inc.``
whole).

Terms are literal alternatives under one pair of word boundaries, as RE2's DFA likes them: a
dictionary of tens of thousands of names stays one fast pass.
"""

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

_WORDS = re.compile(r"[\s\-_]+")


def _spellings(words: Sequence[str]) -> list[str]:
    """A term's words with a space between them (read as any run of spaces, or none)."""
    return [" ".join(words)]


def _form(spelling: str) -> str:
    """One spelling of a legal form: its dots optional, a trailing dot allowed."""
    words = [w for w in _WORDS.split(spelling) if w]
    parts = [r"\.?".join(re2.escape(piece) for piece in w.split(".") if piece) for w in words]
    return " *".join(parts)


def _forms(group: Sequence[str]) -> str:
    return "(?:" + "|".join(_form(s) for s in sorted(group, key=len, reverse=True)) + r")\b\.?"


def split_form(term: str, variants: Sequence[Sequence[str]] = LEGAL_FORMS) -> tuple[list[str], int | None]:
    """The words of ``term`` (folded) and the index in ``variants`` of the legal form it ends in,
    which is cut off (``Acme Corp`` -> ``["Acme"]``, the corp group)."""
    folded = term.translate(FOLD).strip()
    words = [w for w in _WORDS.split(folded) if w]
    plain = [w.casefold().replace(".", "") for w in words]  # "S.A." and "SA" alike
    for index, group in enumerate(variants):
        for spelling in sorted(group, key=len, reverse=True):
            form = [w.replace(".", "") for w in _WORDS.split(spelling.casefold()) if w]
            if len(words) > len(form) and plain[-len(form):] == form:
                return words[:-len(form)], index
    return words, None


def dictionary_pattern(terms: Iterable[str], variants: Sequence[Sequence[str]] = LEGAL_FORMS) -> str:
    formed: dict[int, set[str]] = {}
    bare: set[str] = set()
    for term in terms:
        words, form = split_form(term, variants)
        if not words:
            continue
        spellings = _spellings(words)
        (formed.setdefault(form, set()) if form is not None else bare).update(spellings)
    alternatives = []
    for index, cores in sorted(formed.items()):
        alternatives.append(rf"\b(?:{_literals(cores)}) *{_forms(variants[index])}")
    if bare:
        suffix = f"(?: *(?:{'|'.join(_forms(g) for g in variants)}))?" if variants else ""
        alternatives.append(rf"\b(?:{_literals(bare)})\b{suffix}")
    return f"(?i:{'|'.join(alternatives)})" if alternatives else ""


def _literals(cores: Iterable[str]) -> str:
    # Between words: any run of spaces, or none (the spaced shadow has no other separator).
    return "|".join(re2.escape(c).replace("\\ ", " *") for c in sorted(cores, key=len, reverse=True))
