"""``authz limits show``: current usage, remaining quota and budget for one user (or tenant)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from collections.abc import Sequence
from typing import Any

from authz.cli.text import exit_codes, plain
from authz.config import load_config
from authz.errors import ConfigError
from authz.limits.stage import MICRO, LimitsStage, period_bounds
from authz.store import StoreUnavailable, build_store

LIMITS_EXIT_CODES = exit_codes("0  shown", "1  the store is unreachable",
                               "2  the config is invalid, or the command line is wrong")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="authz limits show", description=plain(__doc__), **LIMITS_EXIT_CODES)
    p.add_argument("--config", "-c", required=True, help="the config the sidecar runs (its store and limits)")
    for dim in ("user", "tenant", "client", "route", "tool", "model"):
        p.add_argument(f"--{dim}", help=f"the {dim} the limits are keyed by")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


async def usage(config_path: str, values: dict[str, str | None]) -> list[dict[str, Any]]:
    config, _ = load_config(config_path)
    store = build_store(config.store)
    try:
        now_us = await store.time_us()
        now = datetime.datetime.fromtimestamp(now_us / 1e6, datetime.UTC)
        rows: list[dict[str, Any]] = []
        for limit in config.limits.rate_limits:
            key = LimitsStage.key_for("rl", limit.id, limit.key, values)
            if key is None:
                continue
            count, window = limit.count_and_window
            burst = limit.burst or count
            interval = window * 1_000_000 / count
            raw = await store.get(key)
            tat = max(float(raw), now_us) if raw else now_us
            remaining = min(burst, int((now_us - (tat - interval * burst)) // interval))
            rows.append({"kind": "rate", "id": limit.id, "rate": limit.rate, "burst": burst,
                         "remaining": remaining, "full_in_seconds": round((tat - now_us) / 1e6, 1)})
        for budget in config.limits.budgets:
            key = LimitsStage.key_for("bg", budget.id, budget.key, values)
            if key is None:
                continue
            period_id, end = period_bounds(budget.period, now)
            raw = await store.get(f"{key}:{period_id}")
            used = int(raw) if raw else 0
            scale = 1 if budget.unit == "tokens" else MICRO
            rows.append({"kind": "budget", "id": budget.id, "period": period_id, "unit": budget.unit,
                         "used": used / scale, "limit": budget.limit,
                         "remaining": max(0.0, budget.limit - used / scale),
                         "renews": end.isoformat()})
        return rows
    finally:
        await store.close()


def main(argv: Sequence[str]) -> int:
    if list(argv[:1]) in (["-h"], ["--help"]):
        top = argparse.ArgumentParser(prog="authz limits", description="Usage, remaining quota and budget.",
                                      **LIMITS_EXIT_CODES)
        top.add_subparsers(dest="cmd").add_parser("show", help="one user's (or tenant's ...) limits")
        top.parse_args(["--help"])
    if not argv or argv[0] != "show":
        print("usage: authz limits show --config FILE --user NAME [--tenant T ...]", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv[1:])
    values = {d: getattr(args, d) for d in ("user", "tenant", "client", "route", "tool", "model")}
    try:
        rows = asyncio.run(usage(args.config, values))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"authz limits: the store is unreachable: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print("no limit or budget applies to those keys (give --user, --tenant, ... as the limits are keyed)")
        return 0
    for r in rows:
        if r["kind"] == "rate":
            print(f"rate    {r['id']:<24} {r['rate']:>10}  burst {r['burst']:<6} "
                  f"remaining {r['remaining']:<6} full in {r['full_in_seconds']}s")
        else:
            print(f"budget  {r['id']:<24} {r['period']:>10}  used {r['used']:g} of {r['limit']:g} {r['unit']}"
                  f", remaining {r['remaining']:g}, renews {r['renews']}")
    return 0
