"""Detectors: RE2 patterns (linear time, no catastrophic backtracking) plus validators that
turn "looks like" into "is": Luhn and issuer prefixes for cards, mod-97 for IBANs, the SSA's
invalid ranges for SSNs, real address parsing for IPs.

All structured detectors run as one combined RE2 scan (one pass over the text); dictionaries
are one case-insensitive whole-word alternation each; custom patterns join the combined scan.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator

import re2

from authz.jsontext import replace_surrogates

# type -> category; the sensitivity header names categories.
CATEGORIES = {
    "email": "pii", "phone": "pii", "card": "pii", "ssn": "pii", "iban": "pii", "ipv4": "pii", "ipv6": "pii",
    "aws_key": "secret", "github_token": "secret", "openai_key": "secret", "anthropic_key": "secret",
    "slack_token": "secret", "jwt": "secret", "private_key": "secret", "password": "secret",
}

# Order matters: the leftmost match wins, and at one position the first alternative that matches.
PATTERNS: dict[str, str] = {
    "private_key": r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[A-Za-z0-9+/=\s:,-]+?-----END (?:[A-Z]+ )?PRIVATE KEY-----",
    "jwt": r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
    "anthropic_key": r"\bsk-ant-[A-Za-z0-9_-]{20,200}",
    "openai_key": r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}",
    "aws_key": r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b",
    "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})",
    "slack_token": r"\bxox[abposr]-[A-Za-z0-9-]{10,200}",
    "password": r"(?i)\b(?:password|passwd|pwd|passphrase|secret|api[_-]?key|access[_-]?token)\b\s*[:=]\s*"
                r"[\"']?[^\s\"',;\x00]{4,200}",
    "email": r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
    "card": r"\b\d(?:[ -]?\d){12,18}\b",
    "ssn": r"\b\d{3}-\d{2}-\d{4}\b|\b\d{3} \d{2} \d{4}\b",
    "phone": r"(?:\+\d{1,3}[ .-]?)(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}\b"
             r"|\(\d{3}\) ?\d{3}[ .-]\d{4}\b|\b\d{3}[.-]\d{3}[.-]\d{4}\b",
    "ipv6": r"\b(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})\b|::1\b",
    "ipv4": r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
}

# Published test numbers of the card networks: what documentation and tests are full of. They
# are not anyone's card, so they are not findings.
TEST_CARDS = frozenset({
    "4111111111111111", "4242424242424242", "4012888888881881", "4000056655665556", "5555555555554444",
    "5105105105105100", "2223003122003222", "378282246310005", "371449635398431", "6011111111111117",
    "6011000990139424", "3530111333300000", "3566002020360505", "30569309025904", "38520000023237",
})


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_brand_ok(d: str) -> bool:
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)
    two, four = int(d[:2]), int(d[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if d.startswith("6011") or d.startswith("65") or 644 <= int(d[:3]) <= 649:
        return 16 <= n <= 19
    if 3528 <= four <= 3589:
        return 16 <= n <= 19
    if two in (36, 38, 39) or 300 <= int(d[:3]) <= 305:
        return 14 <= n <= 19
    return False


def valid_card(text: str) -> bool:
    d = re.sub(r"[ -]", "", text)
    return 13 <= len(d) <= 19 and d not in TEST_CARDS and _card_brand_ok(d) and luhn(d)


def valid_ssn(text: str) -> bool:
    d = re.sub(r"[ -]", "", text)
    area, group, serial = int(d[:3]), int(d[3:5]), int(d[5:])
    return not (area == 0 or area == 666 or area >= 900 or group == 0 or serial == 0)


IBAN_LENGTHS = {"AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
                "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
                "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18,
                "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26}


def valid_iban(text: str) -> bool:
    s = text.replace(" ", "")
    if IBAN_LENGTHS.get(s[:2]) not in (None, len(s)):
        return False
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in rearranged)
    return int(num) % 97 == 1


def valid_phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 8 <= digits <= 15


def valid_ipv4(text: str) -> bool:
    parts = text.split(".")
    return all(len(p) <= 3 and int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts)


def valid_ipv6(text: str) -> bool:
    if text.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


VALIDATORS: dict[str, Callable[[str], bool]] = {
    "card": valid_card, "ssn": valid_ssn, "iban": valid_iban, "phone": valid_phone, "ipv4": valid_ipv4,
    "ipv6": valid_ipv6,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    type: str
    start: int
    end: int
    value: str


# Zero-width and other invisible characters people (or prompts) use to split a number or a word.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"), None)


def normalize(text: str) -> str:
    """Fold trivial evasions: invisible characters out, full-width and other compatibility forms
    (full-width digits, the full-width at sign) to their plain form. ASCII text is returned as it is
    (the common, fast case)."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text.translate(_INVISIBLE))


def _options() -> re2.Options:
    # Large dictionaries (thousands of names) need more than RE2's default 8 MiB to keep the
    # fast DFA; without it RE2 falls back to a slower (still linear) engine and logs about it.
    options = re2.Options()
    options.max_mem = 256 << 20
    options.log_errors = False
    return options


class Scanner:
    """One compiled scan for a set of detectors, dictionaries and custom patterns."""

    def __init__(self, detectors: Iterable[str], dictionaries: dict[str, Iterable[str]] | None = None,
                 custom: dict[str, str] | None = None) -> None:
        # One alternation, one pass over the text: structured detectors first (at the same
        # position they win), then custom patterns, then dictionaries (case-insensitive, whole
        # words, longest term first).
        detectors = list(detectors)
        parts = [f"(?P<{name}>{PATTERNS[name]})" for name in PATTERNS if name in detectors]
        for name, pattern in (custom or {}).items():
            parts.append(f"(?P<{name}>{pattern})")
        for name, terms in (dictionaries or {}).items():
            alternation = "|".join(re2.escape(t) for t in sorted({t.strip() for t in terms if t.strip()},
                                                                   key=len, reverse=True))
            if alternation:
                parts.append(rf"(?P<{name}>(?i:\b(?:{alternation})\b))")
        self._combined = re2.compile("|".join(parts), _options()) if parts else None

    def scan(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        if self._combined is not None:
            try:
                matches = list(self._combined.finditer(text))  # RE2 reads UTF-8
            except UnicodeEncodeError:  # a lone surrogate (from a JSON escape): U+FFFD keeps offsets
                matches = list(self._combined.finditer(replace_surrogates(text)))
            for m in matches:
                kind = m.lastgroup
                value = m.group()
                check = VALIDATORS.get(kind)
                if check is None or check(value):
                    found.append(Finding(kind, m.start(), m.end(), value))
        return found  # in order, never overlapping: one leftmost-first scan

    def iter_types(self, text: str) -> Iterator[str]:
        for f in self.scan(text):
            yield f.type


def compile_custom(pattern: str) -> None:
    """Raise ValueError with RE2's reason when a user pattern cannot be used."""
    try:
        re2.compile(pattern, _options())  # log_errors off: no raw RE2 log lines on stderr
    except Exception as exc:  # re2.error, whose message may be bytes
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"not a pattern RE2 accepts (linear-time engine): {reason}") from None

