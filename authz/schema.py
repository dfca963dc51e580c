"""The base class of every config section (kept apart from ``authz.config`` so that stage
packages can define their sections without importing the loader, which imports them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Unknown keys are errors; loaded objects are immutable; ``.inf`` and ``.nan`` are refused
    wherever a number is expected (they would pass every ``gt``/``le`` bound check)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
