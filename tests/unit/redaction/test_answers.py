"""The answer side of redaction, without Envoy: response rules, streams with values split across
deltas (the hold-back window), restoring placeholders, refusals in the protocol's shape."""

import json

import pytest

from authz.config import parse_config
from authz.errors import ConfigError, Deny
from authz.model import Context, Exchange, Principal, Request
from authz.redaction import refusals, sse
from authz.redaction.restore import PlaceholderStore
from authz.redaction.stage import RedactionStage
from authz.store import MemoryStore

CONFIG = """redaction:
  enabled: true
  dictionaries: [{name: customer, terms: [Acme Corp, Globex]}]
  responses: {window_chars: 32}
  rules:
    - id: mcp-results
      direction: response
      match: {paths: ["/mcp"]}
      actions: {aws_key: block, default: mask}
    - id: llm
      direction: both
      restore: true
      match: {paths: ["/v1/*"]}
      actions: {customer: placeholder, aws_key: block, default: mask}
"""

OSCAR = Principal(subject="oscar", roles=frozenset({"accounting"}))
CARD = "4539 1488 0343 6467"
AWS = "AKIAIOSFODNN7EXAMPLE"


def stage(text: str = CONFIG) -> RedactionStage:
    return RedactionStage(parse_config(text, env={}).redaction, MemoryStore(), placeholders=PlaceholderStore())


async def check(s: RedactionStage, path: str, body: dict) -> Context:
    raw = json.dumps(body).encode()
    ctx = Context(request=Request(id="r", method="POST", scheme="http", host="h", path=path,
                                  headers={"content-type": "application/json"}, body=raw), principal=OSCAR)
    await s.on_request(ctx)
    return ctx


async def answer(s: RedactionStage, ctx: Context, chunks: list[bytes], content_type: str) -> bytes:
    ex = Exchange(request=ctx.request, handoff=ctx.handoff, response_status=200,
                  response_headers={"content-type": content_type})
    await s.on_response_headers(ex)
    out = b""
    for i, chunk in enumerate(chunks):
        ex.mutations.body = None
        ex.response_chunk, ex.response_end = chunk, i == len(chunks) - 1
        if ex.body_mode("response") in ("buffered", "partial"):
            ex.response_body += chunk
        await s.on_response_body(ex)
        out += ex.mutations.body if ex.mutations.body is not None else chunk
    await s.on_complete(ex)
    ctx.facts["answer"] = ex.facts.get("redaction")
    ctx.facts["status"] = ex.mutations.set_headers.get(":status")
    return out


def chat_stream(deltas: list[str]) -> list[bytes]:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [{**base, "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": None}]} for d in deltas]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


def chat_text(body: bytes) -> tuple[str, list[dict]]:
    text, errors = "", []
    for ev in sse.Reader(1 << 20).feed(body, True):
        if ev.data == "[DONE]" or ev.data is None:
            continue
        msg = json.loads(ev.data)
        if "error" in msg:
            errors.append(msg["error"])
        for c in msg.get("choices", []):
            text += c.get("delta", {}).get("content") or ""
    return text, errors


LLM_REQUEST = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "About Acme Corp?"}]}


async def test_a_card_split_across_four_deltas_never_goes_out_raw():
    s = stage()
    ctx = await check(s, "/v1/chat/completions", LLM_REQUEST)
    assert ctx.handoff.response_body == "duplex" and ctx.handoff.response_rule == "llm"
    deltas = ["Your card is 4539 ", "1488 03", "43 64", "67, thanks. ", "More text " * 8]
    out = await answer(s, ctx, chat_stream(deltas), "text/event-stream")
    text, errors = chat_text(out)
    assert not errors
    assert text == "Your card is **** **** **** 6467, thanks. " + "More text " * 8
    assert b"4539" not in out and b"0343" not in out
    assert ctx.facts["answer"]["found"] == {"card": 1}


async def test_a_placeholder_split_across_two_deltas_is_restored():
    s = stage()
    ctx = await check(s, "/v1/chat/completions", LLM_REQUEST)
    assert "Acme Corp" not in ctx.outgoing.encode().decode()
    assert ctx.handoff.restore_key and "Acme" not in json.dumps(ctx.facts)
    out = await answer(s, ctx, chat_stream(["[CUSTO", "MER_1] is a fine customer."]), "text/event-stream")
    text, _ = chat_text(out)
    assert text == "Acme Corp is a fine customer."
    assert ctx.facts["answer"]["restored"] == 1
    # The mapping is used once: it is gone from the store.
    assert len(s.answers.placeholders) == 0


