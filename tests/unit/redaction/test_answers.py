"""The answer side of redaction, without Envoy: response rules, streams with values split across
deltas (the hold-back window), restoring placeholders, refusals in the protocol's shape."""

import json

import pytest

from authz.config import parse_config
from authz.errors import ConfigError
from authz.model import Context, Exchange, Principal, Request
from authz.redaction import sse
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
        if ex.body_mode("response") == "buffered":
            ex.response_body += chunk
        await s.on_response_body(ex)
        out += ex.mutations.body if ex.mutations.body is not None else chunk
    await s.on_complete(ex)
    ctx.facts["answer"] = ex.facts.get("redaction_response")
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
    assert ctx.handoff.response_body == "streamed" and ctx.handoff.response_rule == "llm"
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
    assert ctx.handoff.response_body == "buffered"
    out = json.loads(await answer(s, ctx, [b"<html>oops"], "application/json"))
    assert out["error"]["code"] == "redaction.response_unreadable" and ctx.facts["status"] == "502"


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
