"""Validators: what turns "looks like" into "is" (Luhn and issuer prefixes for cards, mod-97 and
the country's length for IBANs, the SSA's invalid ranges for SSNs, address parsing for IPs, a
JSON header naming an ``alg`` for JWTs), each on the shadow text of a candidate."""

# ruff: noqa: RUF001  (typographic quotes are stripped from passwords)

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
from collections.abc import Callable

# Published test numbers of the card networks: what documentation and tests are full of. They
# are not anyone's card, so they are not findings.
TEST_CARDS = frozenset({
    "4111111111111111", "4242424242424242", "4012888888881881", "4000056655665556", "5555555555554444",
    "5105105105105100", "2223003122003222", "378282246310005", "371449635398431", "6011111111111117",
    "6011000990139424", "3530111333300000", "3566002020360505", "30569309025904", "38520000023237",
})

_NOT_ALNUM = re.compile(r"[^0-9A-Za-z]")


def compact(text: str) -> str:
    return _NOT_ALNUM.sub("", text)


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
    d = compact(text)
    return 13 <= len(d) <= 19 and d.isdigit() and d not in TEST_CARDS and _card_brand_ok(d) and luhn(d)


def valid_ssn(text: str) -> bool:
    d = compact(text)[-9:]
    if len(d) != 9:
        return False
    area, group, serial = int(d[:3]), int(d[3:5]), int(d[5:])
    return not (area == 0 or area == 666 or area >= 900 or group == 0 or serial == 0)


IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def valid_iban(text: str) -> bool:
    s = compact(text).upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    rearranged = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in rearranged)
    return int(num) % 97 == 1


def valid_phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    if text.startswith("+"):
        return 8 <= digits <= 15
    if text.lstrip("(").startswith("0"):
        return 10 <= digits <= 12  # national formats with a trunk prefix (UK, DE, FR)
    return 10 <= digits <= 11  # North American: [1] NPA NXX XXXX


def valid_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255
                                   and (p == "0" or not p.startswith("0")) for p in parts)


def valid_ipv6(text: str) -> bool:
    if text.count(":") < 2 or text.strip(":") == "":
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _b64json(segment: str) -> object:
    try:
        raw = base64.urlsafe_b64decode(segment.rstrip("=") + "=" * (-len(segment.rstrip("=")) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError):
        return None


def valid_jwt(text: str) -> bool:
    """A JWT by structure: three base64url segments whose header is a JSON object naming an ``alg``
    (the payload may be anything: encrypted, compressed, not JSON)."""
    header = _b64json(text.split(".", 1)[0])
    return isinstance(header, dict) and isinstance(header.get("alg"), str)


def entropy(text: str) -> float:
    counts: dict[str, int] = {}
    for c in text:
        counts[c] = counts.get(c, 0) + 1
    n = len(text)
    return -sum(k / n * math.log2(k / n) for k in counts.values())


def valid_token(text: str) -> bool:
    """A value after a secret word (``API_KEY=``, ``"token":``, ``Bearer``) that looks like a
    secret: letters and digits mixed, or high entropy (mixed classes, 3.5 bits per character)."""
    value = text.strip("\"'“”‘’")
    if value.casefold().rstrip(".!,") in NOT_PASSWORDS:
        return False
    if len(value) >= 8 and re.search("[0-9]", value) and re.search("[A-Za-z]", value):
        return True
    classes = sum(bool(re.search(p, value)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    return len(value) >= 16 and classes >= 2 and entropy(value) >= 3.5


# Words that follow "password is" in prose and are not passwords.
NOT_PASSWORDS = frozenset("""a an the not too required incorrect wrong invalid expired correct missing empty
set reset changed stored saved hashed encrypted weak strong long short same different case sensitive
visible hidden blank null none unknown protected secure insecure mandatory optional needed valid
ok okay fine good bad easy hard simple""".split())


def valid_password(text: str) -> bool:
    value = text.strip("\"'“”‘’")
    if not value or value.casefold().rstrip(".!,") in NOT_PASSWORDS:
        return False
    return True


VALIDATORS: dict[str, Callable[[str], bool]] = {
    "card": valid_card, "ssn": valid_ssn, "iban": valid_iban, "phone": valid_phone, "ipv4": valid_ipv4,
    "ipv6": valid_ipv6, "jwt": valid_jwt, "token": valid_token, "password": valid_password,
}
