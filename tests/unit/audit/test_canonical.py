import pytest

from authz.audit.canonical import canonical


def test_rfc8785_examples():
    # RFC 8785 section 3.2.2 / appendix B style values
    assert canonical({"b": 2, "a": 1, "c": {"z": [1, 2.5, True, None], "y": "é"}}) == \
        '{"a":1,"b":2,"c":{"y":"é","z":[1,2.5,true,null]}}'.encode()
    assert canonical(1e21) == b"1e+21"
    assert canonical(1e-7) == b"1e-7"
    assert canonical(333333333.33333329) == b"333333333.3333333"
    assert canonical(-0.0) == b"0"
    assert canonical(4.50) == b"4.5"
    assert canonical(1e30) == b"1e+30"
    assert canonical("\u2028\n\"") == b'"\xe2\x80\xa8\\n\\""'


def test_keys_sort_by_utf16_code_units():
    # U+10000 (surrogates D800 DC00) sorts before U+FB33 in UTF-16, unlike in UTF-8/code points.
    assert canonical({"\ufb33": 1, "\U00010000": 2}) == '{"\U00010000":2,"\ufb33":1}'.encode()


def test_non_json_is_refused():
    with pytest.raises(ValueError):
        canonical(float("nan"))
    with pytest.raises(TypeError):
        canonical({1: "x"})
