"""Redaction accuracy and speed: a labelled corpus built from templates (positives in varied
formats, and near-misses: order numbers, dates, versions, times, test cards in prose), a scorer
with precision and recall per entity type, and scanning throughput on a 1 MB chat payload.

``python -m bench.redaction`` (also part of ``make bench``). Targets: precision and recall
>= 0.99 for every structured type, 100% recall of dictionary terms (written with line breaks,
tabs, hyphens or no space, in confusable letters, with a longer legal form), >= 50 MB/s. The
corpus grows with every evasion of issue 15: separators, digit scripts, invisible characters,
neighbours, national phone formats, lower-case IBANs, password and cloud key assignments,
encoded secrets, and the near-misses each of them risks. The optional person detector (NER) is
measured by ``bench.names`` (CPU per KB, precision and recall on its own labelled sentences) and
reported with these figures; it has no target.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import json
import random
import statistics
import string
import sys
import time
from collections.abc import Callable
from typing import Any

from authz.redaction.detectors import PATTERNS, Scanner, normalize
from authz.redaction.redactor import Redactor
from authz.request.jsonbody import parse_json
from bench import names

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


# How people (and evasions) write digit groups: the separators and digit scripts of issue 15.
SEPARATORS = [" ", "-", "", ".", "/", "\u00a0", "\u2013", "\n", " - "]
SCRIPTS = [0x30, 0x30, 0x30, 0x660, 0x966, 0xFF10, 0x9E6]  # ASCII (most), Arabic-Indic, Devanagari, ...
INVISIBLE = ["\u200b", "\u200d", "\u2060", "\u00ad", "\u200e", "\ufeff"]


def _script(text: str) -> str:
    base = rng.choice(SCRIPTS)
    return "".join(chr(base + int(c)) if c.isdigit() else c for c in text) if base != 0x30 else text


def _invisible(text: str) -> str:
    if rng.random() < 0.1 and len(text) > 4:
        i = rng.randrange(1, len(text) - 1)
        return text[:i] + rng.choice(INVISIBLE) + text[i:]
    return text


def card() -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                 ("6011", 16), (str(rng.randint(3528, 3589)), 16)])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = body + _luhn_digit(body)
    sep = rng.choice(SEPARATORS)
    if length == 15:
        grouped = sep.join([number[:4], number[4:10], number[10:]])
    else:
        grouped = sep.join(number[i:i + 4] for i in range(0, 16, 4))
    return _invisible(_script(grouped))


def plain_card() -> str:
    body = "4" + "".join(rng.choice(string.digits) for _ in range(14))
    number = body + _luhn_digit(body)
    return " ".join(number[i:i + 4] for i in range(0, 16, 4))


def ssn() -> str:
    area = rng.choice([rng.randint(1, 665), rng.randint(667, 899)])
    sep = rng.choice(["-", " ", ".", "/", "\u2013"])
    return _script(f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}")


def iban() -> str:
    country, bban = rng.choice([("DE", "".join(rng.choice(string.digits) for _ in range(18))),
                                ("GB", "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
                                 + "".join(rng.choice(string.digits) for _ in range(14))),
                                ("FR", "".join(rng.choice(string.digits) for _ in range(23))),
                                ("ES", "".join(rng.choice(string.digits) for _ in range(20))),
                                ("NL", "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
                                 + "".join(rng.choice(string.digits) for _ in range(10)))])
    num = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    raw = f"{country}{98 - num % 97:02d}{bban}"
    text = rng.choice([" ", "-", ""]).join(raw[i:i + 4] for i in range(0, len(raw), 4))
    return text.lower() if rng.random() < 0.25 else text


def phone() -> str:
    def d(n: int) -> str:
        return "".join(rng.choice(string.digits) for _ in range(n))

    area = rng.randint(201, 989)
    return rng.choice([f"+49 30 {d(4)} {d(4)}", f"+1-{area}-555-{d(4)}", f"({area}) 555-{d(4)}",
                       f"+44 20 {d(4)} {d(4)}", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}", f"{area}.555.{d(4)}",
                       f"{area} 555 {d(4)}", f"1-{area}-555-{d(4)}",                           # US national
                       f"020 7946 {d(4)}", f"07700 9{d(5)}", f"0161 496 {d(4)}",               # UK
                       f"030 {d(8)}", f"089 {d(7)}", f"(030) {d(4)} {d(4)}", f"0151 {d(8)}",  # DE
                       f"01 {d(2)} {d(2)} {d(2)} {d(2)}", f"06.{d(2)}.{d(2)}.{d(2)}.{d(2)}",  # FR
                       f"+44 (0)20 7946 {d(4)}"])


def email() -> str:
    user = rng.choice(["oscar", "anna.lee", "j.smith", "ops+alerts", "dana_k", "m.oneil"])
    return f"{user}{rng.randint(1, 99)}@{rng.choice(['acme.com', 'mail.example.org', 'corp.co.uk', 'x.io'])}"


def ipv4() -> str:
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def ipv6() -> str:
    address = ipaddress.IPv6Address(rng.getrandbits(128))
    return rng.choice([str(address), address.exploded,
                       f"2001:db8::{rng.randint(1, 0xffff):x}:{rng.randint(1, 0xffff):x}",
                       f"::ffff:{ipv4()}", f"fe80::{rng.randint(1, 0xffff):x}:{rng.randint(1, 0xffff):x}"])


def alnum(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64(obj: dict[str, Any] | bytes) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt() -> str:
    payload = rng.choice([b64({"sub": alnum(8)}), b64(rng.randbytes(24)), b64({"enc": alnum(30)})])
    return f"{b64({'alg': rng.choice(['RS256', 'HS256', 'ES256']), 'typ': 'JWT'})}.{payload}.{alnum(43)}"


def confusable(text: str) -> str:
    swap = {"A": "\u0410", "C": "\u0421", "E": "\u0415", "O": "\u041e", "a": "\u0430", "c": "\u0441",
            "e": "\u0435", "o": "\u043e", "p": "\u0440"}
    return "".join(swap.get(c, c) if rng.random() < 0.5 else c for c in text)


def customer() -> tuple[str, str]:
    """A customer name as people write it; the label is the text as written."""
    name = rng.choice(CUSTOMERS[:10] + CUSTOMERS[10:20])
    if name.endswith(" Corp") and rng.random() < 0.5:
        name = name[:-4] + rng.choice(["Corporation", "Corp.", "CORPORATION"])
    words = name.split(" ")
    written = rng.choice([" ", "\n", "\t", "  ", "-", ""]).join(words) if len(words) > 1 else name
    cases: list[Callable[[str], str]] = [str.upper, str.lower, str.title, str]
    written = rng.choice(cases)(written)
    if rng.random() < 0.2:
        written = confusable(written)
    if rng.random() < 0.1:
        return written + "'s", written
    return written, written


def password() -> tuple[str, str]:
    """A password assignment; the label is the value (the keyword before it stays)."""
    form = rng.choice(['password="{}"', "password={}", "my password is {}", "pwd: {}", "passphrase = '{}'",
                       "PASSWORD: {}", "DB_PASSWORD={}"])
    quoted = '"' in form or "'" in form
    spaced = ["correct horse battery staple"] if quoted else []
    value = rng.choice([alnum(12), "Tr0ub4dor&3", alnum(8) + "!", *spaced])
    shown = f'"{value}"' if '"' in form else f"'{value}'" if "'" in form else value
    return form.format(value), shown


def cloud_key() -> tuple[str, str]:
    kind = rng.choice(["aws", "azure", "gcp"])
    if kind == "aws":
        value = alnum(40, string.ascii_letters + string.digits + "/+")
        return f"aws_secret_access_key = {value}", value
    if kind == "azure":
        value = alnum(86, string.ascii_letters + string.digits + "+/") + "=="
        return f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={value};EndpointSuffix=core", value
    value = "AIza" + alnum(35, string.ascii_letters + string.digits + "_-")
    return value, value


def encoded_email() -> tuple[str, str]:
    address = email()
    form = rng.choice(["html", "named", "percent", "base64"])
    if form == "html":
        value = address.replace("@", "&#64;")
    elif form == "named":
        value = address.replace("@", "&commat;")
    elif form == "percent":
        value = address.replace("@", "%40")
    else:
        value = base64.b64encode(f"contact: {address}".encode()).decode()
    return value, value


def bearer() -> tuple[str, str]:
    """A token after a secret word; the label is the value (quoted when written quoted)."""
    value = alnum(rng.randint(20, 40), string.ascii_letters + string.digits) + rng.choice(["7", "x9", "Q2"])
    form = rng.choice(["Authorization: Bearer {}", "API_KEY={}", 'client_secret: "{}"', "session_token: {}",
                       '{{"token": "{}"}}'])
    shown = f'"{value}"' if '"{}"' in form else value
    return form.format(value), shown


def encoded_secret() -> tuple[str, str]:
    key = "AKIA" + alnum(16, string.ascii_uppercase + string.digits)
    form = rng.choice(["html", "percent", "base64"])
    if form == "html":
        value = "".join(f"&#{ord(c)};" for c in key[:4]) + key[4:]
    elif form == "percent":
        value = "".join(f"%{ord(c):02X}" for c in key[:4]) + key[4:]
    else:
        value = base64.b64encode(f"the key is {key} ok".encode()).decode()
    return value, value


GENERATORS: dict[str, Callable[[], str]] = {
    "email": email, "phone": phone, "card": card, "ssn": ssn, "iban": iban, "ipv4": ipv4, "ipv6": ipv6,
    "aws_key": lambda: "AKIA" + alnum(16, string.ascii_uppercase + string.digits),
    "github_token": lambda: "ghp_" + alnum(36),
    "openai_key": lambda: "sk-proj-" + alnum(48),
    "anthropic_key": lambda: "sk-ant-api03-" + alnum(60),
    "slack_token": lambda: f"xoxb-{rng.randint(10**11, 10**12)}-{alnum(24)}",
    "jwt": jwt,
    "private_key": lambda: "-----BEGIN PRIVATE KEY-----\n" + "\n".join(alnum(64) for _ in range(4))
                           + "\n-----END PRIVATE KEY-----",
}
# Generators whose text differs from their label (a keyword before the value, a possessive).
LABELLED: dict[str, Callable[[], tuple[str, str]]] = {
    "customer": customer, "password": password, "cloud_key": cloud_key, "aws_key": encoded_secret,
    "token": bearer, "email": encoded_email,
}

TEMPLATES = ["Please check {} before Friday.", "The value is {} (see ticket).", "{}",
             "Hi team, {} is attached.",
             "From the CRM: {}; next steps below.", "Note: '{}'", "Forecast line 7 -> {} / Q3",
             "Can you summarise the deal with {}?", "{} was mentioned twice in the call notes.",
             "\U0001f468\u200d\U0001f469\u200d\U0001f467 \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 {} \ufb01nal",
             "\uff26\uff55\uff4c\uff4c {} \u65e5\u672c\u8a9e"]
# A neighbour written right after the value (issue 15: the pattern took it, the checksum failed).
NEIGHBOURS = {"card": ["{} 12/27", "{} exp 12/27", "{} 123"], "iban": ["{} EUR", "{} BIC DEUTDEFF"],
              "ipv6": ["{}, next", "[{}]:8080"], "phone": ["{} ext. 12", "{} (mobile)"]}


NEAR_MISSES: list[Callable[[], str]] = [
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
    lambda: f"Due {rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(2020, 2030)} at the latest.",
    lambda: f"MAC {':'.join(f'{rng.randint(0, 255):02X}' for _ in range(6))} is on the allow list.",
    lambda: "The password is required, and the password was incorrect twice.",
    lambda: f"commit {alnum(40, '0123456789abcdef')} fixed it",
    lambda: f"request id {alnum(8, '0123456789abcdef')}-{alnum(4, '0123456789abcdef')}-4{alnum(3, '0123456789abcdef')}"
            f"-a{alnum(3, '0123456789abcdef')}-{alnum(12, '0123456789abcdef')}",
    lambda: "In C++ use std::vector and std::map::find.",
    lambda: f"Scores: {' '.join(str(rng.randint(0, 99)) for _ in range(20))}.",
    lambda: f"Call extension {rng.randint(100, 999)} or room {rng.randint(1000, 9999)}.",
    lambda: f"iban-like de{rng.randint(10, 99)} 1234 5678 9012 3456 78 has a bad checksum",
    lambda: "The key ingredient is flour; the token economy is a metaphor.",
    lambda: "Open the key src/components/HeaderNavigation.tsx and the token list in TokenRegistry2024.",
    lambda: f"The secret: {rng.choice(['patience', 'practice every day', 'good coffee'])}.",
    lambda: f"Sort key: {rng.choice(['createdAt', 'user_id', 'updated_at_desc'])}; primary key: id.",
    lambda: f"Quote ref {rng.randint(100, 199)} {rng.randint(100, 999)} {rng.randint(1000, 9999)} is old.",
    lambda: f"base64 of a greeting: {base64.b64encode(b'hello there, nothing secret in here').decode()}",
    lambda: "acme alone is not a customer, nor is a corporation.",
    lambda: f"Card ending {plain_card()[-4:]} was charged {rng.randint(1, 99)}.{rng.randint(10, 99)} USD.",
]


def corpus(n_per_type: int = 80, n_negative: int = 500) -> list[tuple[str, list[tuple[str, str]]]]:
    samples: list[tuple[str, list[tuple[str, str]]]] = []
    for kind, gen in GENERATORS.items():
        for _ in range(n_per_type):
            value = gen()
            template = rng.choice(TEMPLATES)
            if kind in NEIGHBOURS and rng.random() < 0.3:
                template = template.replace("{}", rng.choice(NEIGHBOURS[kind]))
            samples.append((template.format(value), [(kind, value)]))
    for kind, labelled in LABELLED.items():
        for _ in range(n_per_type):
            text, value = labelled()
            samples.append((rng.choice(TEMPLATES).format(text), [(kind, value)]))
    for _ in range(n_negative):
        samples.append((rng.choice(NEAR_MISSES)(), []))
    for _ in range(100):  # several entities in one text
        kinds = rng.sample(sorted(GENERATORS), 3)
        values = [(k, GENERATORS[k]()) for k in kinds]
        samples.append(("; ".join(f"{k}: {v}" for k, v in values), values))
    rng.shuffle(samples)
    return samples


def _squash(s: str) -> str:
    return "".join(normalize(s).split()).casefold()


def _same(found: str, expected: str) -> bool:
    return _squash(found) == _squash(expected) or _squash(expected) in _squash(found)


def score(scanner: Scanner, samples: list[tuple[str, list[tuple[str, str]]]]) -> dict[str, dict[str, Any]]:
    tp: collections.Counter[str] = collections.Counter()
    fp: collections.Counter[str] = collections.Counter()
    fn: collections.Counter[str] = collections.Counter()
    for text, labels in samples:
        found = scanner.scan(text)
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
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(tp) | set(fp) | set(fn)):
        p = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else 1.0
        r = tp[kind] / (tp[kind] + fn[kind]) if tp[kind] + fn[kind] else 1.0
        out[kind] = {"precision": round(p, 4), "recall": round(r, 4),
                     "tp": tp[kind], "fp": fp[kind], "fn": fn[kind]}
    return out


def chat_payload(size: int = 1_000_000) -> bytes:
    """The same payload whatever the corpus drew before it (its own seed)."""
    state = rng.getstate()
    rng.seed(20261130)
    try:
        return _chat_payload(size)
    finally:
        rng.setstate(state)


def _chat_payload(size: int) -> bytes:
    words = ("the quarterly forecast shows revenue growth across regions while costs remain stable and the "
             "team expects margins to improve next year").split()
    messages, total = [], 0
    while total < size:
        text = " ".join(rng.choice(words) for _ in range(200))
        if rng.random() < 0.2:
            text += f" contact {email()} or card {plain_card()} for {rng.choice(CUSTOMERS[:10])}"
        messages.append({"role": rng.choice(["user", "assistant"]), "content": text})
        total += len(text) + 40
    return json.dumps({"model": "gpt-general", "messages": messages}).encode()


def measure(rounds: int = 5) -> dict[str, Any]:
    """Precision and recall per entity type on the corpus, and warm throughput scanning and
    masking a 1 MB chat payload as the request view reads it (the parsed document; CPU time and
    wall clock), median of ``rounds``, with the targets and whether each is met (what ``make
    bench`` records)."""
    scanner = Scanner(PATTERNS, {"customer": CUSTOMERS})
    samples = corpus()
    types = {}
    for kind, r in score(scanner, samples).items():
        # Dictionary terms: every one must be found; structured types: 0.99 both ways.
        target = {"recall": 1.0} if kind == "customer" else {"precision": 0.99, "recall": 0.99}
        met = all(r[k] >= v for k, v in target.items())
        types[kind] = {**r, "target": target, "met": met}
    payload = chat_payload()
    document = parse_json(payload)
    # RE2 builds its DFA lazily: a serving sidecar is warm, so measure warm.
    Redactor(scanner, lambda t: "mask").json_value(document)
    times, cpu = [], []
    for _ in range(rounds):
        red = Redactor(scanner, lambda t: "mask")
        started, started_cpu = time.perf_counter(), time.process_time()
        red.json_value(document)
        cpu.append(time.process_time() - started_cpu)
        times.append(time.perf_counter() - started)
    mbps = len(payload) / 1e6 / statistics.median(times)
    # The scan is one thread's CPU work: on this shared box the wall clock also counts the time
    # other processes held the core (1.5-5x under load), so the target is judged on CPU time.
    cpu_mbps = len(payload) / 1e6 / statistics.median(cpu)
    return {"samples": len(samples), "near_misses": sum(not labels for _, labels in samples), "types": types,
            "throughput_mb_per_s": round(mbps, 1), "throughput_cpu_mb_per_s": round(cpu_mbps, 1),
            "throughput_target_mb_per_s": 50, "payload_bytes": len(payload), "findings": sum(red.found.values()),
            "ner": names.measure(),
            "met": all(t["met"] for t in types.values()) and cpu_mbps >= 50}


def report(m: dict[str, Any]) -> str:
    lines = [f"redaction corpus: {m['samples']} samples ({m['near_misses']} near-misses)",
             f"{'type':<15} {'precision':>9} {'recall':>7} {'tp':>5} {'fp':>4} {'fn':>4}"]
    for kind, r in m["types"].items():
        lines.append(f"{kind:<15} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['tp']:>5} {r['fp']:>4} "
                     f"{r['fn']:>4}  {'' if r['met'] else '<- below target'}".rstrip())
    mbps, floor = m["throughput_mb_per_s"], m["throughput_target_mb_per_s"]
    cpu = m.get("throughput_cpu_mb_per_s", mbps)
    lines.append(f"throughput: {cpu:.0f} MB/s of CPU time ({mbps:.0f} MB/s wall clock) scanning and masking a "
                 f"{m['payload_bytes'] / 1e6:.1f} MB chat payload ({m['findings']} findings)"
                 f"{'' if cpu >= floor else f' <- below {floor} MB/s'}")
    if isinstance(m.get("ner"), dict):
        lines.append(names.report(m["ner"]))
    return "\n".join(lines)


def main() -> int:
    m = measure()
    print(report(m))
    return 0 if m["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
