"""Redaction accuracy and speed: a labelled corpus built from templates (positives in varied
formats, and near-misses: order numbers, dates, versions, times, test cards in prose), a scorer
with precision and recall per entity type, and scanning throughput on a 1 MB chat payload.

``python -m bench.redaction`` (also part of ``make bench``). Targets: precision and recall
>= 0.97 for every structured type, 100% recall of dictionary terms, >= 50 MB/s.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import json
import random
import string
import sys
import time
from collections.abc import Callable

from authz.redaction.detectors import PATTERNS, Scanner, normalize
from authz.redaction.redactor import Redactor

CUSTOMERS = ["Acme Corp", "Globex", "Initech", "Umbrella Health", "Stark Industries", "Wayne Enterprises",
             "Cyberdyne Systems", "Soylent", "Tyrell Corporation", "Hooli"]
CUSTOMERS += [f"Customer {i:04d} Ltd" for i in range(3000)]  # a dictionary of thousands of terms
rng = random.Random(8785)


def _luhn_digit(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def card() -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                 ("6011", 16), (str(rng.randint(3528, 3589)), 16)])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = body + _luhn_digit(body)
    sep = rng.choice([" ", "-", ""])
    if length == 15:
        return sep.join([number[:4], number[4:10], number[10:]])
    return sep.join(number[i:i + 4] for i in range(0, 16, 4))


def ssn() -> str:
    area = rng.choice([rng.randint(1, 665), rng.randint(667, 899)])
    sep = rng.choice(["-", " "])
    return f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}"


def iban() -> str:
    country, bban = rng.choice([("DE", "".join(rng.choice(string.digits) for _ in range(18))),
                                ("GB", "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
                                 + "".join(rng.choice(string.digits) for _ in range(14))),
                                ("FR", "".join(rng.choice(string.digits) for _ in range(23)))])
    num = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    raw = f"{country}{98 - num % 97:02d}{bban}"
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4)) if rng.random() < 0.5 else raw


def phone() -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return rng.choice([f"+49 30 {d(4)} {d(4)}", f"+1-{rng.randint(201, 989)}-555-{d(4)}",
                       f"({rng.randint(201, 989)}) 555-{d(4)}", f"+44 20 {d(4)} {d(4)}",
                       f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}", f"{rng.randint(201, 989)}.555.{d(4)}"])


def email() -> str:
    user = rng.choice(["oscar", "anna.lee", "j.smith", "ops+alerts", "dana_k", "m.o'neil".replace("'", "")])
    return f"{user}{rng.randint(1, 99)}@{rng.choice(['acme.com', 'mail.example.org', 'corp.co.uk', 'x.io'])}"


def ipv4() -> str:
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def ipv6() -> str:
    return str(ipaddress.IPv6Address(rng.getrandbits(128)))


def alnum(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


GENERATORS: dict[str, Callable[[], str]] = {
    "email": email, "phone": phone, "card": card, "ssn": ssn, "iban": iban, "ipv4": ipv4, "ipv6": ipv6,
    "aws_key": lambda: "AKIA" + alnum(16, string.ascii_uppercase + string.digits),
    "github_token": lambda: "ghp_" + alnum(36),
    "openai_key": lambda: "sk-proj-" + alnum(48),
    "anthropic_key": lambda: "sk-ant-api03-" + alnum(60),
    "slack_token": lambda: f"xoxb-{rng.randint(10**11, 10**12)}-{alnum(24)}",
    "jwt": lambda: f"{b64({'alg': 'RS256'})}.{b64({'sub': alnum(8)})}.{alnum(43)}",
    "private_key": lambda: "-----BEGIN PRIVATE KEY-----\n" + "\n".join(alnum(64) for _ in range(4))
                           + "\n-----END PRIVATE KEY-----",
    "password": lambda: f"password={alnum(12)}",
    "customer": lambda: rng.choice([str.upper, str.lower, str.title, lambda s: s])(rng.choice(CUSTOMERS)),
}

TEMPLATES = ["Please check {} before Friday.", "The value is {} (see ticket).", "{}",
             "Hi team, {} is attached.",
             "From the CRM: {}; next steps below.", "Note: '{}'", "Forecast line 7 -> {} / Q3",
             "Can you summarise the deal with {}?", "{} was mentioned twice in the call notes."]

NEAR_MISSES = [
    lambda: f"Order #{rng.randint(10**15, 10**16 - 1)} shipped on {rng.randint(2020, 2026)}-"
            f"{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}.",
    lambda: f"Upgrade to version {rng.randint(1, 20)}.{rng.randint(0, 30)}.{rng.randint(0, 99)} today.",
    lambda: f"Meeting at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} UTC.",
    lambda: "Use the test card 4111 1111 1111 1111 in the sandbox.",
    lambda: "Stripe's test number 4242 4242 4242 4242 always succeeds.",
    lambda: f"Ticket {rng.randint(100000000, 999999999)} is closed.",
    lambda: f"Invoice INV-{rng.randint(1000, 9999)} for {rng.randint(1, 999)}.{rng.randint(0, 99):02d} EUR.",
    lambda: f"Not an SSN: {rng.choice(['000', '666', str(rng.randint(900, 999))])}-{rng.randint(10, 99)}-"
            f"{rng.randint(1000, 9999)} (invalid area).",
    lambda: f"Serial {rng.randint(100, 899)}-{rng.randint(10, 99)}-0000 ends in zeros.",
    lambda: f"The ratio was {rng.random():.4f} over {rng.randint(2, 99)} runs.",
    lambda: f"Build 2024.{rng.randint(1, 12)}.{rng.randint(1, 28)}.{rng.randint(100, 999)} passed.",
]


def corpus(n_per_type: int = 80, n_negative: int = 300) -> list[tuple[str, list[tuple[str, str]]]]:
    samples = []
    for kind, gen in GENERATORS.items():
        for _ in range(n_per_type):
            value = gen()
            samples.append((rng.choice(TEMPLATES).format(value), [(kind, value)]))
    for _ in range(n_negative):
        samples.append((rng.choice(NEAR_MISSES)(), []))
    for _ in range(100):  # several entities in one text
        kinds = rng.sample(sorted(GENERATORS), 3)
        values = [(k, GENERATORS[k]()) for k in kinds]
        samples.append(("; ".join(f"{k}: {v}" for k, v in values), values))
    rng.shuffle(samples)
    return samples


def _same(found: str, expected: str) -> bool:
    squash = lambda s: "".join(s.split()).casefold()  # noqa: E731
    return squash(found) == squash(expected) or squash(expected) in squash(found)


def score(scanner: Scanner, samples) -> dict[str, dict[str, float]]:
    tp, fp, fn = collections.Counter(), collections.Counter(), collections.Counter()
    for text, labels in samples:
        found = scanner.scan(normalize(text))
        unmatched = list(labels)
        for f in found:
            hit = next((lab for lab in unmatched if lab[0] == f.type and _same(f.value, lab[1])), None)
            if hit:
                tp[f.type] += 1
                unmatched.remove(hit)
            else:
                fp[f.type] += 1
        for kind, _ in unmatched:
            fn[kind] += 1
    out = {}
    for kind in sorted(set(tp) | set(fp) | set(fn)):
        p = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else 1.0
        r = tp[kind] / (tp[kind] + fn[kind]) if tp[kind] + fn[kind] else 1.0
        out[kind] = {"precision": round(p, 4), "recall": round(r, 4),
                     "tp": tp[kind], "fp": fp[kind], "fn": fn[kind]}
    return out


def chat_payload(size: int = 1_000_000) -> bytes:
    words = ("the quarterly forecast shows revenue growth across regions while costs remain stable and the "
             "team expects margins to improve next year").split()
    messages, total = [], 0
    while total < size:
        text = " ".join(rng.choice(words) for _ in range(200))
        if rng.random() < 0.2:
            text += f" contact {email()} or card {card()} for {rng.choice(CUSTOMERS[:10])}"
        messages.append({"role": rng.choice(["user", "assistant"]), "content": text})
        total += len(text) + 40
    return json.dumps({"model": "gpt-general", "messages": messages}).encode()


def measure() -> dict:
    """Precision and recall per entity type on the corpus, and warm throughput on a 1 MB chat
    payload, with the targets and whether each is met (what ``make bench`` records)."""
    scanner = Scanner(PATTERNS, {"customer": CUSTOMERS})
    samples = corpus()
    types = {}
    for kind, r in score(scanner, samples).items():
        # Dictionary terms: every one must be found; structured types: 0.97 both ways.
        target = {"recall": 1.0} if kind == "customer" else {"precision": 0.97, "recall": 0.97}
        met = all(r[k] >= v for k, v in target.items())
        types[kind] = {**r, "target": target, "met": met}
    payload = chat_payload()
    # RE2 builds its DFA lazily: a serving sidecar is warm, so measure warm (best of three runs).
    Redactor(scanner, lambda t: "mask").body(payload, "application/json")
    elapsed = float("inf")
    for _ in range(3):
        red = Redactor(scanner, lambda t: "mask")
        started = time.perf_counter()
        red.body(payload, "application/json")
        elapsed = min(elapsed, time.perf_counter() - started)
    mbps = len(payload) / 1e6 / elapsed
    return {"samples": len(samples), "near_misses": sum(not labels for _, labels in samples), "types": types,
            "throughput_mb_per_s": round(mbps, 1), "throughput_target_mb_per_s": 50,
            "payload_bytes": len(payload), "findings": sum(red.found.values()),
            "met": all(t["met"] for t in types.values()) and mbps >= 50}


def report(m: dict) -> str:
    lines = [f"redaction corpus: {m['samples']} samples ({m['near_misses']} near-misses)",
             f"{'type':<15} {'precision':>9} {'recall':>7} {'tp':>5} {'fp':>4} {'fn':>4}"]
    for kind, r in m["types"].items():
        lines.append(f"{kind:<15} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['tp']:>5} {r['fp']:>4} "
                     f"{r['fn']:>4}  {'' if r['met'] else '<- below target'}".rstrip())
    mbps, floor = m["throughput_mb_per_s"], m["throughput_target_mb_per_s"]
    lines.append(f"throughput: {mbps:.0f} MB/s scanning and masking a {m['payload_bytes'] / 1e6:.1f} MB chat "
                 f"payload ({m['findings']} findings){'' if mbps >= floor else f' <- below {floor} MB/s'}")
    return "\n".join(lines)


def main() -> int:
    m = measure()
    print(report(m))
    return 0 if m["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
