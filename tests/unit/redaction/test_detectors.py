"""Detectors: positives in varied formats, and the near-misses that must not be findings."""

import time

import pytest

from authz.redaction.detectors import PATTERNS, Scanner, luhn, normalize, valid_iban

ALL = Scanner(PATTERNS, {"customer": ["Acme Corp", "Globex", "O'Brien & Sons"]}, {"project": r"PRJ-[0-9]{4}"})


def types(text: str) -> list[str]:
    return [f.type for f in ALL.scan(normalize(text))]


@pytest.mark.parametrize("text, expected", [
    ("mail oscar.m@acme-corp.example.com now", ["email"]),
    ("card 4539 1488 0343 6467 please", ["card"]),
    ("card 5425-2334-3010-9903", ["card"]),
    ("amex 3714 496353 98431", []),  # the Amex test number
    ("amex 3782 822463 10005", []),  # also a test number
    ("card 4111 1111 1111 1111 is the Visa test card", []),
    ("ssn 536-22-1234", ["ssn"]),
    ("ssn 536 22 1234", ["ssn"]),
    ("ssn 666-22-1234 is invalid", []),
    ("ssn 900-12-3456 is invalid", []),
    ("ssn 123-00-4567 is invalid", []),
    ("iban DE89 3704 0044 0532 0130 00", ["iban"]),
    ("iban GB82WEST12345698765432", ["iban"]),
    ("iban DE89 3704 0044 0532 0130 01 has a bad checksum", []),
    ("call +49 30 1234 5678", ["phone"]),
    ("call (415) 555-2671", ["phone"]),
    ("call +1-202-555-0143", ["phone"]),
    ("server 10.0.12.7", ["ipv4"]),
    ("v6 2001:db8::8a2e:370:7334", ["ipv6"]),
    ("key AKIAIOSFODNN7EXAMPLE", ["aws_key"]),
    ("token ghp_" + "a" * 36, ["github_token"]),
    ("sk-proj-" + "A1b2" * 10, ["openai_key"]),
    ("sk-ant-api03-" + "x" * 40, ["anthropic_key"]),
    ("xoxb-123456789012-abcdefABCDEF", ["slack_token"]),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.abcdefghijklmnop", ["jwt"]),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234567890abcdef\n-----END RSA PRIVATE KEY-----", ["private_key"]),
    ("db password=hunter2!x", ["password"]),
    ("the ACME CORP contract and globex", ["customer", "customer"]),
    ("acmecorporation written as one word", ["customer"]),
    ("acme alone, a corporate globexia", []),
    ("see PRJ-1234", ["project"]),
    # near-misses
    ("order 2024-11-22 shipped", []),
    ("version 1.2.3 and 10.4", []),
    ("order number 1234567890123456", []),  # 16 digits failing Luhn / no issuer
    ("ticket 123456789", []),
    ("time 12:30:45", []),
    ("ip 999.1.1.1", []),
])
def test_detector_cases(text, expected):
    assert types(text) == expected


def test_normalisation_defeats_trivial_evasions():
    assert types("mail oscar\u200b@acme.com") == ["email"]
    fullwidth = "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in "4539 1488 0343 6467")
    assert types(f"card {fullwidth}") == ["card"]
    assert types("key AKIA\u200dIOSFODNN7EXAMPLE") == ["aws_key"]


def test_validators():
    assert luhn("4539148803436467") and not luhn("4539148803436468")
    assert valid_iban("DE89370400440532013000") and not valid_iban("DE89370400440532013001")


def test_scanning_is_linear_time_on_hostile_input():
    started = time.perf_counter()
    ALL.scan("a" * 200_000 + "@" + "b" * 200_000)
    ALL.scan("1 " * 200_000)
    assert time.perf_counter() - started < 2.0
