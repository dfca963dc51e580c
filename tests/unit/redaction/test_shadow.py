"""Detection reads a folded shadow; only the findings' spans of the original change.

The property: for random Unicode text (emoji ZWJ sequences, RTL scripts with ZWNJ, combining
marks, ligatures, full-width letters, bidi marks) with findings inserted, the forwarded text
equals the input outside the finding spans, character for character (and so byte for byte).
"""

# ruff: noqa: RUF001  (the look-alike letters are the point)

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.redaction.detectors import PATTERNS, Scanner
from authz.redaction.redactor import Redactor
from authz.redaction.shadow import Shadow

SCANNER = Scanner(PATTERNS, {"customer": ["Acme Corp", "Umbrella Health"]})

NOISE = [
    "👨\u200d👩\u200d👧", "🏳️\u200d🌈", "👍🏽", "می\u200cخواهم", "نمی\u200cدانم", "שָׁלוֹם", "e\u0301te\u0301", "Z̤̈a̮l̰g̓o",
    "ﬁnance", "ﬀ", "Ｆｕｌｌ", "ｗｉｄｔｈ", "\u200f", "\u200e", "\u2066x\u2069", "\u00ad", "\ufeff", "café", "naïve",
    "日本語", "한국어", "Ελληνικά", "кириллица", "x²", "½", "\u00a0", "\u2003", "…", "—", "hello", "world",
]
VALUES = ["oscar@acme.com", "4539 1488 0343 6467", "AKIAIOSFODNN7EXAMPLE", "Acme Corp", "DE89 3704 0044 0532 0130 00",
          "536-22-1234", "Umbrella\nHealth", "２００１:db8::8a2e:370:7334", "４５３９ １４８８ ０３４３ ６４６７",
          "oscar\u200b@acme.com", "4539\u200d1488\u200d0343\u200d6467"]

segments = st.lists(st.one_of(st.sampled_from(NOISE).map(lambda s: (s, False)),
                              st.sampled_from(VALUES).map(lambda s: (s, True))), max_size=12)


def _placeholders(_: str) -> str:
    return "placeholder"


def _expected(parts: list[tuple[str, bool]]) -> re.Pattern[str]:
    return re.compile("".join(r"\[[A-Z0-9_]+\]" if finding else re.escape(text) for text, finding in parts),
                      re.DOTALL)


def _join(segs: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    parts: list[tuple[str, bool]] = []
    for text, finding in segs:
        parts.append((" ", False))
        parts.append((text, finding))
    parts.append((" ", False))
    return parts


@settings(max_examples=300, deadline=None)
@given(segments)
def test_only_the_findings_spans_change(segs):
    parts = _join(segs)
    text = "".join(t for t, _ in parts)
    out = Redactor(SCANNER, _placeholders).text(text)
    assert _expected(parts).fullmatch(out), (text, out)
    assert out.encode("utf-8", "surrogatepass").count(b"\xe2\x80\x8d") >= sum(
        t.count("\u200d") for t, f in parts if not f)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(NOISE), max_size=12))
def test_text_without_findings_comes_back_as_it_came(noise):
    text = " ".join(noise)
    red = Redactor(SCANNER, _placeholders)
    assert red.text(text) is text or red.text(text) == text
    assert not red.found


@settings(max_examples=100, deadline=None)
@given(segments, segments)
def test_json_strings_change_only_inside_findings(a, b):
    pa, pb = _join(a), _join(b)
    doc = {"messages": [{"role": "user", "content": "".join(t for t, _ in pa)},
                        {"role": "user", "content": "".join(t for t, _ in pb)}]}
    out = Redactor(SCANNER, _placeholders).json_value(doc)
    assert _expected(pa).fullmatch(out["messages"][0]["content"])
    assert _expected(pb).fullmatch(out["messages"][1]["content"])


@given(st.text(max_size=60))
def test_every_shadow_span_maps_inside_the_original(text):
    shadow = Shadow(text, decode=True)
    n = len(shadow.value)
    for i in range(n):
        for j in range(i + 1, min(n, i + 8) + 1):
            a, b = shadow.span(i, j)
            assert 0 <= a < b <= len(text)


def test_the_issue_cases_keep_their_neighbours():
    red = Redactor(SCANNER, lambda t: "mask")
    text = "👨\u200d👩\u200d👧 می\u200cخواهم ﬁ Ｆｕｌｌ card 4539 1488 0343 6467 12/27"
    assert red.text(text) == "👨\u200d👩\u200d👧 می\u200cخواهم ﬁ Ｆｕｌｌ card **** **** **** 6467 12/27"


STAGE_CONFIG = """redaction:
  enabled: true
  dictionaries: [{name: customer, terms: [Acme Corp, Umbrella Health]}]
  rules: [{id: all, match: {paths: ["/*"]}, actions: {default: placeholder}}]
"""


@settings(max_examples=60, deadline=None)
@given(segments)
def test_the_forwarded_body_changes_only_inside_findings(segs):
    """The same property through the stage and the body it forwards (encoded, then read back as
    the upstream would)."""
    import asyncio
    import json

    from authz.config import parse_config
    from authz.model import Context, Principal, Request
    from authz.redaction.stage import RedactionStage
    from authz.store import MemoryStore

    parts = _join(segs)
    text = "".join(t for t, _ in parts)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}, ensure_ascii=False)
    ctx = Context(request=Request(id="r", method="POST", scheme="http", host="h", path="/v1/chat/completions",
                                  headers={"content-type": "application/json"}, body=body.encode()),
                  principal=Principal(subject="p"))
    stage = RedactionStage(parse_config(STAGE_CONFIG, env={}).redaction, MemoryStore())
    asyncio.run(stage.on_request(ctx))
    forwarded = json.loads(ctx.outgoing.encode()) if ctx.outgoing is not None else json.loads(body)
    assert _expected(parts).fullmatch(forwarded["messages"][0]["content"])


ALPHABET = st.sampled_from([*"0123456789 -./:@+=_'\"\n\t&#;%ABCDEFabcdefxyzKIASPQ",
                            "\u200b", "\u200d", "\u00a0", "\u2013", "٤", "４", "а", "ﬁ", "👍", "é", "e\u0301", "\u00ad"])


@settings(max_examples=300, deadline=None)
@given(st.lists(ALPHABET, max_size=80).map("".join), st.sampled_from(["mask", "placeholder", "hash", "allow"]))
def test_any_text_is_scanned_without_error_and_changes_only_inside_findings(text, action):
    red = Redactor(SCANNER, lambda t: action, hmac_key=b"k")
    findings = SCANNER.scan(text)
    out = red.text(text)
    if not findings or action == "allow":
        assert out == text
    else:  # what lies before the first and after the last finding is untouched
        assert out.startswith(text[:findings[0].start]) and out.endswith(text[findings[-1].end:])
    assert all(0 <= f.start < f.end <= len(text) and text[f.start:f.end] == f.value for f in findings)
