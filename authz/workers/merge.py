"""One ``/metrics`` for all workers: each worker's exposition, parsed and summed.

Counters, histograms and summaries add up across workers (``process_cpu_seconds_total`` too: the
pod's CPU). A gauge is added when it counts something (in-flight requests, audit queues, memory),
the lowest when the worst worker must show (``authz_component_up``: 0 if any worker is down on
it; an issuer's key count and last fetch), else the highest (checkpoint lag, config flags). A worker that died takes its
counts with it; the supervisor keeps its last scrape and adds it on (``retire``), so the sums
never go backwards for Prometheus's ``rate()`` (what it counted after that scrape is lost).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString as _go_float

SUMMED_GAUGES = frozenset({
    "authz_inflight_requests", "authz_audit_queue_depth", "authz_audit_stream_backlog",
    "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
})
# The worst worker speaks for the pod: a component down, an issuer with no keys, the stalest fetch.
LOWEST_GAUGES = frozenset({"authz_component_up", "authz_jwks_keys", "authz_jwks_last_success_timestamp_seconds",
                           "process_start_time_seconds"})
COUNTING = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

Key = tuple[str, tuple[tuple[str, str], ...]]


class Family:
    __slots__ = ("doc", "name", "samples", "type")

    def __init__(self, name: str, type_: str, doc: str) -> None:
        self.name, self.type, self.doc = name, type_, doc
        self.samples: dict[Key, float] = {}


def parse(text: str) -> dict[str, Family]:
    out: dict[str, Family] = {}
    for metric in text_string_to_metric_families(text):
        fam = out.setdefault(metric.name, Family(metric.name, metric.type, metric.documentation))
        for s in metric.samples:
            fam.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _combine(fam: Family, sample: str, old: float, new: float) -> float:
    if sample.endswith("_created"):
        return min(old, new)
    if fam.type in COUNTING or fam.name in SUMMED_GAUGES:
        return old + new
    if fam.name in LOWEST_GAUGES:
        return min(old, new)
    return max(old, new)


def merge(parts: Iterable[dict[str, Family]]) -> dict[str, Family]:
    out: dict[str, Family] = {}
    for part in parts:
        for name, fam in part.items():
            into = out.get(name)
            if into is None:
                into = out[name] = Family(name, fam.type, fam.doc)
            for key, value in fam.samples.items():
                old = into.samples.get(key)
                into.samples[key] = value if old is None else _combine(into, key[0], old, value)
    return out


def counting_only(families: dict[str, Family]) -> dict[str, Family]:
    """What a dead worker leaves to be added on: its counts (no gauges, no creation times)."""
    out: dict[str, Family] = {}
    for name, fam in families.items():
        if fam.type in COUNTING:
            kept = Family(name, fam.type, fam.doc)
            kept.samples = {k: v for k, v in fam.samples.items() if not k[0].endswith("_created")}
            out[name] = kept
    return out


def floatToGoString(value: float) -> str:
    return str(_go_float(value))  # type: ignore[no-untyped-call]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(families: dict[str, Family]) -> str:
    lines: list[str] = []
    for fam in families.values():
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        type_ = "untyped" if fam.type == "unknown" else fam.type
        doc = fam.doc.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {type_}")
        for (sample, labels), value in fam.samples.items():
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sample}{{{text}}} {floatToGoString(value)}" if text
                         else f"{sample} {floatToGoString(value)}")
    return "\n".join(lines) + "\n"
