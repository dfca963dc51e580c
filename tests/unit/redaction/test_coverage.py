"""Everything a rule covers is scanned: JSON keys and numbers, values split across adjacent strings,
content parts and messages, the query string and configured headers; the evasion cases of issue 15
at the detector level."""

# ruff: noqa: RUF001, RUF003  (look-alike letters and Unicode dashes are the point)

from __future__ import annotations

import base64
import json

import pytest

from authz.config import parse_config
from authz.errors import ConfigError, Forbidden
from authz.model import Context, Principal, Request
from authz.redaction.detectors import PATTERNS, Scanner
from authz.redaction.redactor import Redactor
from authz.redaction.stage import RedactionStage
from authz.store import MemoryStore

CONFIG = """redaction:
  enabled: true
  headers: [x-customer-note]
  dictionaries: [{name: customer, terms: [Acme Corp, Globex, Umbrella Health]}]
  rules:
    - id: all
      match: {paths: ["/*"]}
      actions: {customer: placeholder, default: mask}
"""
OSCAR = Principal(subject="oscar", roles=frozenset({"accounting"}))
SCANNER = Scanner(PATTERNS, {"customer": ["Acme Corp", "Globex", "Umbrella Health"]})


def stage() -> RedactionStage:
    return RedactionStage(parse_config(CONFIG, env={}).redaction, MemoryStore())


def ctx_for(body: object, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None) -> Context:
    raw = json.dumps(body).encode() if body is not None else b""
    return Context(request=Request(id="r", method="POST", scheme="http", host="h", path=path,
                                   headers={"content-type": "application/json", **(headers or {})}, body=raw),
                   principal=OSCAR)


async def forwarded(ctx: Context) -> dict:
    await stage().on_request(ctx)
    assert ctx.outgoing is not None
    return json.loads(ctx.outgoing.encode())


async def test_a_card_as_a_json_number_and_as_an_object_key_is_masked():
    body = {"model": "m", "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "pay", "input": {"card": 4539148803436467, "n": 3}}]},
        {"role": "user", "content": "ok"}], "metadata": {"5425233430109903": "x"}}
    out = await forwarded(ctx_for(body))
    text = json.dumps(out)
    assert "4539148803436467" not in text and "5425233430109903" not in text
    assert out["messages"][0]["content"][0]["input"] == {"card": "************6467", "n": 3}
    assert out["metadata"] == {"************9903": "x"}


async def test_values_split_across_content_parts_and_messages_are_masked_each_in_its_own_string():
    body = {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "card 4539 1488 "}, {"type": "text", "text": "0343 6467 ok"}]},
        {"role": "user", "content": "we met Umbrella"}, {"role": "user", "content": "Health today"}]}
    out = await forwarded(ctx_for(body))
    parts = out["messages"][0]["content"]
    assert "4539" not in json.dumps(out) and "0343" not in json.dumps(out)
    assert parts[0]["text"].startswith("card ") and parts[1]["text"].endswith(" ok")
    assert out["messages"][1]["content"] == "we met [CUSTOMER_1]" and out["messages"][2]["content"] == " today"


async def test_a_finding_in_a_query_value_is_masked_in_place_and_every_other_byte_kept():
    query = "a=1&note=mail+oscar%40acme.com+today&b=%7Ex+y&card=4539%201488%200343%206467;z"
    ctx = ctx_for({"model": "m", "messages": []}, path=f"/v1/chat/completions?{query}")
    await stage().on_request(ctx)
    assert ctx.mutations.set_headers[":path"] == (
        "/v1/chat/completions?a=1&note=mail+***%40acme.com+today&b=%7Ex+y"
        "&card=%2A%2A%2A%2A%20%2A%2A%2A%2A%20%2A%2A%2A%2A%206467;z".replace("%2A", "*"))
    assert ctx.facts["redaction"]["found"] == {"card": 1, "email": 1}


async def test_a_query_value_with_escaped_multibyte_characters_maps_back_exactly():
    # "é" as %C3%A9 before the value, a lone invalid byte after it: both kept as sent
    ctx = ctx_for({"model": "m", "messages": []}, path="/v1/chat/completions?q=caf%C3%A9%20oscar%40acme.com%FF")
    await stage().on_request(ctx)
    assert ctx.mutations.set_headers[":path"] == "/v1/chat/completions?q=caf%C3%A9%20***%40acme.com%FF"