async def test_a_blocked_stream_ends_in_an_error_event():
    s = stage()
    ctx = await check(s, "/v1/chat/completions", LLM_REQUEST)
    out = await answer(s, ctx, chat_stream(["The key is AKIA", "IOSFODNN7EXAMPLE ok", " and more" * 5]),
                       "text/event-stream")
    text, errors = chat_text(out)
    assert AWS not in out.decode() and "AKIA" not in text
    assert errors and errors[0]["code"] == "redaction.response_blocked"
    assert out.count(b"[DONE]") == 0  # nothing of the upstream follows the error
    assert ctx.facts["answer"]["action"] == "blocked"


async def test_mcp_json_answer_masked_and_blocked_as_jsonrpc_error():
    s = stage()
    ctx = await check(s, "/mcp", {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                  "params": {"name": "crm", "arguments": {}}})
    result = {"jsonrpc": "2.0", "id": 7, "result": {
        "content": [{"type": "text", "text": f"card {CARD} mail a@b.example"},
                    {"type": "image", "data": "QUtJQUlPU0ZPRE5ON0VYQU1QTEU=", "mimeType": "image/png"}],
        "structuredContent": {"card": CARD}}}
    body = json.dumps(result).encode()
    out = json.loads(await answer(s, ctx, [body[:20], body[20:]], "application/json"))
    assert CARD not in json.dumps(out) and out["result"]["structuredContent"]["card"].endswith("6467")
    assert out["result"]["content"][1]["data"] == "QUtJQUlPU0ZPRE5ON0VYQU1QTEU="
    result["result"]["content"][0]["text"] += " " + AWS
    out = json.loads(await answer(s, ctx, [json.dumps(result).encode()], "application/json"))
    assert out["id"] == 7 and out["error"]["data"]["entity_types"] == ["aws_key"]
    assert AWS not in json.dumps(out)


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
async def test_mcp_sse_message_over_several_data_lines(eol):
    s = stage()
    ctx = await check(s, "/mcp", {"jsonrpc": "2.0", "id": "a", "method": "resources/read",
                                  "params": {"uri": "crm://1"}})
    msg = {"jsonrpc": "2.0", "id": "a", "result": {"contents": [{"uri": "crm://1", "text": f"card {CARD}"}]}}
    text = json.dumps(msg, indent=1)
    event = f"event: message{eol}" + eol.join("data: " + line for line in text.split("\n")) + eol + eol
    raw = event.encode()
    out = await answer(s, ctx, [raw[:30], raw[30:]], "text/event-stream")
    assert CARD not in out.decode()
    (ev,) = sse.Reader(1 << 20).feed(out, True)
    assert json.loads(ev.data)["result"]["contents"][0]["text"].endswith("6467")


async def test_bad_answers_fail_closed_in_the_protocol_shape():
    s = stage()
    ctx = await check(s, "/mcp", {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "x"}})
    out = json.loads(await answer(s, ctx, [b"{not json"], "application/json"))
    assert out["error"]["data"]["reason"] == "redaction.response_unreadable" and out["id"] == 3
    out = await answer(s, ctx, [b"event: message\ndata: {oops\n\n"], "text/event-stream")
    assert json.loads(sse.Reader(1 << 20).feed(out, True)[0].data)["error"]["code"] == -32603
    big = json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"x": "a" * (2 << 20)}}).encode()
    out = json.loads(await answer(s, ctx, [big[i:i + 65536] for i in range(0, len(big), 65536)],
                                  "application/json"))
    assert out["error"]["data"]["reason"] == "redaction.response_too_large"
    # A non-streamed LLM answer is refused with a status: Envoy holds the headers for it.
    ctx = await check(s, "/v1/chat/completions", {**LLM_REQUEST, "stream": False})
    assert ctx.handoff.response_body == "partial"
    out = json.loads(await answer(s, ctx, [b"<html>oops"], "application/json"))
    assert out["error"]["code"] == "redaction.response_unreadable" and ctx.facts["status"] == "502"
    # Larger than Envoy's buffer: the first buffer-full arrives without the end, headers held.
    with pytest.raises(Deny) as info:
        await answer(s, ctx, [b'{"choices": [', b"]}"], "application/json")
    assert info.value.status == 502 and json.loads(info.value.body)["error"]["code"] == "redaction.response_too_large"


