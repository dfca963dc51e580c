"""What a stream's held-back text may release when the upstream pauses (the flush deadline).

The hold-back window (``stream.Channel``) keeps the last ``window_chars`` of each text channel
until more text proves them clean, so a model that pauses mid-answer leaves its last words
unseen until it goes on. At the flush deadline the held text is judged again:

- ``proven`` (the default): only the part no value can continue out of goes out. A value that
  reaches the end of the held text may go on in the next delta, so the cut is put before the
  start of anything that could be the beginning of a value of a built-in detector or a
  dictionary term: the last word when no space follows it; a run of number groups (a card, a
  phone, an IBAN, an SSN: words carrying a digit, or short upper-case groups, three or fewer
  spaces apart) reaching the end; the words of a dictionary term begun and not finished; a
  secret's keyword (``password``, ``token``, ``Bearer``, ``api_key=`` ...) whose value may still
  come, or a private key begun and not ended. With custom patterns in the config nothing is
  released at a pause (their shape is unknown). Cut there, what goes out is scanned as usual.
- ``all``: everything held goes out, scanned as it stands. A value split exactly across the
  pause reaches the client in two parts, neither of which the detectors recognise: faster,
  not fail-closed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet

from authz.redaction.dictionary import LEGAL_FORMS, split_form
from authz.redaction.shadow import FOLD

_TOKEN = re.compile(r"\S+")
_WORD = re.compile(r"[^\s\-_]+")
_MAX_GAP = 3  # the widest separator between the digit groups of a number (detectors.SEP)
_GROUP = re.compile(r"[A-Z0-9]{1,4}|[./()+\-]{1,3}")
# A secret's keyword and what may follow it before its value is complete: the rest of the word,
# an assignment or "is", and a value begun (quoted values may hold spaces).
_SECRET_OPEN = re.compile(
    r"(?i)(?:password|passwd|pwd|passphrase|passcode|\bpin|secret|token|(?<![a-z])key|apikey|credential|bearer"
    r"|accountkey|sharedaccesskey|azure|aws)"
    r"[\w.-]*[\"']?\s*(?::=|=>|[:=]|\b(?:is|was)\b)?\s*(?:(?:set\s+to|now)\s+)?"
    r"(?:\"[^\"\n]*|'[^'\n]*|[^\s\"',;]*)\Z")


def _fold(token: str) -> str:
    return token.translate(FOLD)


def _numberish(token: str) -> bool:
    folded = _fold(token)
    return any(c.isdigit() for c in folded) or bool(_GROUP.fullmatch(folded))


def _plain(word: str) -> str:
    return _fold(word).casefold().replace(".", "").lstrip("([{\"'")


class PauseCut:
    """Where held text may be cut at a pause (everything before the cut goes out)."""

    def __init__(self, mode: str, dictionaries: Mapping[str, Iterable[str]] | None = None, *,
                 variants: Mapping[str, Sequence[Sequence[str]]] | None = None, custom: bool = False) -> None:
        self.mode = mode  # proven | all
        self.custom = custom
        self.prefixes: set[tuple[str, ...]] = set()
        for name, terms in (dictionaries or {}).items():
            for term in terms:
                words, form = split_form(term, (variants or {}).get(name, LEGAL_FORMS))
                plain = [_plain(w) for w in words]
                # A term's first words, and its whole core when a legal form may follow it.
                last = len(plain) if (form is not None and plain) else len(plain) - 1
                for k in range(1, last + 1):
                    self.prefixes.add(tuple(plain[:k]))
        self.depth = max((len(p) for p in self.prefixes), default=0)

    def __call__(self, text: str) -> int:
        if self.mode == "all":
            return len(text)
        if self.custom:
            return 0
        return open_start(text, self.prefixes, self.depth)


def open_start(text: str, prefixes: AbstractSet[tuple[str, ...]] = frozenset(), depth: int = 0) -> int:
    """Where a value that may continue past the end of ``text`` could begin (``len(text)``: none)."""
    tokens = [(m.start(), m.end()) for m in _TOKEN.finditer(text)]
    cut = len(text)
    i = len(tokens)
    if i and tokens[-1][1] == len(text):  # the last word, still open
        i -= 1
        cut = tokens[i][0]
        numbers = True  # an open word may yet become a number group
    else:
        numbers = len(text) - (tokens[-1][1] if tokens else 0) <= _MAX_GAP
    complete = cut
    # Number groups reaching the cut (a card's "4539 1488 " may go on with "0343 6467").
    while numbers and i:
        start, end = tokens[i - 1]
        if (tokens[i][0] if i < len(tokens) else len(text)) - end > _MAX_GAP or not _numberish(text[start:end]):
            break
        i -= 1
        cut = start
    # The first words of a dictionary term ("Acme " before "Corp").
    if depth:
        words = [(m.start(), m.group()) for m in _WORD.finditer(text, 0, complete)][-depth:]
        for k in range(len(words), 0, -1):
            if tuple(_plain(w) for _, w in words[-k:]) in prefixes:
                cut = min(cut, words[-k][0])
                break
    # A secret's keyword whose value may still come, or has begun.
    tail_from = max(0, len(text) - 400)
    for m in _SECRET_OPEN.finditer(text, tail_from):
        cut = min(cut, _token_start(text, m.start()))
        break
    begin = text.rfind("-----BEGIN")
    if begin >= 0 and "-----END" not in text[begin:]:
        cut = min(cut, begin)
    return cut


def _token_start(text: str, pos: int) -> int:
    while pos > 0 and not text[pos - 1].isspace():
        pos -= 1
    return pos
