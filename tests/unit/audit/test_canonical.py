import pytest

from authz.audit.canonical import canonical


def test_sorted_keys_no_whitespace_utf8():
    assert canonical({"b": 2, "a": 1, "c": {"z": [1, True, None], "y": "é"}}) == \
        '{"a":1,"b":2,"c":{"y":"é","z":[1,true,null]}}'.encode()


def test_escapes_are_minimal_as_in_rfc8785():
    assert canonical("\u2028\n\"\\\x01") == b'"\xe2\x80\xa8\\n\\"\\\\\\u0001"'


def test_nan_is_refused():
    with pytest.raises(ValueError):
        canonical(float("nan"))


def test_a_lone_surrogate_is_written_as_the_replacement_character_not_raised():
    # JSON lets "\ud800" through a decoder; UTF-8 cannot hold it. One such value must not stop
    # the writer: it becomes U+FFFD, the rest of the record unchanged.
    assert canonical({"tool": "\ud800x", "ok": "é"}) == '{"ok":"é","tool":"\ufffdx"}'.encode()
    assert canonical({"\udfff": ["\ud83d"]}) == '{"\ufffd":["\ufffd"]}'.encode()
