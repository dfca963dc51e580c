"""Scanning answers on their way back: what in an MCP or LLM answer is scanned, and how.

``Scan`` is one exchange's answer-side work: the response rule's redactor (when a response rule
applies), then the restorer (when the request rule restores placeholders); a finding whose action
is ``block`` raises ``Refused``. It counts findings only for text that reaches the client once:
whole-text copies in a stream (a ``done`` event repeating the deltas) are scanned uncounted.

What is scanned:
- MCP: every string of a JSON-RPC message's ``result`` (tool text content, ``structuredContent``,
  embedded resources, ``resources/read`` contents, ``prompts/get`` messages) and its ``error``
  (message and data); base64 ``blob`` and image/audio ``data`` are passed as they are.
- LLM JSON: ``choices`` (chat message content, refusals, tool-call arguments; completion text),
  ``output`` (Responses API items), ``content`` (Anthropic blocks), and ``error``.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from authz.jsontext import dumps_utf8
from authz.redaction import refusals
from authz.redaction.redactor import Redactor
from authz.redaction.restore import Restorer

LLM_FIELDS = ("choices", "output", "content", "output_text", "error")
JSON_STRING_KEYS = frozenset({"arguments", "partial_json"})  # text holding JSON: restore escaped


def encode(value: Any) -> bytes:
    """Compact JSON, UTF-8 as itself; orjson when it can (an integer past 64 bits or a lone
    surrogate goes through the standard encoder)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return dumps_utf8(value)


class _Binary:
    """A base64 value kept out of the scan (and put back as it was)."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value


class Scan:
    def __init__(self, redactor: Redactor | None, restorer: Restorer,
                 action_for: Callable[[str], str], probe: Callable[[], Redactor | None]) -> None:
        self.redactor = redactor
        self.restorer = restorer
        self.action_for = action_for
        self.probe_redactor = probe  # a throwaway redactor, for the stream hold-back's probes

    @property
    def active(self) -> bool:
        return self.redactor is not None or bool(self.restorer)

    def found(self) -> dict[str, int]:
        return self.redactor.summary() if self.redactor is not None else {}

    def _check_blocked(self) -> None:
        if self.redactor is None:
            return
        bad = sorted(t for t in self.redactor.found if self.action_for(t) == "block")
        if bad:
            raise refusals.blocked(bad)

    def texts(self, values: list[str], *, json_string: bool = False) -> list[str]:
        if self.redactor is not None:
            values = self.redactor.texts(values)
            self._check_blocked()
        if self.restorer:
            values = [self.restorer.text(v, json_string=json_string) for v in values]
        return values

    def text(self, value: str, *, json_string: bool = False) -> str:
        return self.texts([value], json_string=json_string)[0]

    def document(self, value: Any) -> Any:
        """A JSON value with every string scanned (binary fields kept as they are). ``value`` is
        the scanner's own (freshly parsed): its binary fields are wrapped in place."""
        hidden = _hide_binary(value)
        if self.redactor is not None:
            value = self.redactor.json_value(value)
            self._check_blocked()
        if self.restorer:
            value = _restore(value, self.restorer, None)
        if hidden:
            _unhide(value)
        return value

    def tracked(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, bool]:
        """``fn(*args)`` and whether it replaced anything (documents change in place, so an
        unchanged one can go out as the bytes it came in)."""
        red = self.redactor
        before = red.changed if red is not None else False
        if red is not None:
            red.changed = False
        count = self.restorer.count
        try:
            out = fn(*args)
            return out, bool((red is not None and red.changed) or self.restorer.count != count)
        finally:
            if red is not None:
                red.changed = red.changed or before

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Findings in here are not counted (text the client receives twice in a stream)."""
        red = self.redactor
        saved = collections.Counter(red.found) if red is not None else None
        restored = self.restorer.count
        try:
            yield
        finally:
            if red is not None and saved is not None:
                red.found = saved  # a block inside has raised already
            self.restorer.count = restored

    def mcp_message(self, msg: Any) -> Any:
        """One JSON-RPC message from an MCP server (changed in place)."""
        if not isinstance(msg, dict):
            raise refusals.unreadable("not a JSON-RPC message")
        for key in ("result", "error", "params"):  # params: server requests and notifications
            if key in msg:
                msg[key] = self.document(msg[key])
        return msg

    def llm_document(self, doc: Any) -> Any:
        """A whole LLM answer (JSON; changed in place)."""
        if not isinstance(doc, dict):
            raise refusals.unreadable("not a JSON object")
        for key in LLM_FIELDS:
            if key in doc:
                doc[key] = self.document(doc[key])
        return doc


def _hide_binary(value: Any) -> int:
    """Wrap base64 fields in place so no scan sees them; how many were wrapped."""
    n = 0
    if isinstance(value, list):
        for v in value:
            n += _hide_binary(v)
    elif isinstance(value, dict):
        binary_data = value.get("type") in ("image", "audio")
        for k, v in value.items():
            if isinstance(v, str):
                if k == "blob" or (binary_data and k == "data"):
                    value[k] = _Binary(v)
                    n += 1
            else:
                n += _hide_binary(v)
    return n


def _unhide(value: Any) -> None:
    if isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, _Binary):
                value[i] = v.value
            else:
                _unhide(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, _Binary):
                value[k] = v.value
            else:
                _unhide(v)


def _restore(value: Any, restorer: Restorer, key: str | None) -> Any:
    if isinstance(value, str):
        return restorer.text(value, json_string=key in JSON_STRING_KEYS)
    if isinstance(value, list):
        return [_restore(v, restorer, key) for v in value]
    if isinstance(value, dict):
        return {k: _restore(v, restorer, k) for k, v in value.items()}
    return value
