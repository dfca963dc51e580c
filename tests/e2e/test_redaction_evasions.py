"""Issue 15 through real Envoy: every evasion that put a raw value in front of the model, as a
table. Each row is a chat prompt; the upstream (the demo LLM, which echoes what it received)
must never see the listed fragments of the value, and nothing else in the prompt may change."""

# ruff: noqa: RUF001  (look-alike letters, Unicode dashes and digits are the point)

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from authz.dev.stack import REFERENCE_CONFIG
from tests.e2e.conftest import Running, running_stack

NOTE_HEADER = "x-customer-note"


def variant(tmp: Path) -> Path:
    """The reference config, with SSNs masked instead of held for approval (so the rows can look
    at what the model receives) and one request header scanned."""
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    for rule in cfg["redaction"]["rules"]:
        rule.pop("approval", None)
    cfg["redaction"]["headers"] = [NOTE_HEADER]
    cfg["limits"]["rate_limits"] = []  # sixty prompts in a few seconds are this test, not abuse
    path = tmp / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Running]:
    with running_stack(variant(tmp_path_factory.mktemp("evasions"))) as running:
        yield running


def _digits(text: str, base: int) -> str:
    return "".join(chr(base + int(c)) if c.isdigit() else c for c in text)


B64_EMAIL = base64.b64encode(b"contact: oscar@acme.com").decode()

# id -> (prompt, fragments the model must never see)
CASES: dict[str, tuple[str, list[str]]] = {
    # a neighbour swallows the value
    "card-then-expiry": ("card 4539 1488 0343 6467 12/27", ["4539", "1488", "0343"]),
    "iban-then-currency": ("IBAN ES91 2100 0418 4502 0005 1332 EUR", ["ES91", "2100", "0418", "4502"]),
    "ipv4-mapped-ipv6": ("from ::ffff:192.0.2.1 today", ["192.0.2.1", "ffff"]),
    "ipv6-compressed": ("host 2001:db8::8a2e:370:7334", ["8a2e", "7334", "db8"]),
    # separators
    "card-dots": ("card 4539.1488.0343.6467", ["4539", "1488"]),
    "card-slashes": ("card 4539/1488/0343/6467", ["4539", "1488"]),
    "card-en-dash": ("card 4539–1488–0343–6467", ["4539", "1488"]),
    "card-em-dash": ("card 4539—1488—0343—6467", ["4539", "1488"]),
    "card-line-per-group": ("card\n4539\n1488\n0343\n6467\nthanks", ["4539", "1488"]),
    "card-nbsp": ("card 4539\u00a01488\u00a00343\u00a06467", ["4539", "1488"]),
    "card-arabic-indic": ("card " + _digits("4539148803436467", 0x660), [_digits("4539", 0x660)]),
    "card-devanagari": ("card " + _digits("4539 1488 0343 6467", 0x966), [_digits("4539", 0x966)]),
    "card-fullwidth": ("card " + _digits("4539 1488 0343 6467", 0xFF10), [_digits("4539", 0xFF10)]),
    "card-format-chars": ("card 4539\u200e1488\u20600343\u00ad6467", ["4539", "1488"]),
    "card-zwj": ("card 4539\u200d1488\u200d0343\u200d6467", ["4539", "1488"]),
    "ssn-dots": ("ssn 536.22.1234", ["536", "22.1"]),
    "ssn-slashes": ("ssn 536/22/1234", ["536"]),
    "ssn-en-dash": ("ssn 536–22–1234", ["536"]),
    "ssn-line-breaks": ("ssn 536\n22\n1234", ["536"]),
    "ssn-no-separators": ("my SSN is 536221234", ["53622"]),
    # encodings
    "email-html-entity": ("mail oscar&#64;acme.com", ["oscar"]),
    "email-html-named": ("mail oscar&commat;acme.com", ["oscar"]),
    "email-percent": ("mail oscar%40acme.com", ["oscar"]),
    "email-base64": (f"blob {B64_EMAIL}", [B64_EMAIL]),
    "aws-key-html-entities": ("key &#65;&#75;IAIOSFODNN7EXAMPLE", ["IOSFODNN7"]),
    # dictionaries
    "customer-line-break": ("forecast for Umbrella\nHealth in Q3", ["Umbrella", "Health"]),
    "customer-tab": ("forecast for Umbrella\tHealth", ["Umbrella", "Health"]),
    "customer-two-spaces": ("forecast for Umbrella  Health", ["Umbrella", "Health"]),
    "customer-hyphen": ("forecast for Umbrella-Health", ["Umbrella", "Health"]),
    "customer-no-space": ("forecast for UmbrellaHealth", ["Umbrella", "Health"]),
    "customer-confusables": ("deal with Асме Corp", ["Асме", "Corp"]),
    "customer-legal-form": ("deal with Acme Corporation", ["Acme", "Corporation"]),
    "customer-possessive": ("Globex's renewal", ["Globex"]),
    "customer-upper": ("GLOBEX INC. renewal", ["GLOBEX"]),
    # coverage
    "password-quoted": ('password="correct horse battery"', ["correct", "horse", "battery"]),
    "password-is": ("my password is Tr0ub4dor&3 btw", ["Tr0ub4dor"]),
    "password-colon": ("pwd: hunter2hunter2", ["hunter2"]),
    "aws-secret-assignment": ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ["wJalrXUtnFEMI"]),
    "azure-account-key": ("AccountKey=" + "Zm9v" * 21 + "YmE==;EndpointSuffix=core", ["Zm9vZm9v"]),
    "gcp-api-key": ("key AIzaSyA1234567890abcdefghijklmnopqrstuv", ["AIzaSyA123"]),
    "jwt-non-json-payload": ("token eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24gYXQgYWxs.c2lnbmF0dXJlX2hlcmVfMTIz",
                             ["eyJhbGciOiJIUzI1NiJ9", "bm90IGpzb24"]),
    "us-phone-spaces": ("call 212 555 0147", ["212 555", "212"]),
    "uk-phone-national": ("ring 020 7946 0958", ["7946"]),
    "uk-mobile-national": ("mobile 07700 900123", ["07700"]),
    "de-phone-national": ("Tel. 030 12345678", ["030 1234"]),
    "fr-phone-national": ("tél 01 23 45 67 89", ["01 23 45"]),
    "iban-lower-case": ("iban es91 2100 0418 4502 0005 1332", ["es91", "2100"]),
    "iban-dashes": ("iban DE89-3704-0044-0532-0130-00", ["DE89", "3704"]),
}


