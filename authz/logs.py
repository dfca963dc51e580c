"""Logging: JSON lines (or readable text) written by a background thread, off the event loop.

Call sites pass structured fields as ``extra={"fields": {...}}``; the formatter merges them into
the JSON object. Nothing here ever logs a token or a body: callers pass only safe fields.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time

_listener: logging.handlers.QueueListener | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        event = getattr(record, "event", None)
        if event:
            out.setdefault("event", event)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))
        return line


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """(Re)configure the root logger. Safe to call again on config reload."""
    global _listener
    root = logging.getLogger()
    root.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if _listener is not None:
        _listener.stop()
    q: queue.SimpleQueue = queue.SimpleQueue()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.handlers.QueueHandler(q))
    _listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
    _listener.start()
    for noisy in ("aiohttp.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@atexit.register
def _flush() -> None:
    if _listener is not None:
        _listener.stop()
