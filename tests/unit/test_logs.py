"""Decision lines: batched off the request path, yet the same JSON lines the formatter writes."""

import asyncio
import json
import logging

from authz import logs


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.writes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.writes.append(self.format(record))


def logger(name: str) -> tuple[logging.Logger, Collect]:
    lg = logging.getLogger(name)
    lg.propagate = False
    lg.setLevel(logging.INFO)
    handler = Collect()
    lg.handlers[:] = [handler]
    return lg, handler


async def test_lines_are_batched_into_one_write_and_match_the_formatter():
    lg, out = logger("authz.test.decisions")
    lines = logs.DecisionLines(lg)
    for i in range(3):
        lines.emit("allow ok", {"event": "decision", "request_id": f"r{i}", "subject": "zoë"})
    assert out.writes == []  # nothing on the request path
    await asyncio.sleep(lines.FLUSH_SECONDS * 3)
    assert len(out.writes) == 1
    records = [json.loads(line) for line in out.writes[0].split("\n")]
    assert [r["request_id"] for r in records] == ["r0", "r1", "r2"]
    # The same shape JsonFormatter gives a logging call with the same fields.
    lg.info("allow ok", extra={"fields": {"event": "decision", "request_id": "r9", "subject": "zoë"}})
    reference = json.loads(out.writes[1])
    assert records[0].keys() == reference.keys()
    assert records[0]["logger"] == reference["logger"] and records[0]["msg"] == reference["msg"]
    assert records[0]["subject"] == "zoë" and records[0]["ts"].endswith("Z") and len(records[0]["ts"]) == 24


async def test_a_burst_is_flushed_early():
    lg, out = logger("authz.test.burst")
    lines = logs.DecisionLines(lg)
    for i in range(lines.MAX_LINES):
        lines.emit("deny x", {"n": i})
    assert len(out.writes) == 1 and len(out.writes[0].split("\n")) == lines.MAX_LINES


def test_without_an_event_loop_lines_are_written_at_once():
    lg, out = logger("authz.test.noloop")
    logs.DecisionLines(lg).emit("allow ok", {"n": 1})
    assert json.loads(out.writes[0])["n"] == 1
