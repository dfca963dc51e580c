"""Reading a body once, and writing back only what changed (form fields, multipart parts)."""

from __future__ import annotations

import base64

from authz.request.body import encode_form, encode_multipart, read_form, read_multipart, read_plain

B = b"XyZ"


def test_multipart_parts_are_read_with_their_transfer_encoding_and_spans():
    secret = base64.b64encode(b"key AKIA").decode()
    raw = (b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nplain text\r\n"
           b"--XyZ\r\n\r\nno headers\r\n"
           b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"k.txt\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + secret.encode() + b"\r\n--XyZ--\r\n")
    parts = read_multipart(raw, B)
    assert parts is not None
    assert [(p.name, p.filename, p.text) for p in parts] == [
        ("a", None, "plain text"), ("", None, "no headers"), ("f", "k.txt", "key AKIA")]
    assert [raw[p.start:p.end] for p in parts][:2] == [b"plain text", b"no headers"]


def test_multipart_rewrite_changes_only_the_changed_parts():
    raw = (b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nmail a@b.c\r\n"
           b"--XyZ\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\n\xff untouched \xe2\x9c\x93\r\n--XyZ--\r\n")
    parts = read_multipart(raw, B)
    assert parts is not None
    new = encode_multipart(raw, parts, ["mail ***@b.c", parts[1].text])
    assert new == raw.replace(b"a@b.c", b"***@b.c")


def test_a_body_that_does_not_follow_the_multipart_grammar_is_read_as_text():
    body = read_plain(b"--XyZ\r\nno blank line ends these headers", "multipart/form-data",
                      "multipart/form-data; boundary=XyZ")
    assert body.kind == "text"


def test_form_rewrite_keeps_every_unchanged_segment_as_sent():
    raw = b"a=x%40y.z&keep=%E2%9C%93+as+is&&flag&n=7"
    fields = read_form(raw)
    assert [(f.name, f.value) for f in fields] == [("a", "x@y.z"), ("keep", "✓ as is"), ("flag", ""), ("n", "7")]
    pairs = [(f.name, f.value) for f in fields]
    pairs[0] = ("a", "***@y.z")
    assert encode_form(raw, fields, pairs) == b"a=%2A%2A%2A%40y.z&keep=%E2%9C%93+as+is&&flag&n=7"


def test_json_is_read_as_json_whatever_the_label():
    assert read_plain(b'{"a":"\\u0040"}', "text/plain", "text/plain").document == {"a": "@"}
    assert read_plain(b"[" * 100 + b"]" * 100, "", "").kind == "unreadable"