def chat(stack: Running, body: dict, **headers: str) -> dict:
    token = stack.token("oscar", roles=["accounting"])
    r = stack.http.post("/v1/chat/completions", json=body,
                        headers={**stack.auth(token), "content-type": "application/json", **headers})
    assert r.status_code == 200, r.text
    return r.json()["echo"]


@pytest.mark.parametrize("case", CASES)
def test_the_raw_value_never_reaches_the_model(stack, case):
    prompt, fragments = CASES[case]
    echo = chat(stack, {"model": "gpt-general", "messages": [{"role": "user", "content": prompt}]})
    seen = json.dumps(echo["body"], ensure_ascii=False)
    for fragment in fragments:
        assert fragment not in seen, (case, seen)
    assert echo["headers"]["x-authz-sensitivity"]


# --- where the value sits ---------------------------------------------------------------------------

def test_a_card_as_a_json_number_and_as_a_key_never_reaches_the_model(stack):
    body = {"model": "gpt-general", "messages": [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "pay", "arguments": "{}"}}]},
        {"role": "user", "content": "ok"}],
        "metadata": {"card": 4539148803436467, "5425233430109903": "billing"}}
    seen = json.dumps(chat(stack, body)["body"])
    assert "4539148803436467" not in seen and "5425233430109903" not in seen


def test_a_card_as_a_number_in_a_tool_use_input_never_reaches_the_model(stack):
    token = stack.token("oscar", roles=["accounting"])
    body = {"model": "gpt-general", "max_tokens": 50, "messages": [
        {"role": "user", "content": "pay the invoice"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "pay",
                                           "input": {"card": 4539148803436467, "amount": 120}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "paid"}]}]}
    r = stack.http.post("/v1/messages", json=body, headers={**stack.auth(token), "content-type": "application/json"})
    assert r.status_code == 200, r.text
    forwarded = r.json()["echo"]["body"]
    assert "4539148803436467" not in json.dumps(forwarded)
    assert forwarded["messages"][1]["content"][0]["input"] == {"card": "************6467", "amount": 120}


