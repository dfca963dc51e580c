"""The flush deadline: what held-back text a pause may release (``authz.redaction.pause``), the
stage sending it between chunks, and Process's wait for the next message or the deadline."""

import asyncio
import json

import pytest

from authz.envoy.servicers import _with_pauses
from authz.model import Exchange
from authz.redaction.pause import PauseCut
from tests.unit.redaction.test_answers import AWS, CARD, chat_stream, chat_text, check, stage

CUT = PauseCut("proven", {"customer": ["Acme Corp", "Umbrella Health", "Globex"]})


@pytest.mark.parametrize(("held", "released"), [
    ("Summary for ", "Summary for "),                        # prose ending in a space: all of it
    ("The weather is nice.    ", "The weather is nice.    "),
    ("The key points are clear. ", "The key points are clear. "),
    ("Summary for Acme ", "Summary for "),                   # a dictionary term begun
    ("Summary for Acme Co", "Summary for "),
    ("Call Umbrella ", "Call "),
    ("card 4539 14", "card "),                               # a number's groups, open or not
    ("card 4539 1488 ", "card "),
    ("phone +1 (415) 555 ", "phone "),
    (f"card {CARD} and more ", f"card {CARD} and more "),    # a whole card: released, then masked
    ("mail cfo@ac", "mail "),                                # an open word
    ("the password is ", "the "),                            # a secret's keyword, its value to come
    ("the password is hun", "the "),
    ('my password: "correct horse ', "my "),
    ("api_key = ", ""),
    ("Bearer ", ""),
    ("x -----BEGIN PRIVATE KEY-----\nMIIE", "x "),
])
def test_a_pause_releases_only_what_no_value_can_continue_out_of(held, released):
    assert held[:CUT(held)] == released


def test_custom_patterns_release_nothing_and_all_releases_everything():
    assert PauseCut("proven", custom=True)("Summary for ") == 0
    assert PauseCut("all")("card 4539 14") == len("card 4539 14")


async def duplex_answer(s, ctx, chunks: list[bytes], *, pause_after: set[int]) -> list[bytes]:
    """The stage as Process drives it in FULL_DUPLEX_STREAMED: a pause after the chunks named."""
    ex = Exchange(request=ctx.request, handoff=ctx.handoff, response_status=200,
                  response_headers={"content-type": "text/event-stream"})
    assert ex.body_mode("response") == "duplex"
    await s.on_response_headers(ex)
    sent = []
    for i, chunk in enumerate(chunks):
        ex.mutations.body = None
        ex.response_chunk, ex.response_end = chunk, i == len(chunks) - 1
        await s.on_response_body(ex)
        sent.append(ex.mutations.body if ex.mutations.body is not None else chunk)
        if i in pause_after and ex.flush_at:
            ex.mutations.body, ex.flush_at = None, 0.0
            await s.on_response_pause(ex)
            sent.append(ex.mutations.body or b"")
    await s.on_complete(ex)
    return sent


async def test_the_stage_sends_held_clean_text_at_a_pause_and_holds_a_split_card():
    s = stage()
    ctx = await check(s, "/v1/chat/completions", {"model": "m", "stream": True,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    deltas = ["Summary for ", "Acme ", "Corp: card ", "4539 14", "88 0343 ", "6467, thanks."]
    sent = await duplex_answer(s, ctx, chat_stream(deltas), pause_after=set(range(len(deltas))))
    texts = [chat_text(piece)[0] for piece in sent]
    assert texts[1] == "Summary for "             # the first delta's pause released it
    whole = "".join(texts)
    assert "4539" not in whole and "Acme" not in whole and "**** **** **** 6467" in whole
    assert whole.startswith("Summary for [CUSTOMER_1]: card ")


async def test_a_blocked_value_released_at_a_pause_ends_the_stream_in_an_error_event():
    s = stage()
    ctx = await check(s, "/v1/chat/completions", {"model": "m", "stream": True,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    sent = await duplex_answer(s, ctx, chat_stream([f"Key {AWS} here. ", "More."]), pause_after={0})
    text, errors = chat_text(b"".join(sent))
    assert AWS not in text and errors and "aws_key" in json.dumps(errors)


async def test_process_reads_messages_and_wakes_at_the_deadline():
    deadline = [0.0]

    async def messages():
        yield "a"
        await asyncio.sleep(0.3)
        yield "b"

    loop = asyncio.get_running_loop()
    got = []
    async for msg in _with_pauses(messages(), lambda: deadline[0]):  # type: ignore[arg-type]
        got.append(msg)
        if msg == "a":
            deadline[0] = loop.time() + 0.05  # asyncio's clock is time.monotonic
        elif msg is None:
            deadline[0] = 0.0
    assert got == ["a", None, "b"]


async def test_flush_all_releases_everything_held_and_flush_ms_0_keeps_streamed():
    """The trade-off, shown: with ``flush: all`` a card cut by a pause goes out in two parts
    (neither recognised); ``flush_ms: 0`` keeps Envoy's STREAMED mode (no deadline at all)."""
    from tests.unit.redaction.test_answers import CONFIG

    s = stage(CONFIG.replace("responses: {window_chars: 32}", "responses: {window_chars: 32, flush: all}"))
    ctx = await check(s, "/v1/chat/completions", {"model": "m", "stream": True,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    sent = await duplex_answer(s, ctx, chat_stream(["card 4539 14", "88 0343 6467."]), pause_after={0})
    assert "card 4539 14" in chat_text(sent[1])[0]
    s = stage(CONFIG.replace("responses: {window_chars: 32}", "responses: {window_chars: 32, flush_ms: 0}"))
    ctx = await check(s, "/v1/chat/completions", {"model": "m", "stream": True,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert ctx.handoff.response_body == "streamed"
