"""The shadow of a text: what detectors read, with a map back to the original.

Detection runs on a folded copy of the text (the shadow): format characters (Unicode category Cf:
zero-width space and joiners, bidi marks, soft hyphen, BOM) and combining marks removed; digits of
every decimal script as ASCII digits; every dash as ``-``; every space (NBSP, thin, ideographic)
as a space and every line separator as ``\\n``; compatibility forms (full-width letters, ligatures,
mathematical letters) by NFKC; accents stripped; letters of other scripts that look like Latin
ones (Cyrillic ``а``, Greek ``Ο``) as the Latin letter; HTML character references and
percent-escapes decoded when asked. A finding in the shadow maps back to exactly the span of the
original it came from, and only that span is rewritten: the shadow is never forwarded.

Folding is per code point and cached; ASCII text (the common case) is its own shadow.
"""

# ruff: noqa: RUF001, RUF002  (the look-alike letters are the point)

from __future__ import annotations

import bisect
import html
import re
import unicodedata

from authz.redaction.confusables import LATIN_LOOKALIKES

# Letters of other scripts that render like a Latin letter: these first (chosen by hand: the
# Cyrillic, Greek and Armenian look-alikes of the Latin alphabet), then the rest of Unicode's
# confusables data (``authz.redaction.confusables``); and typographic quotes and slashes.
CONFUSABLES = {
    "а": "a", "в": "b", "с": "c", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "м": "m", "н": "h",
    "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԝ": "w", "ь": "b", "ӏ": "l",
    "А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H", "І": "I", "Ј": "J", "К": "K", "М": "M", "О": "O",
    "Р": "P", "Ѕ": "S", "Т": "T", "Х": "X", "У": "Y", "Ԝ": "W", "Ԛ": "Q", "Ү": "Y", "Ӏ": "I", "ԁ": "d",
    "ɡ": "g", "ɑ": "a", "ı": "i", "ȷ": "j", "ο": "o", "α": "a", "ν": "v", "ρ": "p", "τ": "t", "ι": "i",
    "κ": "k", "χ": "x", "υ": "u", "ϲ": "c", "ϳ": "j", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H",
    "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C",
    "օ": "o", "ս": "u", "ց": "g", "հ": "h", "ո": "n", "ք": "f", "Ս": "U", "Օ": "O", "Տ": "S",
    "\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "\u201c": '"', "\u201d": '"',
    "\u2044": "/", "\u2215": "/", "\u2024": ".", "\u3002": ".", "\uff0e": ".",
}

_LINE_BREAKS = frozenset("\u2028\u2029\x85\x0b\x0c")


def fold_char(ch: str) -> str:
    """What one code point reads as in the shadow (``""``: nothing)."""
    cp = ord(ch)
    if 0xD800 <= cp <= 0xDFFF:
        return "\ufffd"  # a lone surrogate (undecodable bytes kept by surrogateescape)
    if ch in CONFUSABLES:
        return CONFUSABLES[ch]
    if ch in LATIN_LOOKALIKES:
        return LATIN_LOOKALIKES[ch]
    cat = unicodedata.category(ch)
    if cat == "Cf" or cat in ("Mn", "Me"):
        return ""
    if cat == "Nd":
        return chr(48 + unicodedata.decimal(ch))
    if cat == "Pd" or ch == "\u2212":
        return "-"
    if cat == "Zs":
        return " "
    if ch in _LINE_BREAKS or cat in ("Zl", "Zp"):
        return "\n"
    folded = unicodedata.normalize("NFKC", ch)
    if len(folded) == 1:
        decomposed = unicodedata.normalize("NFD", folded)
        if len(decomposed) > 1 and all(unicodedata.combining(c) for c in decomposed[1:]):
            folded = decomposed[0]  # é -> e
        if folded != ch and not folded.isascii():
            return fold_char(folded)  # a compatibility form of a confusable, a dash, a digit
        return folded
    return "".join(fold_char(c) for c in folded)  # ligatures, ½, ㈱: each piece folded again


class _FoldTable(dict[int, str]):
    """``str.translate`` table filled on first sight of each code point."""

    def __missing__(self, cp: int) -> str:
        value = fold_char(chr(cp))
        self[cp] = value
        return value


FOLD = _FoldTable({cp: chr(cp) for cp in range(128)})

