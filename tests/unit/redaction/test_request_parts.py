"""The query string is read as ``unquote_plus`` reads it, and each decoded character knows the raw
bytes it came from, so a mask lands on exactly the bytes of its finding."""

from __future__ import annotations

from urllib.parse import unquote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.redaction.request_parts import _decode

RAW = st.lists(st.one_of(st.sampled_from(["%41", "%C3%A9", "%E2%82%AC", "%F0%9F%98%80", "%FF", "%C3", "%", "%zz",
                                          "%2B", "+", "=", "&", "@", "a", "Z", "0", " ", "é"]),
                         st.from_regex(r"%[0-9A-Fa-f]{2}", fullmatch=True)), max_size=20).map("".join)


@settings(max_examples=300)
@given(RAW)
def test_decoding_matches_unquote_plus_and_maps_every_character_to_its_raw_bytes(raw):
    text, offsets = _decode(raw)
    assert text == unquote_plus(raw, encoding="utf-8", errors="surrogateescape")
    assert len(offsets) == len(text) + 1 and offsets[-1] == len(raw)
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    for i, ch in enumerate(text):
        piece = raw[offsets[i]:offsets[i + 1]]
        assert unquote_plus(piece, encoding="utf-8", errors="surrogateescape") == ch, (raw, i, piece)
