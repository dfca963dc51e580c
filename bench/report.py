"""Turn measured scenarios into the comparison: percent of the floor, targets met, the table."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from bench.scenarios import CHECK, PATH, CpuTarget, Scenario

# Above this share of the machine's CPUs used by processes that are not the bench, a number says
# more about the neighbours than about us.
BUSY_MACHINE_PERCENT = 10.0


def ratio(r: Mapping[str, Any] | None, base: Mapping[str, Any] | None) -> float | None:
    """``r``'s throughput over ``base``'s: the median of the per-round ratios when both ran the
    same rounds (each round's pair ran minutes apart at most, so the machine's drift between
    rounds cancels out), else the ratio of the reported numbers."""
    rps, base_rps = _rps(r), _rps(base)
    if rps is None or not base_rps:
        return None
    assert r is not None and base is not None
    mine, theirs = r.get("rounds_requests_per_second"), base.get("rounds_requests_per_second")
    if mine and theirs and len(mine) == len(theirs) and all(theirs):
        return float(statistics.median(m / t for m, t in zip(mine, theirs, strict=True)))
    return rps / base_rps


def compare(scenarios: Iterable[Scenario], results: Mapping[str, dict[str, Any]]) -> None:
    """Add ``percent_of_floor`` and, for scenarios with a target, ``target`` (with ``met``) to
    each measured result, in place. Targets whose baseline was not measured stay unjudged."""
    for sc in scenarios:
        r = results.get(sc.name)
        if r is None or _rps(r) is None:
            continue
        of_floor = ratio(r, results.get(sc.floor))
        if of_floor is not None:
            r["percent_of_floor"] = round(of_floor * 100, 1)
        if sc.target is not None:
            judged: dict[str, Any] = {"baseline": sc.target.baseline, "source": sc.target.source,
                                      "min_percent": round(sc.target.ratio * 100, 1)}
            of_base = ratio(r, results.get(sc.target.baseline))
            if of_base is not None:
                judged["percent_of_baseline"] = round(of_base * 100, 1)
                judged["met"] = of_base >= sc.target.ratio and clean(r)
            r["target"] = judged
        if sc.latency_target is not None:
            r["latency_target"] = _latency(sc, r, results.get(sc.latency_target.baseline))
        if sc.cpu_target is not None:
            r["cpu_target"] = judge_cpu(sc.cpu_target, r, results.get(sc.cpu_target.baseline or ""))
        if sc.redis_round_trips is not None and "redis_round_trips_per_request" in r:
            # A few health-check PINGs over the run are not the request path's.
            r["redis_round_trips_met"] = r["redis_round_trips_per_request"] <= sc.redis_round_trips + 0.01


def judge_cpu(t: CpuTarget, r: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """CPU per request against its limits; ``met`` only when every part could be judged."""
    judged: dict[str, Any] = {"source": t.source, "describe": t.describe()}
    verdicts = []
    sidecar, path = r.get("sidecar_cpu_us_per_request"), r.get("path_cpu_us_per_request")
    if t.sidecar_us is not None:
        verdicts.append(None if sidecar is None else sidecar <= t.sidecar_us)
    if t.path_us is not None:
        verdicts.append(None if path is None else path <= t.path_us)
    if t.baseline is not None and t.ratio is not None:
        key = f"{t.what}_cpu_us_per_request"
        mine, theirs = r.get(key), (base or {}).get(key) if _rps(base) is not None else None
        if mine is not None and theirs:
            judged["of_baseline"] = round(mine / theirs, 2)
            verdicts.append(mine / theirs <= t.ratio)
        else:
            verdicts.append(None)
    if verdicts and all(v is not None for v in verdicts):
        judged["met"] = all(verdicts) and clean(r)
    return judged


def _latency(sc: Scenario, r: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """p50 added over the baseline: the median of the per-round differences when both ran the
    same rounds, else the difference of the reported p50s."""
    assert sc.latency_target is not None
    t = sc.latency_target
    judged: dict[str, Any] = {"baseline": t.baseline, "max_added_ms": t.added_ms, "source": t.source}
    if base is None or _rps(base) is None:
        return judged
    mine, theirs = r.get("rounds_p50_ms"), base.get("rounds_p50_ms")
    if mine and theirs and len(mine) == len(theirs):
        added = statistics.median(m - b for m, b in zip(mine, theirs, strict=True))
    else:
        added = r["p50_ms"] - base["p50_ms"]
    judged["added_ms"] = round(added, 3)
    judged["met"] = added <= t.added_ms and clean(r)
    return judged


def _rps(r: Mapping[str, Any] | None) -> float | None:
    if not r or r.get("status") != "ok":
        return None
    return r.get("requests_per_second") or None


def clean(r: Mapping[str, Any]) -> bool:
    """Every request answered 2xx, no socket errors: the number measures what the scenario says."""
    return not r.get("non_2xx") and not r.get("errors")


def notes(r: Mapping[str, Any], *, backend: str | None = None) -> str:
    out = []
    if r.get("status") != "ok":
        return f"{r.get('status', 'failed').upper()}: {r.get('error', '')}".splitlines()[0]
    if not clean(r):
        out.append(f"NOT CLEAN: {r.get('non_2xx', 0)} non-2xx, {r.get('errors', 0)} socket errors")
    if len(r.get("rounds_requests_per_second", ())) > 1:
        out.append("rounds " + "/".join(str(x) for x in r["rounds_requests_per_second"]))
    cpu = [f"{who} {r[f'{who}_cpu_us_per_request']:.0f}"
           for who in (backend, "envoy") if who and f"{who}_cpu_us_per_request" in r]
    if cpu:
        out.append(f"CPU us/req: {', '.join(cpu)}")
    if "instructions_per_request" in r:
        out.append(f"instructions/req {r['instructions_per_request'] / 1e6:.2f}M (callgrind)")
    if "redis_round_trips_per_request" in r:
        verdict = "" if r.get("redis_round_trips_met", True) else " MISS"
        out.append(f"Redis round trips/req {r['redis_round_trips_per_request']:.2f}{verdict}")
    if r.get("other_cpu_percent", 0) > BUSY_MACHINE_PERCENT:
        out.append(f"machine busy: other processes used {r['other_cpu_percent']:.0f}% CPU")
    return "; ".join(out)


def target_cell(r: Mapping[str, Any]) -> str:
    lat = r.get("latency_target")
    if lat:
        if "met" not in lat:
            return f"p50 <= {lat['baseline']} + {lat['max_added_ms']:g} ms: n/a"
        verdict = "ok" if lat["met"] else "MISS"
        return f"p50 <= {lat['baseline']} + {lat['max_added_ms']:g} ms: +{lat['added_ms']:.2f} {verdict}"
    t = r.get("target")
    if not t:
        return ""
    if "met" not in t:
        return f">={t['min_percent']:.0f}% {t['baseline']}: n/a"
    verdict = "ok" if t["met"] else "MISS"
    return f">={t['min_percent']:.0f}% {t['baseline']}: {t['percent_of_baseline']:.0f}% {verdict}"


def table(scenarios: Iterable[Scenario], results: Mapping[str, dict[str, Any]]) -> str:
    """The human-readable tables: the Check scenarios, then the whole path, one row per
    scenario that ran (or failed to)."""
    scenarios = list(scenarios)
    out = []
    check = [sc for sc in scenarios if sc.group == CHECK and sc.name in results]
    path = [sc for sc in scenarios if sc.group == PATH and sc.name in results]
    if check:
        out.append(check_table(check, results))
    if path:
        out.append("whole path (deploy/envoy/envoy.yaml with ext_proc, canned upstream; CPU us per request; "
                   "path = sidecar + Envoy + Redis)\n" + path_table(path, results))
    return "\n\n".join(out)


def _cpu(r: Mapping[str, Any], who: str) -> str:
    v = r.get(f"{who}_cpu_us_per_request")
    return "-" if v is None else f"{v:,.0f}"


def path_table(scenarios: Iterable[Scenario], results: Mapping[str, dict[str, Any]]) -> str:
    rows: list[tuple[str, ...]] = [("scenario", "req/s", "p50 ms", "p99 ms", "sidecar", "envoy", "redis", "path",
                                    "upstream", "instr/req", "target", "notes")]
    for sc in scenarios:
        r = results[sc.name]
        if r.get("status") != "ok":
            rows.append((sc.name, *["-"] * 9, "", notes(r)))
            continue
        ir = r.get("instructions_per_request")
        rows.append((sc.name, f"{r['requests_per_second']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                     _cpu(r, "sidecar"), _cpu(r, "envoy"), _cpu(r, "redis"), _cpu(r, "path"),
                     _cpu(r, "upstream"), "-" if ir is None else f"{ir / 1e6:.2f}M", cpu_target_cell(r),
                     path_notes(r)))
    return _render(rows, right=range(1, 10))


def path_notes(r: Mapping[str, Any]) -> str:
    out = []
    if not clean(r):
        out.append(f"NOT CLEAN: {r.get('non_2xx', 0)} non-2xx, {r.get('errors', 0)} socket errors")
    if len(r.get("rounds_requests_per_second", ())) > 1:
        out.append("rounds " + "/".join(str(x) for x in r["rounds_requests_per_second"]))
    if "ext_proc_streams_per_request" in r:
        out.append(f"ext_proc streams/req {r['ext_proc_streams_per_request']:.2f}")
    if len(r.get("rounds_path_cpu_us", ())) > 1:
        out.append("path us " + "/".join(f"{x:.0f}" for x in r["rounds_path_cpu_us"]))
    if r.get("other_cpu_percent", 0) > BUSY_MACHINE_PERCENT:
        out.append(f"machine busy: others used {r['other_cpu_percent']:.0f}% CPU")
    return "; ".join(out)


def cpu_target_cell(r: Mapping[str, Any]) -> str:
    t = r.get("cpu_target")
    if not t:
        return ""
    verdict = "n/a" if "met" not in t else ("ok" if t["met"] else "MISS")
    extra = f" ({t['of_baseline']:.2f}x)" if "of_baseline" in t else ""
    return f"{t['describe']}{extra}: {verdict}"


def _render(rows: list[tuple[str, ...]], *, right: Iterable[int]) -> str:
    right = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def check_table(scenarios: Iterable[Scenario], results: Mapping[str, dict[str, Any]]) -> str:
    rows = [("scenario", "req/s", "p50 ms", "p99 ms", "of floor", "target", "notes")]
    for sc in scenarios:
        r = results.get(sc.name)
        if r is None:
            continue
        if r.get("status") == "ok":
            of_floor = f"{r['percent_of_floor']:.0f}%" if "percent_of_floor" in r else "n/a"
            rps = f"{r['requests_per_second']:.0f}"
            figures = (rps, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", of_floor)
            cells = [target_cell(r), cpu_target_cell(r)]
            rows.append((sc.name, *figures, "; ".join(c for c in cells if c), notes(r, backend=_backend_label(sc))))
        else:
            rows.append((sc.name, "-", "-", "-", "-", target_cell(r), notes(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:4], widths[1:4], strict=True)]
        cells += [row[4].rjust(widths[4]), row[5].ljust(widths[5]), row[6]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _backend_label(sc: Scenario) -> str | None:
    return {"noop": "noop", "authz": "authz"}.get(sc.backend)


def summary(scenarios: Iterable[Scenario], results: Mapping[str, dict[str, Any]]) -> list[str]:
    """One line per target missed and per scenario that did not run: what to look at first."""
    lines = []
    for sc in scenarios:
        r = results.get(sc.name)
        if r is None:
            continue
        if r.get("status") != "ok":
            first = (r.get("error") or "").strip().splitlines()[:1]
            lines.append(f"{sc.name}: {r.get('status')}: {first[0] if first else 'no reason given'}")
            continue
        t = r.get("target")
        if t and t.get("met") is False:
            lines.append(f"{sc.name}: {t['percent_of_baseline']:.0f}% of {t['baseline']}, target "
                         f">= {t['min_percent']:.0f}% ({t['source']})")
        lat = r.get("latency_target")
        if lat and lat.get("met") is False:
            lines.append(f"{sc.name}: p50 {lat['added_ms']:+.2f} ms over {lat['baseline']}, target "
                         f"<= {lat['max_added_ms']:g} ms ({lat['source']})")
        ct = r.get("cpu_target")
        if ct and ct.get("met") is False:
            got = [f"{who} {r[f'{who}_cpu_us_per_request']:,.0f} us" for who in ("sidecar", "path")
                   if f"{who}_cpu_us_per_request" in r]
            if "of_baseline" in ct:
                got.append(f"{ct['of_baseline']:.2f}x {sc.cpu_target.baseline if sc.cpu_target else ''}")
            lines.append(f"{sc.name}: CPU per request {', '.join(got)}; target {ct['describe']} ({ct['source']})")
        if r.get("redis_round_trips_met") is False:
            lines.append(f"{sc.name}: {r['redis_round_trips_per_request']:.2f} Redis round trips per "
                         f"request, expected {sc.redis_round_trips:g}")
    return lines