async def test_anthropic_and_responses_streams():
    s = stage()
    ctx = await check(s, "/v1/messages", {**LLM_REQUEST, "max_tokens": 10})
    events = [("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": d}})
               for d in ["[CUSTOMER", "_1] pays by 4539 14", "88 0343 6467."]]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_stop", {"type": "message_stop"})]
    out = await answer(s, ctx, [sse.render(n, json.dumps(e)).encode() for n, e in events], "text/event-stream")
    text = "".join(json.loads(ev.data)["delta"]["text"] for ev in sse.Reader(1 << 20).feed(out, True)
                   if ev.name == "content_block_delta")
    assert text == "Acme Corp pays by **** **** **** 6467."

    ctx = await check(s, "/v1/responses", {"model": "m", "stream": True, "input": "About Acme Corp"})
    at = {"item_id": "i", "output_index": 0, "content_index": 0}
    events = [("response.output_text.delta", {"type": "response.output_text.delta", **at, "delta": d})
              for d in ["[CUST", "OMER_1] card 4539 1488 ", "0343 6467"]]
    events.append(("response.output_text.done", {"type": "response.output_text.done", **at,
                                                  "text": "[CUSTOMER_1] card " + CARD}))
    out = await answer(s, ctx, [sse.render(n, json.dumps(e)).encode() for n, e in events], "text/event-stream")
    evs = sse.Reader(1 << 20).feed(out, True)
    text = "".join(json.loads(ev.data)["delta"] for ev in evs if ev.name == "response.output_text.delta")
    done = next(json.loads(ev.data)["text"] for ev in evs if ev.name == "response.output_text.done")
    assert text == done == "Acme Corp card **** **** **** 6467"
    assert ctx.facts["answer"]["found"] == {"card": 1}


def test_restore_needs_a_placeholder_request_rule():
    bad = CONFIG.replace("actions: {customer: placeholder, aws_key: block, default: mask}",
                         "actions: {default: mask}")
    with pytest.raises(ConfigError, match="restore needs"):
        parse_config(bad, env={})


# --- the pieces ------------------------------------------------------------------------------------

def test_the_handoff_carries_only_the_rule_and_a_random_key():
    from authz.envoy import handoff
    from authz.model import Handoff

    h = Handoff(response_body="streamed", response_rule="llm", restore_key="k3y")
    text = handoff.encode(h)[handoff.FIELD]
    back = handoff.decode(text)
    assert (back.response_rule, back.restore_key, back.response_body) == ("llm", "k3y", "streamed")


async def test_the_mapping_never_travels_and_is_lost_with_the_process():
    s = stage()
    ctx = await check(s, "/v1/chat/completions", LLM_REQUEST)
    from authz.envoy import handoff

    assert "Acme" not in handoff.encode(ctx.handoff)[handoff.FIELD]
    # A restart between Check and the answer: a new store, the key finds nothing; the user reads
    # the placeholder as the model wrote it, and nothing fails.
    restarted = RedactionStage(s.cfg, MemoryStore(), placeholders=PlaceholderStore())
    out = await answer(restarted, ctx, chat_stream(["[CUSTOMER_1] is fine. " * 4]), "text/event-stream")
    assert chat_text(out)[0] == "[CUSTOMER_1] is fine. " * 4


def test_placeholder_store_takes_once_and_expires():
    now = [0.0]
    store = PlaceholderStore(ttl_seconds=10, max_entries=2, clock=lambda: now[0])
    key = store.put({"[CUSTOMER_1]": ("customer", "Acme Corp")})
    assert store.take(key) == {"[CUSTOMER_1]": ("customer", "Acme Corp")}
    assert store.take(key) == {}
    key = store.put({"[CUSTOMER_1]": ("customer", "Acme Corp")})
    now[0] = 11
    assert store.take(key) == {}
    keys = [store.put({}) for _ in range(3)]
    assert len(store) == 2 and store.take(keys[0]) == {}


def test_restore_inside_json_text_is_escaped():
    from authz.redaction.restore import Restorer

    r = Restorer({"[CUSTOMER_1]": ("customer", 'Acme "Corp"'), "[CUSTOMER_12]": ("customer", "Globex")})
    assert r.text("[CUSTOMER_12] and [CUSTOMER_1]") == 'Globex and Acme "Corp"'
    escaped = r.text("[CUSTOMER_1]", json_string=True)
    assert json.loads('{"a": "' + escaped + '"}') == {"a": 'Acme "Corp"'}


def test_sse_reader_line_endings_split_across_chunks():
    r = sse.Reader(1 << 20)
    assert r.feed(b"data: 1\r", False) == []
    assert r.feed(b"\n\r", False) == []          # CR LF, then a CR that may be followed by LF
    (ev,) = r.feed(b"\ndata: 2", False)
    assert ev.data == "1" and ev.raw == "data: 1\r\n\r\n"
    (ev,) = r.feed(b"\n\n", True)
    assert ev.data == "2"
    with pytest.raises(Exception, match="larger than"):
        sse.Reader(1024).feed(b"data: " + b"x" * 2000, False)
    with pytest.raises(Exception, match="not UTF-8"):
        sse.Reader(1024).feed(b"data: \xff\n\n", True)