async def test_a_parameter_without_a_name_is_all_value():
    ctx = ctx_for({"model": "m", "messages": []}, path="/v1/chat/completions?oscar%40acme.com&x")
    await stage().on_request(ctx)
    assert ctx.mutations.set_headers[":path"] == "/v1/chat/completions?***%40acme.com&x"


async def test_a_query_without_findings_is_left_alone():
    ctx = ctx_for({"model": "m", "messages": []}, path="/v1/chat/completions?q=hello+world&n=3")
    await stage().on_request(ctx)
    assert ":path" not in ctx.mutations.set_headers


async def test_a_finding_in_a_query_parameter_name_is_refused_naming_the_type():
    ctx = ctx_for({"model": "m", "messages": []}, path="/v1/chat/completions?oscar%40acme.com=1")
    with pytest.raises(Forbidden) as info:
        await stage().on_request(ctx)
    assert info.value.reason == "redaction.query" and info.value.details["entity_types"] == ["email"]
    assert "oscar" not in info.value.message


async def test_a_query_without_body_is_masked_too():
    ctx = Context(request=Request(id="r", method="GET", scheme="http", host="h",
                                  path="/files?card=4539+1488+0343+6467", headers={}), principal=OSCAR)
    await stage().on_request(ctx)
    assert ctx.mutations.set_headers[":path"] == "/files?card=****%20****%20****%206467"


async def test_a_blocked_type_in_the_query_is_refused_as_blocked():
    cfg = parse_config(CONFIG.replace("default: mask", "default: mask, email: block"), env={}).redaction
    ctx = ctx_for({"model": "m", "messages": []}, path="/v1/chat/completions?to=oscar%40acme.com")
    with pytest.raises(Forbidden) as info:
        await RedactionStage(cfg, MemoryStore()).on_request(ctx)
    assert info.value.reason == "redaction.blocked"


async def test_configured_headers_are_rewritten():
    ctx = ctx_for({"model": "m", "messages": []}, headers={"x-customer-note": "call Acme Corp at 212 555 0147"})
    await stage().on_request(ctx)
    assert ctx.mutations.set_headers["x-customer-note"] == "call [CUSTOMER_1] at *** *** 0147"
    assert ctx.mutations.set_headers["x-authz-sensitivity"] == "pii"


def test_authorization_cannot_be_listed_as_a_redacted_header():
    with pytest.raises(ConfigError, match="authorization"):
        parse_config("redaction:\n  headers: [authorization]\n", env={})


