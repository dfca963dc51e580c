import pytest

from authz.audit.canonical import canonical, canonical_std


def test_sorted_keys_no_whitespace_utf8():
    assert canonical({"b": 2, "a": 1, "c": {"z": [1, True, None], "y": "é"}}) == \
        '{"a":1,"b":2,"c":{"y":"é","z":[1,true,null]}}'.encode()


def test_escapes_are_minimal_as_in_rfc8785():
    assert canonical("\u2028\n\"\\\x01") == b'"\xe2\x80\xa8\\n\\"\\\\\\u0001"'


def test_a_non_finite_float_is_written_as_null_not_raised():
    # Records hold no floats; were one ever NaN, the record is still written (and hashes the same
    # when verified, since the line holds null).
    assert canonical({"x": float("nan"), "y": float("inf")}) == b'{"x":null,"y":null}'


def test_a_lone_surrogate_is_written_as_the_replacement_character_not_raised():
    # JSON lets "\ud800" through a decoder; UTF-8 cannot hold it. One such value must not stop
    # the writer: it becomes U+FFFD, the rest of the record unchanged.
    assert canonical({"tool": "\ud800x", "ok": "é"}) == '{"ok":"é","tool":"\ufffdx"}'.encode()
    assert canonical({"\udfff": ["\ud83d"]}) == '{"\ufffd":["\ufffd"]}'.encode()


EVERY_ESCAPE = "".join(chr(i) for i in range(0x20)) + "\x7f\u2028\u2029\"\\/é😀\ufeff\U0010ffff"


@pytest.mark.parametrize("value", [
    EVERY_ESCAPE,
    {"b": 1, "a": {"d": [1, "x", None, True, False], "c": None}, "A": [], "_": {}, "é": "é"},
    {"seq": 2**63 - 1, "neg": -2**63, "u64": 2**64 - 1, "zero": 0, "minus": -1},
    {"type": "decision", "action": {"kind": "tools/call", "name": "whoami", "protocol": "mcp"},
     "facts": {"limits": {"per-user": {"remaining": 9}}, "usage": {"total_tokens": 12}}, "text": EVERY_ESCAPE},
])
def test_the_fast_encoder_writes_exactly_the_standard_librarys_bytes(value):
    assert canonical(value) == canonical_std(value)


def test_what_the_fast_encoder_refuses_goes_through_the_standard_library():
    assert canonical({"tokens": 2**70}) == b'{"tokens":1180591620717411303424}'
    assert canonical(["\ud800"]) == '["\ufffd"]'.encode()