async def test_the_window_bounds_what_is_held():
    s = stage()  # window 32
    ctx = await check(s, "/v1/chat/completions", {**LLM_REQUEST, "messages": [{"role": "user", "content": "hi"}]})
    ex = Exchange(request=ctx.request, handoff=ctx.handoff, response_status=200,
                  response_headers={"content-type": "text/event-stream"})
    await s.on_response_headers(ex)
    sent = ""
    for i, chunk in enumerate(chat_stream(["word " * 4] * 20)[:-2]):
        ex.mutations.body, ex.response_chunk, ex.response_end = None, chunk, False
        await s.on_response_body(ex)
        sent += chat_text(ex.mutations.body if ex.mutations.body is not None else chunk)[0]
        assert len("word " * 4) * (i + 1) - len(sent) <= 3 * 32  # held: bounded, whatever comes
    assert len(sent) >= 20 * 20 - 32 - 8


async def test_a_clean_stream_passes_its_events_byte_for_byte_when_nothing_is_held():
    s = stage(CONFIG.replace("window_chars: 32", "window_chars: 16"))
    ctx = await check(s, "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}})
    raw = b'event: message\r\nid: 7\r\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[]}}\r\n\r\n: ping\r\n\r\n'
    assert await answer(s, ctx, [raw[:10], raw[10:]], "text/event-stream") == raw


def test_a_streamed_body_mutation_sets_no_content_length():
    from authz.envoy import process
    from authz.model import Mutations

    m = Mutations(body=b"abc")
    streamed = process.body_response("response_body", m, buffered=False)
    buffered = process.body_response("response_body", m, buffered=True)
    assert not streamed.response_body.response.header_mutation.set_headers
    assert buffered.response_body.response.header_mutation.set_headers[0].header.key == "content-length"


def test_the_body_mode_that_sees_more_wins():
    from authz.model import Handoff

    h = Handoff()
    for mode, expected in (("streamed", "streamed"), ("duplex", "duplex"), ("streamed", "duplex"),
                           ("partial", "partial"), ("streamed", "partial"),
                           ("buffered", "buffered"), ("partial", "buffered")):
        h.want_body("response", mode)
        assert h.response_body == expected


async def test_a_plain_http_stream_is_scanned_event_by_event():
    s = stage(CONFIG.replace('match: {paths: ["/mcp"]}', 'match: {paths: ["/events"]}'))
    ctx = Context(request=Request(id="r", method="GET", scheme="http", host="h", path="/events", headers={}),
                  principal=OSCAR)
    await s.on_request(ctx)
    raw = f'data: {{"note": "card {CARD}"}}\n\ndata: card {CARD}\ndata: twice {CARD}\n\n'.encode()
    out = (await answer(s, ctx, [raw], "text/event-stream")).decode()
    assert CARD not in out and out.count("**** **** **** 6467") == 3
    assert [e.data.startswith("card ****") or e.data.startswith('{"note"') for e in sse.Reader(1 << 20).feed(
        out.encode(), True)] == [True, True]


async def test_a_reload_keeps_the_placeholders_between_check_and_answer():
    """Check ran on the old pipeline, the answer comes through the new one: the mapping is the
    runtime's (``Shared``), so it is still there."""
    from authz.assembly import Shared, build_pipeline

    text = CONFIG.replace("redaction:", "policy: {default: allow}\nredaction:")
    cfg = parse_config(text, env={})
    shared = Shared()
    old, new = build_pipeline(cfg, MemoryStore(), shared=shared), build_pipeline(cfg, MemoryStore(), shared=shared)
    old_stage = next(s for s in old.stages if s.name == "redaction")
    new_stage = next(s for s in new.stages if s.name == "redaction")
    ctx = await check(old_stage, "/v1/chat/completions", LLM_REQUEST)
    out = await answer(new_stage, ctx, chat_stream(["[CUSTOMER_1] is fine."]), "text/event-stream")
    assert chat_text(out)[0] == "Acme Corp is fine."
    await old.close()
    await new.close()


def test_every_pipeline_gets_the_runtimes_state_even_while_it_is_empty():
    from authz.assembly import Shared, build_pipeline

    cfg = parse_config(CONFIG.replace("redaction:", "policy: {default: allow}\nredaction:"), env={})
    shared = Shared()
    pipeline = build_pipeline(cfg, MemoryStore(), shared=shared)
    assert pipeline.stash is shared.stash
    assert next(s for s in pipeline.stages if s.name == "redaction").answers.placeholders is shared.placeholders


async def test_a_whole_answer_refused_is_json_whatever_the_upstream_sent():
    s = stage()
    ctx = await check(s, "/v1/chat/completions", {**LLM_REQUEST, "stream": False})
    events = chat_stream(["key AKIAIOSFODNN7EXAMPLE"])
    out = json.loads(await answer(s, ctx, [b"".join(events)], "text/event-stream"))
    assert out["error"]["code"] == "redaction.response_blocked" and ctx.facts["status"] == "403"


async def test_an_event_nested_too_deep_ends_the_stream_with_an_error():
    s = stage()
    ctx = await check(s, "/mcp", {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "x"}})
    deep = '{"jsonrpc": "2.0", "id": 5, "result": ' + "[" * 5000 + "]" * 5000 + "}"
    out = await answer(s, ctx, [f"data: {deep}\n\n".encode()], "text/event-stream")
    msg = json.loads(sse.Reader(1 << 20).feed(out, True)[0].data)
    assert msg["id"] == 5 and msg["error"]["data"]["reason"] == "redaction.response_unreadable"


