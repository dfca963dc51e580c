"""The limit algorithms, stated once in Python (the memory store runs this) and once in Lua
(``script.py``, what Redis runs); the same tests run against both.

Rate limits use GCRA (the generic cell rate algorithm): per key one number, the theoretical
arrival time (TAT) in microseconds. With emission interval T = window / count and capacity
``burst``, a request is allowed when ``max(TAT, now) + T - T * burst <= now``. It is exact: no
windows to straddle, and the whole check-and-update is one atomic step.

Budgets are counters per period: ``reserve`` adds an estimate if it fits under the limit,
``settle`` later adds (actual - estimate), which is negative when less was used.

A batch is all-or-nothing: if any limit refuses, nothing is consumed anywhere. What a batch
took can be given back exactly (``undo``): a request that is refused later, or answered without
the store's decision, is charged nothing.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True, slots=True)
class RateOp:
    key: str
    interval_us: float   # T: microseconds per request
    burst: int
    cost: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class ReserveOp:
    key: str
    limit: int           # integer units (tokens or micro-currency)
    amount: int
    ttl_seconds: int


@dataclasses.dataclass(frozen=True, slots=True)
class RateResult:
    allowed: bool
    remaining: int       # requests still allowed right now (after this one, if allowed)
    reset_us: int        # until the bucket is full again
    retry_after_us: int  # when refused: until this request would fit


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetResult:
    allowed: bool
    used: int            # after this reservation, if allowed
    remaining: int


@dataclasses.dataclass(frozen=True, slots=True)
class BatchResult:
    allowed: bool
    rates: tuple[RateResult, ...]
    budgets: tuple[BudgetResult, ...]


def evaluate_rate(tat: float | None, now_us: int, op: RateOp) -> tuple[RateResult, float | None]:
    """Returns the result and the new TAT to store (None when refused: store nothing)."""
    tat = now_us if tat is None or tat < now_us else tat
    new_tat = tat + op.interval_us * op.cost
    allow_at = new_tat - op.interval_us * op.burst
    if allow_at <= now_us:
        remaining = int((now_us - allow_at) // op.interval_us)
        return RateResult(True, remaining, math.ceil(new_tat - now_us), 0), new_tat
    return RateResult(False, 0, math.ceil(tat - now_us), math.ceil(allow_at - now_us)), None


def evaluate_budget(used: int, op: ReserveOp) -> BudgetResult:
    if used + op.amount > op.limit:
        return BudgetResult(False, used, max(0, op.limit - used))
    return BudgetResult(True, used + op.amount, op.limit - used - op.amount)


def rate_ttl_ms(new_tat: float, now_us: int) -> int:
    """A bucket's key may vanish once it is full again: idle users cost nothing."""
    return max(1, math.ceil((new_tat - now_us) / 1000)) + 1


def undo_rate(tat: float | None, now_us: int, op: RateOp) -> float | None:
    """The TAT once ``op``'s request is taken back (None: the bucket is full, drop the key)."""
    if tat is None:
        return None
    new_tat = tat - op.interval_us * op.cost
    return new_tat if new_tat > now_us else None