def test_values_split_across_content_parts_and_messages_never_reach_the_model(stack):
    body = {"model": "gpt-general", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "my card is 4539 1488 "},
                                     {"type": "text", "text": "0343 6467 thanks"}]},
        {"role": "user", "content": "the customer is Umbrella"},
        {"role": "user", "content": "Health, as agreed"}]}
    forwarded = chat(stack, body)["body"]
    seen = json.dumps(forwarded)
    assert "4539" not in seen and "0343" not in seen and "Umbrella" not in seen and "Health" not in seen
    # each part keeps its own text around the value
    assert forwarded["messages"][0]["content"][1]["text"].endswith(" thanks")
    assert forwarded["messages"][2]["content"] == ", as agreed"


def test_values_split_mid_word_never_reach_the_model(stack):
    body = {"model": "gpt-general", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "the key is AKIAIOSF"},
                                     {"type": "text", "text": "ODNN7EXAMPLE, and mail oscar@"}]},
        {"role": "user", "content": "acme.com for the rest"}]}
    seen = json.dumps(chat(stack, body)["body"])
    assert "AKIAIOSF" not in seen and "ODNN7EXAMPLE" not in seen and "oscar@" not in seen, seen


def test_a_value_in_the_query_string_reaches_the_model_masked_and_nothing_else_changes(stack):
    token = stack.token("oscar", roles=["accounting"])
    query = "a=1&note=mail+oscar%40acme.com+today&b=%7Ex+y&card=4539%201488%200343%206467"
    r = stack.http.post(f"/v1/chat/completions?{query}", headers={**stack.auth(token)},
                        json={"model": "gpt-general", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["echo"]["path"] == ("/v1/chat/completions?a=1&note=mail+***%40acme.com+today&b=%7Ex+y"
                                        "&card=****%20****%20****%206467")
    assert "oscar%40" not in r.text and "1488" not in r.text  # no header carries the original path


def test_a_get_without_a_body_reaches_the_upstream_with_its_query_masked(stack):
    token = stack.token("oscar", roles=["accounting"])
    r = stack.http.get("/v1/models?owner=oscar%40acme.com&limit=5", headers=stack.auth(token))
    assert r.status_code == 200, r.text
    assert r.json()["echo"]["path"] == "/v1/models?owner=***%40acme.com&limit=5"


def test_a_value_in_a_query_parameter_name_is_refused(stack):
    token = stack.token("oscar", roles=["accounting"])
    r = stack.http.post("/v1/chat/completions?oscar%40acme.com=1", headers={**stack.auth(token)},
                        json={"model": "gpt-general", "messages": [{"role": "user", "content": "hi"}]})
    assert (r.status_code, r.headers["x-authz-reason"]) == (403, "redaction.query")
    assert "oscar" not in r.text and "email" in r.text


def test_a_configured_header_reaches_the_model_masked(stack):
    echo = chat(stack, {"model": "gpt-general", "messages": [{"role": "user", "content": "hi"}]},
                **{NOTE_HEADER: "card 4539 1488 0343 6467 for Acme Corp"})
    assert echo["headers"][NOTE_HEADER] == "card **** **** **** 6467 for [CUSTOMER_1]"


# --- collateral damage ------------------------------------------------------------------------------

def test_nothing_outside_a_finding_changes(stack):
    around = ("👨\u200d👩\u200d👧 می\u200cخواهم ﬁnance Ｆｕｌｌ café e\u0301 \u200f שָׁלוֹם ½ {} "
              "日本語 \u00a0—\u2003end")
    prompt = around.format("mail oscar@acme.com")
    echo = chat(stack, {"model": "gpt-general", "messages": [{"role": "user", "content": prompt}]})
    assert echo["body"]["messages"][0]["content"] == around.format("mail ***@acme.com")
