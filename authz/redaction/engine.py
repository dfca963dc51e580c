"""RE2's own match calls, for the scans that run per request.

The wrapper's ``finditer``/``search`` convert the span of every group of every match between
UTF-8 bytes and characters in Python; with the thirty groups of the combined scan that cost more
than the scan. These call the engine on the UTF-8 bytes once encoded and convert only the spans
used (nothing at all for ASCII text). Another build of re2 without the native module falls back
to the wrapper.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import re2

try:
    from re2 import _re2 as _native

    _UNANCHORED = _native.RE2.Anchor.UNANCHORED
    _ANCHOR_START = _native.RE2.Anchor.ANCHOR_START
    _BYTES_TO_CHARS = _native.BytesToCharLen
except (ImportError, AttributeError):  # pragma: no cover - another build of re2
    _UNANCHORED = _ANCHOR_START = _BYTES_TO_CHARS = None


def options() -> re2.Options:
    """The options every program of the scanner is compiled with."""
    # Large dictionaries (thousands of names) need more than RE2's default 8 MiB to keep the
    # fast DFA; without it RE2 falls back to a slower (still linear) engine and logs about it.
    opts = re2.Options()
    opts.max_mem = 256 << 20
    opts.log_errors = False
    return opts


def spans(rx: Any, text: str) -> Iterator[tuple[int, int]]:
    """The (start, end) of every match of the compiled RE2 ``rx`` in ``text``, in characters."""
    native = getattr(rx, "_regexp", None)
    if native is None or _UNANCHORED is None:
        for m in rx.finditer(text):
            yield m.start(), m.end()
        return
    data = text.encode("utf-8", "surrogatepass")
    ascii_only = len(data) == len(text)
    n = len(data)
    pos = last_byte = last_char = 0
    while pos <= n:
        start, end = native.Match(_UNANCHORED, data, pos, n)[0]
        if start < 0:
            return
        pos = end if end > start else end + 1
        while not ascii_only and pos < n and (data[pos] & 0xC0) == 0x80:
            pos += 1
        if not ascii_only:
            last_char += _BYTES_TO_CHARS(data, last_byte, start)
            last_byte = start
            start, end = last_char, last_char + _BYTES_TO_CHARS(data, start, end)
        yield start, end



def matches(rx: Any, kinds: Mapping[int, str], groups: Sequence[int], s: str,
                    data: bytes) -> Iterator[tuple[str, int, int]]:
    """(type, start, end) of each match of ``rx`` in ``s`` (``data`` its UTF-8), the type that
    of the first of ``groups`` that took part.

    The engine's own call, not the wrapper's ``finditer``: the wrapper converts every group's
    span of every match in Python, which cost more than the scan itself."""
    native = getattr(rx, "_regexp", None)
    if native is None or _UNANCHORED is None:  # another re2 wrapper: the public API
        for m in rx.finditer(s):
            group = next((g for g in groups if m.start(g) >= 0), 0)
            yield kinds.get(group, ""), m.start(group), m.end(group)
        return
    ascii_only = len(data) == len(s)
    n = len(data)
    pos = last_byte = last_char = 0
    while pos <= n:
        spans = native.Match(_UNANCHORED, data, pos, n)
        whole = spans[0]
        if whole[0] < 0:
            return
        group = first_group(spans, groups)
        start, end = spans[group]
        if not ascii_only:
            last_char += _BYTES_TO_CHARS(data, last_byte, start)
            last_byte = start
            start, end = last_char, last_char + _BYTES_TO_CHARS(data, start, end)
        yield kinds.get(group, ""), start, end
        pos = whole[1] if whole[1] > whole[0] else whole[1] + 1
        while not ascii_only and pos < n and (data[pos] & 0xC0) == 0x80:
            pos += 1


def search(rx: Any, text: str, pos: int, named: Sequence[int] = (1,)) -> tuple[int, int, int, int] | None:
    """The first match of ``rx`` in ``text`` at or after ``pos``: (group, group start, group end,
    match start), the group being the first of ``named`` that took part."""
    native = getattr(rx, "_regexp", None)
    if native is None or _UNANCHORED is None or not text.isascii():
        m = rx.search(text, pos)
        if m is None:
            return None
        group = m.lastindex or 0
        return group, m.start(group), m.end(group), m.start()
    spans = native.Match(_UNANCHORED, text.encode("ascii"), pos, len(text))
    if spans[0][0] < 0:
        return None
    group = next((g for g in named if spans[g][0] >= 0), 0)
    return group, spans[group][0], spans[group][1], spans[0][0]


def place(rx: Any, text: str, pos: int) -> int | None:
    """Where the first match of ``rx`` at or after ``pos`` starts (context included)."""
    native = getattr(rx, "_regexp", None)
    if native is None or _UNANCHORED is None or not text.isascii():
        m = rx.search(text, pos)
        return None if m is None else int(m.start())
    start = native.Match(_UNANCHORED, text.encode("ascii"), pos, len(text))[0][0]
    return None if start < 0 else int(start)


def first_group(spans: Sequence[tuple[int, int]], groups: Sequence[int]) -> int:
    """The first of ``groups`` that took part in a match (most often the one spanning it whole:
    found by ``index``, in C, rather than by a loop over every group)."""
    try:
        group = spans.index(spans[0], 1)
    except ValueError:
        group = 0
    if group in groups:
        return group
    return next((g for g in groups if spans[g][0] >= 0), 0)


def match_at(rx: Any, text: str, pos: int) -> tuple[int, int] | None:
    """The span of group 1 of ``rx`` matched at exactly ``pos`` (the text before it as context)."""
    native = getattr(rx, "_regexp", None)
    if native is None or _ANCHOR_START is None or not text.isascii():
        m = rx.match(text, pos)
        return None if m is None else m.span(1)
    spans = native.Match(_ANCHOR_START, text.encode("ascii"), pos, len(text))
    return None if spans[0][0] < 0 or spans[1][0] < 0 else spans[1]
