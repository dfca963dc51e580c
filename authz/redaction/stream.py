"""Streamed answers scanned as they flow, with a bounded hold-back window.

A model streams its text in deltas; a card may arrive as ``4539 14``, ``88 0343``, ``64``, ``67``.
Each text channel (a choice's content, a tool call's arguments, a content block) keeps the last
``window`` characters it has not sent yet. When a delta arrives, the channel sends the longest
prefix that no finding (or placeholder to restore) straddles: it checks a cut by scanning the
held text whole and in two parts with a throwaway redactor; when the two disagree a value
straddles the cut, and the cut moves back. The held tail goes out when its channel closes (the
finish chunk, ``content_block_stop``, a ``*.done`` event) or the stream ends, in the event that
closes it or in a delta event made for it just before. A value longer than the window, split
across deltas, may reach the client in parts: size the window above the longest value you guard.
When the upstream pauses (``pause``, at the flush deadline), each channel sends what
``pause.PauseCut`` allows of its held text, in a delta event made for it.

Events we do not change go out byte for byte. A finding whose action is ``block``, an event that
is not JSON or one larger than the limit ends the stream with an error event in the protocol's
shape (``refusals.sse_event``); nothing of the upstream's stream follows it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from authz import jsonfast
from authz.redaction import refusals, sse
from authz.redaction.responses import Scan, encode
from authz.request.jsonbody import too_deep

Synth = Callable[[str], tuple[str | None, dict[str, Any]]]   # held text -> (event name, payload)


class Channel:
    def __init__(self, scan: Scan, window: int, *, json_string: bool,
                 pause_cut: Callable[[str], int] | None = None) -> None:
        self.scan = scan
        self.window = window
        self.json_string = json_string
        self.pause_cut = pause_cut
        self.held = ""
        self.synth: Synth | None = None

    def _probe(self, text: str) -> str:
        red = self.scan.probe_redactor()
        out = red.text(text) if red is not None else text
        restorer = self.scan.restorer
        if restorer:
            count = restorer.count
            out = restorer.text(out, json_string=self.json_string)
            restorer.count = count
        return out

    def _safe(self, cut: int) -> bool:
        whole = self.held
        return self._probe(whole) == self._probe(whole[:cut]) + self._probe(whole[cut:])

    def push(self, text: str) -> str:
        """Take a delta; return the text that may go out now (scanned)."""
        self.held += text
        n = len(self.held)
        if n <= self.window:
            return ""
        cut = n - self.window
        lowest = max(0, cut - self.window)
        while cut > lowest and not self._safe(cut):
            cut -= 8
        if cut <= lowest:
            if n <= 3 * self.window:
                return ""  # something straddles: keep holding
            cut = n - self.window  # a value longer than the window: bounded memory wins
        out, self.held = self.held[:cut], self.held[cut:]
        return self.scan.text(out, json_string=self.json_string)

    def flush(self) -> str:
        out, self.held = self.held, ""
        return self.scan.text(out, json_string=self.json_string) if out else ""

    def pause(self) -> str:
        """The upstream paused: the part of the held text the pause rule lets out (scanned)."""
        if not self.held or self.pause_cut is None:
            return ""
        cut = self.pause_cut(self.held)
        if cut <= 0 or (cut < len(self.held) and not self._safe(cut)):
            return ""
        out, self.held = self.held[:cut], self.held[cut:]
        return self.scan.text(out, json_string=self.json_string)


class StreamScanner:
    """One streamed answer: feed it the body as it arrives; it returns what may go out."""

    def __init__(self, scan: Scan, protocol: str, jsonrpc_id: Any, *, window: int, max_event_bytes: int,
                 pause_cut: Callable[[str], int] | None = None) -> None:
        self.scan = scan
        self.pause_cut = pause_cut
        self.protocol = protocol      # mcp | chat | responses | messages | http
        self.jsonrpc_id = jsonrpc_id
        self.window = window
        self.reader = sse.Reader(max_event_bytes)
        self.channels: dict[tuple[Any, ...], Channel] = {}
        self.ended = False
        self.refused: refusals.Refused | None = None

    def feed(self, chunk: bytes, end: bool) -> bytes:
        if self.ended:
            return b""
        out: list[str] = []
        try:
            for ev in self.reader.feed(chunk, end):
                out.append(self._event(ev))
            if end:
                out.extend(self._flush(lambda key: True))
        except refusals.Refused as exc:
            self.ended, self.refused = True, exc
            return "".join(out).encode() + refusals.sse_event(exc, self.protocol, self.jsonrpc_id,
                                                                 self.reader.eol)
        return "".join(out).encode()

    @property
    def holding(self) -> bool:
        """Whether any channel holds text back (a pause could release some)."""
        return any(ch.held for ch in self.channels.values())

    def pause(self) -> bytes:
        """The upstream paused: what each channel may release now, as delta events made for it."""
        if self.ended:
            return b""
        out: list[str] = []
        try:
            for ch in self.channels.values():
                text = ch.pause()
                if text and ch.synth is not None:
                    name, payload = ch.synth(text)
                    out.append(sse.render(name, encode(payload).decode(), self.reader.eol))
        except refusals.Refused as exc:
            self.ended, self.refused = True, exc
            return "".join(out).encode() + refusals.sse_event(exc, self.protocol, self.jsonrpc_id,
                                                                 self.reader.eol)
        return "".join(out).encode()

    # --- channels ---------------------------------------------------------------------------------

    def _channel(self, key: tuple[Any, ...], *, json_string: bool = False) -> Channel:
        ch = self.channels.get(key)
        if ch is None:
            ch = self.channels[key] = Channel(self.scan, self.window, json_string=json_string,
                                              pause_cut=self.pause_cut)
        return ch

    def _flush(self, which: Callable[[tuple[Any, ...]], bool]) -> list[str]:
        """Held text of the channels ``which`` selects, as delta events made for it."""
        out = []
        for key in [k for k in self.channels if which(k)]:
            ch = self.channels.pop(key)
            text = ch.flush()
            if text and ch.synth is not None:
                name, payload = ch.synth(text)
                out.append(sse.render(name, encode(payload).decode(), self.reader.eol))
        return out

    # --- events -----------------------------------------------------------------------------------

    def _event(self, ev: sse.Event) -> str:
        if ev.data is None or not ev.data.strip():
            return ev.raw  # comments, retry, keep-alives: no message
        if self.protocol != "mcp" and ev.data.strip() == "[DONE]":
            return "".join(self._flush(lambda key: True)) + ev.raw
        try:
            msg = jsonfast.loads(ev.data)
        except (ValueError, RecursionError):
            if self.protocol != "http":
                raise refusals.unreadable("an event is not JSON") from None
            text = self.scan.text(ev.data)  # a plain HTTP stream may carry any text
            return ev.raw if text == ev.data else ev.with_data(text.replace("\n", "\ndata: "))
        if too_deep(msg):
            raise refusals.unreadable("an event nests too deep")
        if self.protocol == "http":
            new, changed = self.scan.tracked(self.scan.document, msg)
            return ev.with_data(encode(new).decode()) if changed else ev.raw
        if self.protocol == "mcp":
            new, changed = self.scan.tracked(self.scan.mcp_message, msg)
            return ev.with_data(encode(new).decode()) if changed else ev.raw
        if not isinstance(msg, dict):
            raise refusals.unreadable("an event is not a JSON object")
        handler = {"messages": self._anthropic, "responses": self._responses}.get(self.protocol, self._chat)
        before, changed = handler(ev.name, msg)
        return "".join(before) + (ev.with_data(encode(msg).decode()) if changed else ev.raw)

    def _whole(self, msg: dict[str, Any], key: str, *, llm: bool = False) -> bool:
        """Scan ``msg[key]`` whole, uncounted (the client has had or will get it as deltas)."""
        if key not in msg:
            return False
        with self.scan.uncounted():
            value = msg[key]
            if isinstance(value, str):
                new: Any = self.scan.text(value, json_string=key in ("arguments", "partial_json"))
                changed = new != value
            else:
                new, changed = self.scan.tracked(self.scan.llm_document if llm else self.scan.document, value)
        msg[key] = new
        return bool(changed)

    # OpenAI chat/completions and completions ------------------------------------------------------

    def _chat(self, name: str | None, msg: dict[str, Any]) -> tuple[list[str], bool]:
        changed = self._whole(msg, "error")
        choices = msg.get("choices")
        if not isinstance(choices, list):
            return [], changed
        top = {k: v for k, v in msg.items() if k != "choices"}
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            idx = choice.get("index", 0)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for field in ("content", "refusal", "reasoning_content"):
                    if isinstance(delta.get(field), str) and delta[field]:
                        ch = self._channel((idx, field))
                        ch.synth = _chat_synth(top, idx, {field: None})
                        delta[field] = ch.push(delta[field])
                        changed = True
                for tc in delta.get("tool_calls") or ():
                    fn = tc.get("function") if isinstance(tc, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str) and fn["arguments"]:
                        t = tc.get("index", 0)
                        ch = self._channel((idx, "tool", t), json_string=True)
                        ch.synth = _chat_synth(top, idx, {"tool_calls": [{"index": t, "function": {
                            "arguments": None}}]})
                        fn["arguments"] = ch.push(fn["arguments"])
                        changed = True
            if isinstance(choice.get("text"), str) and choice["text"]:  # legacy completions
                ch = self._channel((idx, "text"))
                ch.synth = _completion_synth(top, idx)
                choice["text"] = ch.push(choice["text"])
                changed = True
            changed = self._whole(choice, "message") or changed
            if choice.get("finish_reason") is not None:
                changed = self._close_choice(idx, choice) or changed
        return [], changed

    def _close_choice(self, idx: Any, choice: dict[str, Any]) -> bool:
        """A finished choice: its held text goes out in this very chunk, after its own delta."""
        changed = False
        for key in [k for k in self.channels if k[0] == idx]:
            rest = self.channels.pop(key).flush()
            if not rest:
                continue
            changed = True
            if key[1] == "text":
                choice["text"] = choice.get("text", "") + rest
                continue
            delta = choice.setdefault("delta", {})
            if key[1] == "tool":
                calls = delta.setdefault("tool_calls", [])
                call = next((c for c in calls if isinstance(c, dict) and c.get("index", 0) == key[2]), None)
                if call is None:
                    calls.append({"index": key[2], "function": {"arguments": rest}})
                else:
                    fn = call.setdefault("function", {})
                    fn["arguments"] = fn.get("arguments", "") + rest
            else:
                delta[key[1]] = (delta.get(key[1]) or "") + rest
        return changed

    # Anthropic messages --------------------------------------------------------------------------

    def _anthropic(self, name: str | None, msg: dict[str, Any]) -> tuple[list[str], bool]:
        kind = msg.get("type")
        if kind == "content_block_delta":
            delta = msg.get("delta")
            idx = msg.get("index", 0)
            if isinstance(delta, dict):
                for field in ("text", "partial_json", "thinking"):
                    if isinstance(delta.get(field), str) and delta[field]:
                        ch = self._channel((idx, field), json_string=field == "partial_json")
                        template = {**msg, "delta": {"type": delta.get("type"), field: None}}
                        ch.synth = _fill(name, template, ("delta", field))
                        delta[field] = ch.push(delta[field])
                        return [], True
            return [], False
        if kind == "content_block_stop":
            return self._flush(lambda key: key[0] == msg.get("index", 0)), False
        before = self._flush(lambda key: True) if kind in ("message_delta", "message_stop") else []
        changed = self._whole(msg, "content_block") | self._whole(msg, "error")
        if isinstance(msg.get("message"), dict):
            changed = self._whole(msg, "message", llm=True) or changed
        return before, changed

    # OpenAI Responses API ------------------------------------------------------------------------

    _RESPONSES_DELTAS = {
        "response.output_text.delta": "text", "response.refusal.delta": "refusal",
        "response.function_call_arguments.delta": "arguments",
        "response.reasoning_summary_text.delta": "summary", "response.reasoning_text.delta": "reasoning",
    }

    def _responses(self, name: str | None, msg: dict[str, Any]) -> tuple[list[str], bool]:
        kind = msg.get("type")
        field = None
        if isinstance(kind, str) and kind.endswith(".delta"):  # one we do not know is guarded too
            field = self._RESPONSES_DELTAS.get(kind, kind)
        item = msg.get("item_id")
        if field is not None and isinstance(msg.get("delta"), str):
            key = (item, msg.get("output_index"), msg.get("content_index"), msg.get("summary_index"), field)
            ch = self._channel(key, json_string="arguments" in field)
            ch.synth = _fill(name, {**msg, "delta": None}, ("delta",))
            msg["delta"] = ch.push(msg["delta"])
            return [], True
        before: list[str] = []
        if isinstance(kind, str) and kind.endswith(".done") and item is not None:
            before = self._flush(lambda key: key[0] == item)
        elif kind in ("response.completed", "response.failed", "response.incomplete", "error"):
            before = self._flush(lambda key: True)
        changed = False
        for name_ in ("text", "refusal", "arguments", "part", "item", "error", "message"):
            changed = self._whole(msg, name_) or changed
        if isinstance(msg.get("response"), dict):
            changed = self._whole(msg, "response", llm=True) or changed
        return before, changed


def _chat_synth(top: dict[str, Any], idx: Any, delta: dict[str, Any]) -> Synth:
    def synth(text: str) -> tuple[str | None, dict[str, Any]]:
        d = copy.deepcopy(delta)
        if "tool_calls" in d:
            d["tool_calls"][0]["function"]["arguments"] = text
        else:
            d = {k: text for k in d}
        return None, {**top, "choices": [{"index": idx, "delta": d, "finish_reason": None}]}
    return synth


def _completion_synth(top: dict[str, Any], idx: Any) -> Synth:
    def synth(text: str) -> tuple[str | None, dict[str, Any]]:
        return None, {**top, "choices": [{"index": idx, "text": text, "finish_reason": None}]}
    return synth


def _fill(name: str | None, template: dict[str, Any], path: tuple[str, ...]) -> Synth:
    def synth(text: str) -> tuple[str | None, dict[str, Any]]:
        out = copy.deepcopy(template)
        at = out
        for key in path[:-1]:
            at = at[key]
        at[path[-1]] = text
        return name, out
    return synth
