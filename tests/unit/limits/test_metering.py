import json

from authz.limits.metering import UsageMeter


def sse(*events) -> bytes:
    return b"".join(f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n".encode() for e in events)


def test_openai_json():
    m = UsageMeter()
    m.feed_json(json.dumps({"usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                                      "prompt_tokens_details": {"cached_tokens": 4}}}).encode())
    assert m.usage.as_dict() == {"input_tokens": 12, "output_tokens": 5, "cached_tokens": 4, "total_tokens": 17}


def test_openai_stream_split_across_chunks():
    body = sse({"choices": [{"delta": {"content": "hi"}}]},
               {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 7}}, "[DONE]")
    m = UsageMeter()
    for i in range(0, len(body), 7):
        m.feed_sse(body[i:i + 7], end=i + 7 >= len(body))
    assert (m.usage.input_tokens, m.usage.output_tokens, m.usage.seen) == (30, 7, True)


def test_responses_api_stream():
    body = (b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n"
            b"event: response.completed\ndata: " + json.dumps({"type": "response.completed", "response": {
                "usage": {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12,
                          "input_tokens_details": {"cached_tokens": 2}}}}).encode() + b"\n\n")
    m = UsageMeter()
    m.feed_sse(body, end=True)
    assert m.usage.as_dict() == {"input_tokens": 9, "output_tokens": 3, "cached_tokens": 2, "total_tokens": 12}


def test_anthropic_stream_accumulates_output():
    body = sse({"type": "message_start", "message": {"usage": {"input_tokens": 20, "output_tokens": 1,
                                                                "cache_read_input_tokens": 5}}},
               {"type": "content_block_delta", "delta": {"text": "x"}},
               {"type": "message_delta", "usage": {"output_tokens": 15}},
               {"type": "message_stop"})
    m = UsageMeter()
    m.feed_sse(body.replace(b"\n", b"\r\n"), end=True)
    assert m.usage.as_dict() == {"input_tokens": 25, "output_tokens": 15, "cached_tokens": 5, "total_tokens": 40}


def test_garbage_is_ignored_and_nothing_is_seen():
    m = UsageMeter()
    m.feed_sse(b"data: {not json\n\n: comment\n\ndata: [DONE]\n\n", end=True)
    m.feed_json(b"[" * 10000)
    assert not m.usage.seen
