import json

import pytest

from authz.jsontext import dumps_utf8, has_unpaired_surrogate, not_unicode, replace_surrogates


@pytest.mark.parametrize(("text", "expected"), [
    ('{"a": "plain"}', False),
    ('{"a": "\\ud83d\\ude00"}', False),          # a pair: one code point (an emoji)
    ('{"a": "\\\\ud800"}', False),               # an escaped backslash, then text
    ('{"a": "\\ud800"}', True),                  # lone high
    ('{"a": "x\\uDC00"}', True),                 # lone low, upper-case hex
    ('{"\\ud800": 1}', True),                    # in a key
    ('[1, ["\\ude00"]]', True),                  # nested in arrays
    ('{"a": "\\ud83d\\ud83d"}', True),           # two highs are not a pair
])
def test_unpaired_surrogates_are_found_wherever_they_are(text, expected):
    assert has_unpaired_surrogate(text, json.loads(text)) is expected


def test_not_unicode_and_replace():
    value = {"k\udc00": ["ok", ("\ud800",)], "n": 1}
    assert not_unicode(value)
    fixed = replace_surrogates(value)
    assert fixed == {"k\ufffd": ["ok", ["\ufffd"]], "n": 1} and not not_unicode(fixed)


def test_dumps_utf8_keeps_text_and_escapes_only_when_it_must():
    assert dumps_utf8({"a": "é😀"}) == '{"a":"é😀"}'.encode()
    out = dumps_utf8({"a": "é\ud800"})
    assert out == b'{"a":"\\u00e9\\ud800"}' and json.loads(out) == {"a": "é\ud800"}
