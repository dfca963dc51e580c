"""Logging: JSON lines (or readable text) written by a background thread, off the event loop.

Call sites pass structured fields as ``extra={"fields": {...}}``; the formatter merges them into
the JSON object. Nothing here ever logs a token or a body: callers pass only safe fields.
"""

from __future__ import annotations

import asyncio
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
        if getattr(record, "preformatted", False):
            return record.getMessage()  # a batch of lines DecisionLines already wrote as JSON
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


class DecisionLines:
    """One JSON line per decision without the logging module on the request path.

    A decision line through ``logging`` cost a LogRecord, a copy in the queue handler, a JSON
    formatter and a write per line in the listener thread, and the GIL going back and forth for
    each: a quarter of the sidecar's throughput with ``log.decisions`` on (measured). Here the
    event loop encodes the line (C ``json``) and keeps it; once per ``FLUSH_SECONDS`` the batch
    goes to the logging thread as one record, written with one write. Same line format as
    ``JsonFormatter``; with text logs (or no running loop) lines go through ``logging`` as before.
    """

    # Each flush is a hand-over to the logging thread (and the GIL back and forth), which costs
    # the request path more than the lines do: ten a second, as the audit writer does.
    FLUSH_SECONDS = 0.1
    MAX_LINES = 1024  # flush early past this many: a burst does not sit in memory

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._lines: list[str] = []
        self._scheduled = False
        self._second = -1
        self._stamp = ""

    def emit(self, msg: str, fields: dict[str, object]) -> None:
        if not _json_format:
            self.logger.info(msg, extra={"fields": fields})
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # the timestamp's date part, formatted once a second
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = {"ts": f"{self._stamp}.{int((now - second) * 1000):03d}Z", "level": "info",
                "logger": self.logger.name, "msg": msg, **fields}
        self._lines.append(json.dumps(line, default=str, separators=(",", ":")))
        if len(self._lines) >= self.MAX_LINES:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)
                self._scheduled = True
            except RuntimeError:  # no event loop (a CLI, a test): write now
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        text, self._lines = "\n".join(self._lines), []
        record = self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0, text, (), None)
        record.preformatted = True
        self.logger.handle(record)


_json_format = True
_decision_lines: list[DecisionLines] = []


def decision_lines(logger: logging.Logger) -> DecisionLines:
    """The batching writer for ``logger`` (flushed at exit)."""
    writer = DecisionLines(logger)
    _decision_lines.append(writer)
    return writer


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """(Re)configure the root logger. Safe to call again on config reload."""
    global _listener, _json_format
    _json_format = fmt == "json"
    root = logging.getLogger()
    root.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if _listener is not None:
        _listener.stop()
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.handlers.QueueHandler(q))
    _listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
    _listener.start()
    for noisy in ("aiohttp.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@atexit.register
def _flush() -> None:
    for writer in _decision_lines:
        writer.flush()
    if _listener is not None:
        _listener.stop()
