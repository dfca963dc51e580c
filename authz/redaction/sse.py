"""Server-sent events as they arrive: complete events out of arbitrary chunks.

An event ends at an empty line; a line ends with CRLF, LF or CR (a CR at the end of a chunk
waits for the next one, which may start with the LF of the same line ending). An event's
``data:`` lines join with newlines into one message, as a client joins them. Events we do not
change go out byte for byte as they came.
"""

from __future__ import annotations

import codecs
import dataclasses
import re

from authz.redaction import refusals

_EOL = re.compile(r"\r\n|\n|\r(?!\n)")
_EVENT_END = re.compile(r"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")


@dataclasses.dataclass(slots=True)
class Event:
    raw: str                 # the event as it came, terminator included
    lines: list[str]
    eol: str
    name: str | None = None
    data: str | None = None  # the joined data lines; None when there are none

    def with_data(self, data: str) -> str:
        """The event with its message replaced (one ``data:`` line where the first one was)."""
        out: list[str] = []
        placed = False
        for line in self.lines:
            if line.startswith("data:") or line == "data":
                if not placed:
                    out.append("data: " + data)
                    placed = True
                continue
            out.append(line)
        return self.eol.join(out) + self.eol + self.eol


def render(name: str | None, data: str, eol: str = "\n") -> str:
    head = f"event: {name}{eol}" if name else ""
    return f"{head}data: {data}{eol}{eol}"


def _field_value(raw: str) -> str:
    return raw[1:] if raw.startswith(" ") else raw


def parse(raw: str, body: str) -> Event:
    lines = _EOL.split(body)
    eol_match = _EOL.search(raw)
    ev = Event(raw=raw, lines=lines, eol=eol_match.group(0) if eol_match else "\n")
    data: list[str] = []
    for line in lines:
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(_field_value(value))
        elif field == "event":
            ev.name = _field_value(value)
    if data:
        ev.data = "\n".join(data)
    return ev


class Reader:
    """Feed it chunks; it returns the events completed so far. Bounded: an event longer than
    ``max_bytes`` (or text that is not UTF-8) raises ``Refused``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""
        self.eol = "\n"

    def feed(self, chunk: bytes, end: bool) -> list[Event]:
        try:
            self._buf += self._decoder.decode(chunk, final=end)
        except UnicodeDecodeError:
            raise refusals.unreadable("an event is not UTF-8") from None
        events: list[Event] = []
        pos = 0
        limit = len(self._buf) if end or not self._buf.endswith("\r") else len(self._buf) - 1
        for m in _EVENT_END.finditer(self._buf, 0, limit):
            if m.start() < pos:
                continue
            if m.start() - pos > self.max_bytes:  # one chunk brought all of a too large event
                raise refusals.too_large(self.max_bytes)
            events.append(parse(self._buf[pos:m.end()], self._buf[pos:m.start()]))
            pos = m.end()
        self._buf = self._buf[pos:]
        if events:
            self.eol = events[-1].eol
        # However the answer is cut into chunks: an event still open past the bound is refused
        # now, one completed within a chunk above.
        if len(self._buf) > self.max_bytes:
            raise refusals.too_large(self.max_bytes)
        if end and self._buf:
            # The stream ended without the event's blank line: some clients still read it, so
            # it is scanned as an event like any other.
            body = self._buf.rstrip("\r\n")
            events.append(parse(self._buf, body))
            self._buf = ""
        return events
