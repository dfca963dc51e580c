"""Published heads: the latest signed checkpoint of each chain, kept outside its directory.

Whoever can delete files in the audit directory can delete its newest files, and what is left
is a chain that verifies, closed by its last remaining checkpoint. The sidecar therefore
publishes each checkpoint it writes: on its HTTP port (``GET /audit/head``), in its decision
log (``"event": "audit_checkpoint"`` lines, field ``audit_head``) and, with
``audit.redis_stream`` on, in the Redis Stream (checkpoints are lines like any other). ``authz
audit verify --head FILE|URL`` reads any of these and fails when the chain on disk ends before
the newest head it was given.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def heads_document(heads: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """What ``/audit/head`` serves."""
    return {"heads": [h for h in heads if h is not None]}


def _candidates(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if value.get("type") == "checkpoint":
            yield value
        for key in ("heads", "audit_head", "fields"):
            inner = value.get(key)
            if isinstance(inner, list):
                for item in inner:
                    yield from _candidates(item)
            elif isinstance(inner, dict):
                yield from _candidates(inner)


def parse_heads(data: bytes) -> dict[str, dict[str, Any]]:
    """The newest checkpoint per instance in ``data``: a ``/audit/head`` document, decision-log
    lines, or audit lines (a Redis Stream export). Lines that are not JSON are skipped."""
    newest: dict[str, dict[str, Any]] = {}
    try:
        docs: list[Any] = [json.loads(data)]
    except ValueError:
        docs = []
        for line in data.splitlines():
            try:
                docs.append(json.loads(line))
            except ValueError:
                continue
    for doc in docs:
        for head in _candidates(doc):
            instance, seq = head.get("instance"), head.get("seq")
            if isinstance(instance, str) and isinstance(seq, int):
                if instance not in newest or seq > newest[instance]["seq"]:
                    newest[instance] = head
    return newest


def load_heads(sources: Iterable[str], *, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Heads from files (an audit directory: every line of its files) and http(s) URLs."""
    newest: dict[str, dict[str, Any]] = {}
    for source in sources:
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=timeout) as answer:
                chunks = [answer.read(16 * 1024 * 1024)]
        else:
            path = Path(source)
            files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
            chunks = [f.read_bytes() for f in files]
        for chunk in chunks:
            for instance, head in parse_heads(chunk).items():
                if instance not in newest or head["seq"] > newest[instance]["seq"]:
                    newest[instance] = head
    return newest
