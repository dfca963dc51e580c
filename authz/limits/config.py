"""The ``limits:`` section: rate limits, token/cost budgets and the model price table."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from authz.matching.config import Conditions, Match
from authz.schema import Model

Dimension = Literal["user", "tenant", "client", "route", "tool", "model"]
PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
           "d": 86400, "day": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


def parse_rate(text: str) -> tuple[int, int]:
    """``"60/min"`` → (60, 60): requests per window seconds. ``"5/10s"`` → (5, 10)."""
    m = _RATE.match(text.lower())
    if not m or m.group(3) not in PERIODS:
        raise ValueError(f"expected a rate such as 60/min, 10/s, 1000/hour or 5/10s, got {text!r}")
    count, mult, unit = int(m.group(1)), int(m.group(2) or 1), PERIODS[m.group(3)]
    if count <= 0 or mult <= 0:
        raise ValueError("a rate needs a positive count and window")
    if count > 1_000_000_000 or mult * unit > 366 * 86400:
        raise ValueError("a rate allows at most 1000000000 requests per window of at most 366 days")
    return count, mult * unit


class Selector(Model):
    """Which requests a limit applies to: a ``match`` (what) and ``when`` conditions (who)."""

    match: Match = Match()
    when: Conditions = Conditions(authenticated=False)


class RateLimit(Selector):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    key: tuple[Dimension, ...] = ("user",)
    rate: str
    burst: int | None = Field(None, ge=1, le=1_000_000)  # default: the rate's count
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str) -> str:
        parse_rate(v)
        return v

    @property
    def count_and_window(self) -> tuple[int, int]:
        return parse_rate(self.rate)


class Budget(Selector):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    key: tuple[Dimension, ...] = ("user",)
    period: Literal["day", "month"] = "day"
    unit: Literal["tokens", "cost"] = "tokens"
    limit: float = Field(gt=0, le=1e12)  # tokens, or currency units (see prices)
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"


class Price(Model):
    """Currency units per one million tokens."""

    input: float = Field(ge=0, le=1e6)
    output: float = Field(ge=0, le=1e6)
    cached_input: float | None = Field(None, ge=0, le=1e6)  # default: the input price


class Estimate(Model):
    """How much to reserve before the response says what was used."""

    bytes_per_token: float = Field(3.0, ge=0.1, le=100)  # prompt estimate from the body size (generous)
    default_max_tokens: int = Field(4096, ge=1, le=10_000_000)  # when the request sets no max_tokens
    max_output_tokens: int = Field(32768, ge=1, le=10_000_000)  # cap on what a request may ask to reserve
    tokens_per_image: int = Field(4160, ge=1, le=1_000_000)  # an image generated (gpt-image, 1024x1024 high)


class LimitsConfig(Model):
    rate_limits: tuple[RateLimit, ...] = ()
    budgets: tuple[Budget, ...] = ()
    prices: dict[str, Price] = {}               # model name (wildcards allowed) → price
    estimate: Estimate = Estimate()
    headers_on_allowed: bool = True             # RateLimit / RateLimit-Policy on every answer
    reservation_ttl_seconds: int = Field(3600, ge=10, le=400 * 86400)

    @model_validator(mode="after")
    def _consistent(self) -> LimitsConfig:
        ids = [r.id for r in self.rate_limits] + [b.id for b in self.budgets]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate limit id(s): {', '.join(dupes)}")
        if any(b.unit == "cost" for b in self.budgets) and not self.prices:
            raise ValueError("a budget with unit: cost needs a prices table")
        return self