async def test_a_crash_while_scanning_still_ends_in_the_protocols_error(monkeypatch):
    from authz.redaction.stream import StreamScanner

    s = stage()
    ctx = await check(s, "/v1/chat/completions", LLM_REQUEST)
    monkeypatch.setattr(StreamScanner, "_chat", lambda *a: 1 / 0)
    out = await answer(s, ctx, chat_stream(["hello there"]), "text/event-stream")
    (error,) = chat_text(out)[1]
    assert error["code"] == "redaction.response_unreadable" and out.count(b"data:") == 1


def test_placeholders_on_the_way_back_do_not_stop_the_hold_back():
    """With a placeholder action on answers, customers on both sides of a cut must not look like
    a value straddling it (their numbers differ when the two sides are scanned apart)."""
    from authz.redaction.responses import Scan
    from authz.redaction.restore import Restorer
    from authz.redaction.stream import Channel

    s = stage(CONFIG.replace("actions: {aws_key: block, default: mask}", "actions: {customer: placeholder}"))
    rule = s.by_id["mcp-results"]
    text = "Acme Corp came first, then Globex"
    cut = text.index("then")

    def channel(probe):
        ch = Channel(Scan(s.redactor(rule), Restorer({}), s._actions(rule), probe), 16, json_string=False)
        ch.held = text
        return ch

    assert not channel(lambda: s.redactor(rule))._safe(cut)  # numbered apart: [CUSTOMER_1] twice
    assert channel(lambda: s.probe(rule))._safe(cut)
    assert not channel(lambda: s.probe(rule))._safe(text.index("Corp"))  # a real straddle still is one


async def test_an_answer_beyond_the_scan_bounds_is_refused_saying_so(monkeypatch):
    """The retry budget, or the person detector's max_chars: refused in the protocol's shape."""
    from authz.redaction.detectors import ScanTooComplex

    s = stage()
    ctx = await check(s, "/mcp", {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "x"}})

    def too_long(*_: object, **__: object) -> None:
        raise ScanTooComplex("the text is longer than the 256 characters the person detector reads")
    monkeypatch.setattr(s.scanner, "scan", too_long)
    body = json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "x" * 300}]}})
    out = json.loads(await answer(s, ctx, [body.encode()], "application/json"))
    assert out["error"]["data"]["reason"] == "redaction.response_unreadable" and out["id"] == 3
    assert "within bounds" in out["error"]["message"] and "x" * 300 not in json.dumps(out)


@pytest.mark.parametrize("chunks", [
    [b"data: " + b"x" * 2000 + b"\n\n"],                          # the whole event in one chunk
    [b"data: " + b"x" * 900, b"x" * 1100 + b"\n\ndata: [DONE]\n\n"],  # its end and more in the last
    [b"data: " + b"x" * 2000],                                     # never terminated
])
def test_an_event_over_the_bound_is_refused_however_it_is_chunked(chunks):
    """The bound is on events, not on what is pending between chunks: a proxy that buffers (Envoy
    behind a slow sidecar) can hand over a whole oversized event at once."""
    reader = sse.Reader(1024)
    with pytest.raises(refusals.Refused, match="larger than"):
        for i, chunk in enumerate(chunks):
            reader.feed(chunk, i == len(chunks) - 1)


def test_events_within_the_bound_pass_in_one_chunk():
    events = sse.Reader(1024).feed(b"data: " + b"x" * 1000 + b"\n\ndata: [DONE]\n\n", True)
    assert [len(e.data) for e in events] == [1000, 6]
