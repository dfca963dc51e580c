"""Where the CPU went during a measurement (Linux /proc; elsewhere these report nothing).

Throughput on a shared two-core box moves with whatever else runs on it. CPU time per request
of each of our processes moves far less, and the CPU used by everything else during the run
says whether a number can be trusted at all.
"""

from __future__ import annotations

import dataclasses
import os
import resource
from collections.abc import Mapping
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


def process_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one running process (without its children: ``tree_seconds``
    counts those), or None when unknown."""
    try:
        return cpu_seconds_from_stat((_PROC / str(pid) / "stat").read_text())
    except OSError:
        return None


def cpu_seconds_from_stat(stat: str, *, reaped_children: bool = False) -> float:
    """User + system seconds from a /proc/PID/stat line; with ``reaped_children`` plus those of
    its children it has waited for (cutime, cstime)."""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])   # utime, stime: fields 14 and 15 of proc(5)
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])   # cutime, cstime: fields 16 and 17
    return ticks / _TICKS


def parent_from_stat(stat: str) -> int:
    return int(stat[stat.rindex(")") + 2:].split()[1])   # ppid: field 4 of proc(5)


def tree_seconds(pid: int) -> float | None:
    """CPU seconds of a process and all its descendants: the live ones, and those that exited
    and were waited for (in their parent's cutime/cstime). A server forking workers (authz's
    ``server.workers``) is measured whole, however many it runs; between two readings a worker
    that exited and was reaped still counts, once."""
    stats: dict[int, str] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = (entry / "stat").read_text()
        except OSError:
            continue   # exited while we looked
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for child, stat in stats.items():
        children.setdefault(parent_from_stat(stat), []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu_seconds_from_stat(stats[p], reaped_children=True)
        todo.extend(children.get(p, ()))
    return total


def machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent not idle since boot (iowait counts as idle)."""
    try:
        first = (_PROC / "stat").read_text().splitlines()[0]
    except OSError:
        return None
    return busy_seconds_from_stat(first)


def busy_seconds_from_stat(cpu_line: str) -> float:
    name, *values = cpu_line.split()
    if name != "cpu":
        raise ValueError(f"not the aggregate cpu line of /proc/stat: {cpu_line!r}")
    ticks = [int(v) for v in values]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]
    return busy / _TICKS


def children_seconds() -> float:
    """CPU seconds of our children that have been waited for (wrk, after it exits)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass
class CpuSample:
    """A snapshot to subtract from a later one."""

    processes: dict[str, float | None]
    machine: float | None
    children: float
    own: float

    @classmethod
    def take(cls, pids: Mapping[str, int]) -> CpuSample:
        """CPU of each named process with its descendants (a sidecar's workers, if any)."""
        return cls({name: tree_seconds(pid) for name, pid in pids.items()}, machine_busy_seconds(),
                   children_seconds(), self_seconds())


def usage_between(before: CpuSample, after: CpuSample, *, wall_seconds: float, requests: int,
                  load_generator: str = "wrk") -> dict[str, float]:
    """CPU microseconds per request of each process (and of the load generator, a waited child),
    and the share of the machine's CPUs used by everything that is not us."""
    out: dict[str, float] = {}
    ours = 0.0
    for name, start in before.processes.items():
        end = after.processes.get(name)
        if start is None or end is None:
            continue
        ours += end - start
        out[f"{name}_cpu_us_per_request"] = round((end - start) / max(1, requests) * 1e6, 1)
    gen = after.children - before.children
    ours += gen + (after.own - before.own)
    out[f"{load_generator}_cpu_us_per_request"] = round(gen / max(1, requests) * 1e6, 1)
    if before.machine is not None and after.machine is not None and wall_seconds > 0:
        others = max(0.0, (after.machine - before.machine) - ours)
        out["other_cpu_percent"] = round(others / (wall_seconds * (os.cpu_count() or 1)) * 100, 1)
    return out