_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
# Whitespace, hyphens and underscores, which dictionaries read as spaces.
_SEPARATORS = "\t\n\r\x0b\x0c-_"
_TO_SPACE = str.maketrans(dict.fromkeys(_SEPARATORS, " "))
_TO_SPACE_BYTES = bytes.maketrans(_SEPARATORS.encode(), b" " * len(_SEPARATORS))

# HTML character references and percent-escapes (decoded only where asked: a decoding layer).
_ENCODED = re.compile(r"&(?:#[0-9]{1,7};?|#[xX][0-9A-Fa-f]{1,6};?|[A-Za-z][A-Za-z0-9]{1,31};)|(?:%[0-9A-Fa-f]{2})+")


def _decode_escape(token: str) -> str:
    if token.startswith("&"):
        decoded = html.unescape(token)
        return "" if decoded == token else decoded
    try:
        return bytes.fromhex(token.replace("%", "")).decode("utf-8")
    except UnicodeDecodeError:
        return ""


class Shadow:
    """``text`` folded for detection, and the way back from a shadow span to the original.

    ``starts`` (shadow offsets) and ``origins`` (original offsets) break the text into pieces:
    a regular piece maps one to one; an irregular piece (one original character or escape that
    became zero, one or several shadow characters) maps as a whole. ``regular[k]`` says which.
    """

    __slots__ = ("origins", "regular", "starts", "text", "value")

    def __init__(self, text: str, *, decode: bool = False) -> None:
        self.text = text
        self.starts: list[int] = []
        self.origins: list[int] = []
        self.regular: list[bool] = []
        if text.isascii() and not (decode and ("&" in text or "%" in text)):
            self.value = text
            return
        # ASCII stays as it is; runs of other characters fold, one to one (no piece needed) or,
        # for a character folding to nothing or to several, as a piece of its own.
        marks: list[tuple[int, int, str, bool]] = []  # start, end, shadow text, one to one
        for m in _NON_ASCII.finditer(text):
            run, base = m.group(), m.start()
            folded = run.translate(FOLD)
            if len(folded) == len(run) and all(len(FOLD[ord(c)]) == 1 for c in set(run)):
                marks.append((base, m.end(), folded, True))
                continue
            for i, ch in enumerate(run):
                f = FOLD[ord(ch)]
                marks.append((base + i, base + i + 1, f, len(f) == 1))
        if decode:
            for m in _ENCODED.finditer(text):
                decoded = _decode_escape(m.group())
                if decoded:
                    marks.append((m.start(), m.end(), decoded.translate(FOLD), False))
            marks.sort()
        out: list[str] = []
        pos = shadow_pos = 0
        for start, end, folded, regular in marks:
            if start < pos:
                continue  # a character inside an escape already decoded
            if start > pos:
                out.append(text[pos:start])
                shadow_pos += start - pos
            if not regular:
                self._piece(shadow_pos, start, False)
                self._piece(shadow_pos + len(folded), end, True)
            out.append(folded)
            shadow_pos += len(folded)
            pos = end
        out.append(text[pos:])
        self.value = "".join(out)
        if self.starts:
            self.starts.insert(0, 0)
            self.origins.insert(0, 0)
            self.regular.insert(0, True)
            self._piece(len(self.value), len(text), False)  # the end

    def _piece(self, shadow_start: int, origin: int, regular: bool) -> None:
        self.starts.append(shadow_start)
        self.origins.append(origin)
        self.regular.append(regular)

    @property
    def identity(self) -> bool:
        return not self.starts

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span a shadow span ``[start, end)`` (``end > start``) came from."""
        if not self.starts:
            return start, end
        return self._origin(start, False), self._origin(end - 1, True)

    def _origin(self, pos: int, after: bool) -> int:
        k = bisect.bisect_right(self.starts, pos) - 1
        # A piece that folded to nothing shares its start with the next one: take the last.
        origin = self.origins[k]
        if self.regular[k]:
            return origin + (pos - self.starts[k]) + (1 if after else 0)
        return self.origins[k + 1] if after else origin


def spaced(shadow: str) -> str:
    """``shadow`` with every tab, line break, hyphen and underscore made a space, one for one (no
    offset moves): what dictionaries are matched on, their patterns taking any run of spaces
    between words (``Umbrella\\nHealth``, ``Umbrella - Health`` read as written with a space)."""
    if shadow.isascii():
        return shadow.encode("ascii").translate(_TO_SPACE_BYTES).decode("ascii")
    return shadow.translate(_TO_SPACE)
