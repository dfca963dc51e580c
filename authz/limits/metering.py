"""Reading what an LLM call really used from the upstream's answer: JSON or an SSE stream.

Understands OpenAI chat/completions (``usage`` in the body, or in the final stream chunk),
the OpenAI Responses API (``response.completed`` event), embeddings, and Anthropic messages
(``message_start`` carries input usage, ``message_delta`` the cumulative output).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from authz import jsonfast

MAX_EVENT_BYTES = 1024 * 1024  # one SSE event larger than this is skipped, not buffered forever
# A count above this is charged as this: far beyond any real answer, small enough that a cost in
# micro-units stays exact as a float (metrics) and inside Redis's 64-bit counters. Unclamped, a
# usage of 10**4000 (valid JSON) made settlement raise and left the budget counter at that value.
MAX_TOKENS = 10**12


@dataclasses.dataclass(slots=True)
class Usage:
    input_tokens: int = 0     # all prompt tokens, cached ones included
    output_tokens: int = 0
    cached_tokens: int = 0    # the part of input_tokens served from a prompt cache
    seen: bool = False

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_dict(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cached_tokens": self.cached_tokens, "total_tokens": self.total}


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return min(value, MAX_TOKENS)
    return 0


def _usage_objects(obj: Any) -> list[dict[str, Any]]:
    if not isinstance(obj, dict):
        return []
    found = []
    for holder in (obj, obj.get("response"), obj.get("message")):
        if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
            found.append(holder["usage"])
    return found


def merge_usage(usage: Usage, u: dict[str, Any]) -> None:
    """Fold one ``usage`` object in. Fields only grow: streamed events repeat or accumulate."""
    if "prompt_tokens" in u or "completion_tokens" in u:  # OpenAI chat/completions, embeddings
        inp, out = _int(u.get("prompt_tokens")), _int(u.get("completion_tokens"))
        details = u.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    elif "cache_read_input_tokens" in u or "cache_creation_input_tokens" in u or (
            "input_tokens" in u and "input_tokens_details" not in u and "total_tokens" not in u):
        # Anthropic: input_tokens excludes cache reads and cache writes.
        cached = _int(u.get("cache_read_input_tokens"))
        inp = _int(u.get("input_tokens")) + cached + _int(u.get("cache_creation_input_tokens"))
        out = _int(u.get("output_tokens"))
    else:  # OpenAI Responses API
        inp, out = _int(u.get("input_tokens")), _int(u.get("output_tokens"))
        details = u.get("input_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    usage.input_tokens = max(usage.input_tokens, inp)
    usage.output_tokens = max(usage.output_tokens, out)
    usage.cached_tokens = max(usage.cached_tokens, min(cached, usage.input_tokens))
    usage.seen = True


_TEXT_KEYS = ("content", "text", "delta", "partial_json", "arguments", "refusal")
_HOLDERS = ("choices", "delta", "tool_calls", "function", "content_block", "item", "part")


def _text_bytes(obj: Any, depth: int = 0) -> int:
    """Bytes of generated text in one streamed event: OpenAI ``choices[].delta.content`` (and
    tool-call arguments), ``choices[].text``, the Responses API's ``delta``, Anthropic's
    ``delta.text`` / ``partial_json``."""
    if depth > 5:
        return 0
    if isinstance(obj, list):
        return sum(_text_bytes(v, depth + 1) for v in obj)
    if not isinstance(obj, dict):
        return 0
    n = 0
    for key in _TEXT_KEYS:
        v = obj.get(key)
        if isinstance(v, str):
            n += len(v.encode())
        elif isinstance(v, dict | list):
            n += _text_bytes(v, depth + 1)
    for key in _HOLDERS:
        v = obj.get(key)
        if key not in _TEXT_KEYS and isinstance(v, dict | list):
            n += _text_bytes(v, depth + 1)
    return n


class UsageMeter:
    """Feed it the response as it streams by; it keeps at most one partial SSE event.
    ``streamed_bytes`` counts the generated text that went by (for a stream cut short, which
    never reports its usage)."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.streamed_bytes = 0
        self._pending = b""
        self._skipping = False

    def feed_json(self, body: bytes) -> None:
        try:
            obj = jsonfast.loads(body)
        except (ValueError, RecursionError):
            return
        for u in _usage_objects(obj):
            merge_usage(self.usage, u)

    def feed_sse(self, chunk: bytes, *, end: bool = False) -> None:
        data = self._pending + chunk
        data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        self._pending = b"" if end else events.pop()
        if len(self._pending) > MAX_EVENT_BYTES:
            self._pending, self._skipping = b"", True
        for event in events:
            if self._skipping:  # the tail of an oversized event
                self._skipping = False
                continue
            self._event(event)

    def _event(self, event: bytes) -> None:
        payload = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n")
                             if line.startswith(b"data:"))
        if not payload or payload == b"[DONE]":
            return
        try:
            obj = jsonfast.loads(payload)
        except (ValueError, RecursionError):
            return
        self.streamed_bytes += _text_bytes(obj)
        for u in _usage_objects(obj):
            merge_usage(self.usage, u)
