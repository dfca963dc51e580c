"""authz.jsonfast reads every document exactly as json.loads does (value and type), faster."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz import jsonfast

AWKWARD = [
    b'{"a": 1, "a": 2}',                      # duplicate keys: the last wins in both
    b"123456789012345678901234",               # past 64 bits: orjson would make it a float
    b'{"n": 18446744073709551616}',
    b"-9223372036854775809",
    b"[1.0000000000000001, -0, -0.0, 1e-400]",
    b"NaN", b"[Infinity, -Infinity]", b"1e400",  # the standard library takes these; orjson does not
    b'"\\ud800"', b'"\\ud83d\\ude00"',           # a lone surrogate escape, and a pair
    '{"é": "ü"}'.encode("utf-16"),             # json.loads detects UTF-16 bytes
    b"[" * 2000 + b"]" * 2000,                  # deeper than orjson's limit
    b'{"s": "tab\\there"}', b"  [] ", '["text"]',
]


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)  # type: ignore[index]
    return a == b or repr(a) == repr(b)


@pytest.mark.parametrize("doc", AWKWARD)
def test_awkward_documents_read_as_the_standard_library_reads_them(doc: bytes | str) -> None:
    try:
        expected = json.loads(doc)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            jsonfast.loads(doc)
        return
    assert _same(jsonfast.loads(doc), expected)


@pytest.mark.parametrize("doc", [b"", b"{", b'{"a": }', b"\xff\xfe\x00", b"[1,]", b"01"])
def test_what_is_not_json_raises_value_error(doc: bytes) -> None:
    with pytest.raises(ValueError):
        jsonfast.loads(doc)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


@given(JSON)
def test_any_document_reads_the_same(value: object) -> None:
    for doc in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False)):
        assert _same(jsonfast.loads(doc), json.loads(doc))