@pytest.mark.parametrize("text, kind, value", [
    ("card 4539 1488 0343 6467 12/27", "card", "4539 1488 0343 6467"),
    ("IBAN ES91 2100 0418 4502 0005 1332 EUR", "iban", "ES91 2100 0418 4502 0005 1332"),
    ("from ::ffff:192.0.2.1 today", "ipv6", "::ffff:192.0.2.1"),
    ("v6 2001:db8::8a2e:370:7334", "ipv6", "2001:db8::8a2e:370:7334"),
    ("card 4539.1488.0343.6467", "card", "4539.1488.0343.6467"),
    ("card 4539/1488/0343/6467", "card", "4539/1488/0343/6467"),
    ("card 4539–1488–0343–6467", "card", "4539–1488–0343–6467"),
    ("card 4539\n1488\n0343\n6467", "card", "4539\n1488\n0343\n6467"),
    ("card 4539\u00a01488\u00a00343\u00a06467", "card", "4539\u00a01488\u00a00343\u00a06467"),
    ("card ٤٥٣٩١٤٨٨٠٣٤٣٦٤٦٧", "card", "٤٥٣٩١٤٨٨٠٣٤٣٦٤٦٧"),
    ("card ४५३९१४८८०३४३६४६७", "card", "४५३९१४८८०३४३६४६७"),
    ("card 4539\u200e1488\u20600343\u00ad6467", "card", "4539\u200e1488\u20600343\u00ad6467"),
    ("ssn 536.22.1234", "ssn", "536.22.1234"),
    ("ssn 536/22/1234", "ssn", "536/22/1234"),
    ("ssn 536—22—1234", "ssn", "536—22—1234"),
    ("my SSN is 536221234", "ssn", "536221234"),
    ('password="correct horse battery"', "password", '"correct horse battery"'),
    ("my password is Tr0ub4dor&3", "password", "Tr0ub4dor&3"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "cloud_key",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("AccountKey=" + "A" * 20 + "b3" * 33 + "==", "cloud_key", "A" * 20 + "b3" * 33 + "=="),
    ("key AIzaSyA1234567890abcdefghijklmnopqrstuv", "cloud_key", "AIzaSyA1234567890abcdefghijklmnopqrstuv"),
    ("Authorization: Bearer aB3dE5fG7hI9jK1lM3nO5pQ7r", "token", "aB3dE5fG7hI9jK1lM3nO5pQ7r"),
    ("api_key = 'Zx81Qw72Er63Ty54Ui45Op36'", "token", "'Zx81Qw72Er63Ty54Ui45Op36'"),
    ("DB_PASSWORD=s3cr3tP4ss", "password", "s3cr3tP4ss"),
    ('"client_secret": "Qm9vb0Zhb2Jhcj1iYXo9cXV4"', "token", '"Qm9vb0Zhb2Jhcj1iYXo9cXV4"'),
    ("session_token: aB3dE5fG7hI9jK1lM3nO5pQ7r", "token", "aB3dE5fG7hI9jK1lM3nO5pQ7r"),
    ("tok eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2lnbmF0dXJlX2hlcmU", "jwt",
     "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2lnbmF0dXJlX2hlcmU"),
    ("call 212 555 0147", "phone", "212 555 0147"),
    ("call +44 20 7946 0958", "phone", "+44 20 7946 0958"),
    ("ring 020 7946 0958", "phone", "020 7946 0958"),
    ("mobile 07700 900123", "phone", "07700 900123"),
    ("Tel. 030 12345678", "phone", "030 12345678"),
    ("Tel. (089) 1234 5678", "phone", "(089) 1234 5678"),
    ("tél 01 23 45 67 89", "phone", "01 23 45 67 89"),
    ("call +49 (0)30 12345678", "phone", "+49 (0)30 12345678"),
    ("iban es91 2100 0418 4502 0005 1332", "iban", "es91 2100 0418 4502 0005 1332"),
    ("iban DE89-3704-0044-0532-0130-00", "iban", "DE89-3704-0044-0532-0130-00"),
    ("see Umbrella\nHealth", "customer", "Umbrella\nHealth"),
    ("see Umbrella\tHealth", "customer", "Umbrella\tHealth"),
    ("see Umbrella  Health", "customer", "Umbrella  Health"),
    ("see Umbrella-Health", "customer", "Umbrella-Health"),
    ("see UmbrellaHealth", "customer", "UmbrellaHealth"),
    ("see Асме Corp", "customer", "Асме Corp"),   # Cyrillic А, С, М, Е
    ("see \u13aacme Corp", "customer", "\u13aacme Corp"),  # Cherokee A, from Unicode's confusables data
    ("see Acme Corporation's deal", "customer", "Acme Corporation"),
    ("see Globex Inc. today", "customer", "Globex Inc."),
    ("mail oscar&#64;acme.com", "email", "oscar&#64;acme.com"),  # behind an HTML entity
    ("key &#65;KIAIOSFODNN7EXAMPLE", "aws_key", "&#65;KIAIOSFODNN7EXAMPLE"),
    ("key %41KIAIOSFODNN7EXAMPLE", "aws_key", "%41KIAIOSFODNN7EXAMPLE"),
    ("blob " + base64.b64encode(b"aws key AKIAIOSFODNN7EXAMPLE").decode(), "aws_key",
     base64.b64encode(b"aws key AKIAIOSFODNN7EXAMPLE").decode()),
])
def test_evasion_cases(text, kind, value):
    found = [(f.type, f.value) for f in SCANNER.scan(text)]
    if kind is None:
        assert found == [] or all(t != "email" for t, _ in found)
    else:
        assert (kind, value) in found, found


@pytest.mark.parametrize("text", [
    "the password is required", "order 2024-11-22 shipped", "time 12:30:45", "MAC 00:1A:2B:3C:4D:5E",
    "Ticket 123456789 is closed", "call me at 5", "version 10.4.2", "c++ std::vector",
    "the key ingredient is flour and water and salt", "Acme alone", "4 8 15 16 23 42 108 4 8 15 16 23 42",
    "the key src/components/HeaderNavigation.tsx renders it", "token usage was 1234567 in BatchJobRunner2024",
    "The secret: patience.", "sort key: createdAt", "primary key: user_id",
    "Order #2594590454000728 shipped", "tracking number 4539148803436467 arrives",
])
def test_near_misses(text):
    assert SCANNER.scan(text) == []


def test_placeholders_are_the_same_for_spellings_of_one_value():
    red = Redactor(SCANNER, lambda t: "placeholder")
    assert red.text("Umbrella Health, UMBRELLA\nHEALTH, Globex") == "[CUSTOMER_1], [CUSTOMER_2], [CUSTOMER_3]" or \
        red.text("Umbrella Health and Umbrella  Health") == "[CUSTOMER_1] and [CUSTOMER_1]"
    red = Redactor(SCANNER, lambda t: "placeholder")
    assert red.text("Umbrella Health and Umbrella  Health") == "[CUSTOMER_1] and [CUSTOMER_1]"


def test_retries_are_bounded_and_a_text_beyond_the_bound_is_refused(monkeypatch):
    import time

    from authz.redaction import detectors

    started = time.perf_counter()
    assert SCANNER.scan("999.1.1.1 " * 5000) == []  # failed candidates, retried within bounds
    assert time.perf_counter() - started < 5
    monkeypatch.setattr(detectors, "RETRY_PLACES", 10)
    monkeypatch.setattr(detectors, "RETRY_CHARS_PER_PLACE", 10**9)
    with pytest.raises(detectors.ScanTooComplex):
        SCANNER.scan("999.1.1.1 " * 50)


async def test_a_body_beyond_the_retry_bound_is_refused_not_forwarded(monkeypatch):
    from authz.errors import BadRequest
    from authz.redaction import detectors

    monkeypatch.setattr(detectors, "RETRY_PLACES", 10)
    monkeypatch.setattr(detectors, "RETRY_CHARS_PER_PLACE", 10**9)
    ctx = ctx_for({"model": "m", "messages": [{"role": "user", "content": "999.1.1.1 " * 50}]})
    with pytest.raises(BadRequest) as info:
        await stage().on_request(ctx)
    assert info.value.reason == "redaction.too_complex"


def test_values_split_mid_word_across_pieces_are_found():
    red = Redactor(SCANNER, lambda t: "mask")
    out = red.texts(["key AKIAIOSF", "ODNN7EXAMPLE ok", "mail oscar@", "acme.com today", "no 4539", "1488 0343 6467"],
                    joined=True)
    assert "AKIA" not in "".join(out) and "ODNN7" not in "".join(out)
    assert out[2] == "mail ***@acme.com" and out[3] == " today"
    assert "4539" not in "".join(out) and out[4] == "no ******** **** 6467" and out[5] == ""
    assert red.found == {"aws_key": 1, "email": 1, "card": 1}
    # pieces that merely touch are left alone
    red = Redactor(SCANNER, lambda t: "mask")
    assert red.texts(["user", "Hello there", "gpt-4o"], joined=True) == ["user", "Hello there", "gpt-4o"]


def test_dictionary_variants_and_decoding_layers_are_configurable():
    text = """redaction:
  enabled: true
  decoding: {types: []}
  dictionaries: [{name: customer, terms: [Globex, Acme Corp], variants: [[corp, corporation]]}]
  rules: [{id: all, match: {paths: ["/*"]}, actions: {default: placeholder}}]
"""
    s = RedactionStage(parse_config(text, env={}).redaction, MemoryStore())
    found = [(f.type, f.value) for f in s.scanner.scan("Globex Inc. and ACME CORPORATION, key &#65;KIAIOSFODNN7EXAMPLE")]
    assert found == [("customer", "Globex"), ("customer", "ACME CORPORATION")]  # Inc. is no listed form; no decoding
    with pytest.raises(ConfigError, match=r"decoding\.types"):
        parse_config("redaction:\n  decoding: {types: [nope]}\n", env={})
