"""One answer on its way back, as Envoy hands it over (chunk by chunk, or whole).

The framing comes from the upstream's ``content-type``: an SSE stream is scanned as it flows
(``stream.StreamScanner``); a JSON answer, or any other text, is scanned whole once it is
complete (nothing of it goes out before: the chunks are held, up to ``max_bytes``). Whatever
cannot be scanned (not JSON, not UTF-8, too large, compressed) is refused in the protocol's
error shape, never passed on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from authz import jsonfast
from authz.redaction import refusals
from authz.redaction.responses import Scan, encode
from authz.redaction.stream import StreamScanner
from authz.request.jsonbody import too_deep


def protocol_of(protocol: str, kind: str) -> str:
    """The error shape and the answer layout: mcp, chat, responses, messages or http."""
    if protocol == "mcp":
        return "mcp"
    if protocol == "llm":
        return {"responses": "responses", "messages": "messages"}.get(kind, "chat")
    return "http"


def framing_of(content_type: str) -> str:
    ct = content_type.lower()
    if "text/event-stream" in ct:
        return "sse"
    if "json" in ct:
        return "json"
    return "text"


class AnswerScanner:
    def __init__(self, scan: Scan, *, protocol: str, framing: str, jsonrpc_id: Any, window: int,
                 max_bytes: int, pause_cut: Callable[[str], int] | None = None) -> None:
        self.scan = scan
        self.protocol = protocol
        self.framing = framing
        self.jsonrpc_id = jsonrpc_id
        self.max_bytes = max_bytes
        self.stream = (StreamScanner(scan, protocol, jsonrpc_id, window=window, max_event_bytes=max_bytes,
                                     pause_cut=pause_cut) if framing == "sse" else None)
        self._buf = bytearray()
        self.ended = False
        self.refused: refusals.Refused | None = None

    def feed(self, chunk: bytes, end: bool) -> bytes:
        """What goes out for this chunk (``b""`` while a whole answer is being collected)."""
        if self.ended:
            return b""
        if self.stream is not None:
            out = self.stream.feed(chunk, end)
            if self.stream.ended:
                self.refused, self.ended = self.stream.refused, True
            return out
        try:
            self._buf += chunk
            if len(self._buf) > self.max_bytes:
                raise refusals.too_large(self.max_bytes)
            if not end:
                return b""
            return self._whole(bytes(self._buf))
        except refusals.Refused as exc:
            self.refused, self.ended = exc, True
            self._buf.clear()
            if self.framing == "json" or self.protocol != "http":
                return refusals.json_body(exc, self.protocol, self.jsonrpc_id)
            return exc.message.encode()

    @property
    def holding(self) -> bool:
        """Whether a stream's text is held back (a pause could release some of it)."""
        return self.stream is not None and not self.ended and self.stream.holding

    def pause(self) -> bytes:
        """The upstream paused: what the stream may release now (``b""``: nothing)."""
        if self.stream is None or self.ended:
            return b""
        out = self.stream.pause()
        if self.stream.ended:
            self.refused, self.ended = self.stream.refused, True
        return out

    def _whole(self, body: bytes) -> bytes:
        if not body.strip():
            return body
        if self.framing == "text":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise refusals.unreadable("not UTF-8 text") from None
            new_text = self.scan.text(text)
            return body if new_text == text else new_text.encode()
        try:
            doc = jsonfast.loads(body)
        except (ValueError, RecursionError):
            raise refusals.unreadable("not JSON") from None
        if too_deep(doc):
            raise refusals.unreadable("nested too deep")
        if self.protocol == "mcp":
            new, changed = self.scan.tracked(self.scan.mcp_message, doc)
        elif self.protocol == "http":
            new, changed = self.scan.tracked(self.scan.document, doc)
        else:
            new, changed = self.scan.tracked(self.scan.llm_document, doc)
        return encode(new) if changed else body
