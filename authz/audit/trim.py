"""``authz audit trim --before WHEN``: retention that verify can tell from deletion.

A chain whose first records are gone fails verification, unless a signed *trim record* says the
owner removed them: ``trim-<seq>.json`` in the instance directory, naming the seq and the
``prev`` hash the chain now starts with. Only whole files are removed, never the newest file of
an instance (the sidecar may be writing it), and only files whose every record is older than
``--before``. The record is written (and synced) before any file is removed, so an interrupted
trim leaves either nothing removed or a record that explains what is.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from authz.audit.canonical import canonical
from authz.audit.lines import DamagedLine, parse_line
from authz.audit.log import FILE_PREFIX, key_id, sign

TRIM_PREFIX = "trim-"


def parse_when(text: str) -> int:
    """``--before``: an ISO 8601 date or time (UTC unless it says otherwise), or ``7d``/``12h``
    for that long ago. Milliseconds since the epoch."""
    text = text.strip()
    units = {"d": 86400, "h": 3600, "m": 60}
    if text[:-1].isdigit() and text[-1:] in units:
        return int((time.time() - int(text[:-1]) * units[text[-1]]) * 1000)
    when = datetime.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(parse_line(line))
        except DamagedLine:
            continue
    return out


def trim(directory: Path, before_ms: int, key: ed25519.Ed25519PrivateKey) -> dict[str, Any] | None:
    """Remove the instance directory's files older than ``before_ms``; the trim record, or None
    when there was nothing to remove."""
    files = sorted(directory.glob(f"{FILE_PREFIX}*.jsonl"))
    removable: list[tuple[Path, list[dict[str, Any]]]] = []
    for path in files[:-1]:  # never the newest: it may be being written
        records = _records(path)
        if not records or any(not isinstance(r.get("time_ms"), int) or r["time_ms"] >= before_ms for r in records):
            break
        removable.append((path, records))
    if not removable:
        return None
    first_kept = next((r for path in files[len(removable):] for r in _records(path)), None)
    if first_kept is None:
        return None
    instance, next_seq = first_kept.get("instance"), first_kept.get("seq")
    if not isinstance(instance, str) or not isinstance(next_seq, int):
        raise ValueError(f"{directory}: the first record kept names no instance or seq; verify the log first")
    record = {"type": "trim", "v": 1, "instance": instance, "time_ms": int(time.time() * 1000),
              "before_time_ms": before_ms, "next_seq": next_seq, "next_prev": first_kept.get("prev"),
              "removed": [{"file": p.name, "first_seq": rs[0].get("seq"), "last_seq": rs[-1].get("seq")}
                          for p, rs in removable],
              "kid": key_id(key.public_key())}
    sign(record, key)
    out = directory / f"{TRIM_PREFIX}{record['next_seq']:012d}.json"
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(canonical(record) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    for path, _ in removable:
        path.unlink()
    for older in directory.glob(f"{TRIM_PREFIX}*.json"):  # superseded: the new one reaches back to seq 1
        if older != out:
            older.unlink()
    _sync_dir(directory)
    return record


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_trims(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every trim record under ``paths`` (directories searched; files beside given files too)."""
    found: dict[Path, dict[str, Any]] = {}
    dirs = {p if p.is_dir() else p.parent for p in paths}
    for d in dirs:
        for path in d.rglob(f"{TRIM_PREFIX}*.json"):
            try:
                record = json.loads(path.read_bytes())
            except ValueError:
                continue
            if isinstance(record, dict):
                found[path] = record
    return sorted(found.items())
