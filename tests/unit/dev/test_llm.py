"""The fake model API: OpenAI/Anthropic shapes, deterministic usage, streams, echo, errors."""

from __future__ import annotations

import base64
import json
import math
import struct
import urllib.request

import pytest

from authz.dev.llm import REPLY, input_tokens, tokens_of

from .conftest import program

REPLY_TEXT = REPLY.format(name="medical")
REPLY_TOKENS = math.ceil(len(REPLY_TEXT) / 4)
HELLO = [{"role": "user", "content": "hello there"}]  # 11 chars: 3 tokens


async def sse(resp) -> list[tuple[str | None, object]]:
    """(event name, parsed data) for each event of an SSE body."""
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in (await resp.text()).split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        data = fields["data"]
        events.append((fields.get("event"), data if data == "[DONE]" else json.loads(data)))
    return events


def test_token_counts_are_a_quarter_of_the_characters_rounded_up():
    assert [tokens_of(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
    body = {"system": [{"type": "text", "text": "be brief"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert input_tokens(body) == tokens_of("hi be brief")


async def test_chat_answers_with_usage_and_echoes_what_reached_it(model):
    r = await model.post("/v1/chat/completions", json={"model": "gpt-medical", "messages": HELLO},
                         headers={"Authorization": "Bearer secret", "X-Authz-User": "dana"})
    assert r.status == 200 and r.headers["x-upstream"] == "medical"
    body = await r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-medical" and body["upstream"] == "medical"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": REPLY_TEXT}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == REPLY_TOKENS
    assert body["usage"]["total_tokens"] == 3 + REPLY_TOKENS
    headers = body["echo"]["headers"]
    assert headers["x-authz-user"] == "dana" and headers["authorization"] == "Bearer secret"
    assert all(k == k.lower() for k in headers)
    assert body["echo"]["body"] == {"model": "gpt-medical", "messages": HELLO}


async def test_max_tokens_caps_the_completion(model):
    r = await model.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "max_tokens": 2})
    body = await r.json()
    assert body["usage"]["completion_tokens"] == 2 and body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == REPLY_TEXT[:8]
    r = await model.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "max_tokens": 10_000})
    assert (await r.json())["usage"]["completion_tokens"] == REPLY_TOKENS


@pytest.mark.parametrize("value", [0, -1, "3", True, 1.5])
async def test_a_bad_max_tokens_is_a_400(model, value):
    r = await model.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "max_tokens": value})
    assert r.status == 400 and "max_tokens" in (await r.json())["error"]["message"]


async def test_chat_stream_with_include_usage_ends_like_openai(model):
    r = await model.post("/v1/chat/completions", json={
        "model": "gpt-medical", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status == 200 and r.headers["x-upstream"] == "medical"
    events = await sse(r)
    assert events[-1] == (None, "[DONE]")
    *chunks, final = [data for _, data in events[:-1]]
    assert final["choices"] == [] and final["usage"]["prompt_tokens"] == 3
    assert final["usage"]["completion_tokens"] == REPLY_TOKENS
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-medical" for c in chunks)
    assert all(c["usage"] is None for c in chunks)
    assert len({c["id"] for c in [*chunks, final]}) == 1
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == REPLY_TEXT
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_chat_stream_without_include_usage_has_no_usage(model):
    r = await model.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": True})
    events = await sse(r)
    assert events[-1] == (None, "[DONE]")
    assert all("usage" not in data for _, data in events[:-1])


async def test_responses_api_json_and_stream(model):
    body = {"model": "gpt-medical", "instructions": "be brief", "input": "hello there"}
    r = await model.post("/v1/responses", json=body)
    answer = await r.json()
    assert r.status == 200 and answer["object"] == "response" and answer["upstream"] == "medical"
    assert answer["output"][0]["content"][0]["text"] == REPLY_TEXT
    expected = {"input_tokens": tokens_of("hello there be brief"), "output_tokens": REPLY_TOKENS}
    assert {k: answer["usage"][k] for k in expected} == expected
    assert answer["usage"]["total_tokens"] == sum(expected.values())

    events = await sse(await model.post("/v1/responses", json={**body, "stream": True}))
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert all(data["type"] == name for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert "".join(d["delta"] for n, d in events if n == "response.output_text.delta") == REPLY_TEXT
    assert events[0][1]["response"]["usage"] is None
    done = events[-1][1]["response"]
    assert done["status"] == "completed" and done["usage"]["output_tokens"] == REPLY_TOKENS
    assert done["usage"]["input_tokens"] == expected["input_tokens"]


async def test_embeddings_count_inputs_and_speak_base64(model):
    r = await model.post("/v1/embeddings", json={"model": "emb", "input": ["hello there", "abcd"]})
    body = await r.json()
    assert body["usage"] == {"prompt_tokens": 3 + 1, "total_tokens": 3 + 1}
    assert [d["index"] for d in body["data"]] == [0, 1] and len(body["data"][0]["embedding"]) == 8

    r = await model.post("/v1/embeddings", json={"model": "emb", "input": [1, 2, 3], "encoding_format": "base64"})
    body = await r.json()
    assert body["usage"]["prompt_tokens"] == 3 and len(body["data"]) == 1
    vector = struct.unpack("<8f", base64.b64decode(body["data"][0]["embedding"]))
    assert all(-0.5 <= x <= 0.5 for x in vector)

    r = await model.post("/v1/embeddings", json={"model": "emb"})
    assert r.status == 400 and "input" in (await r.json())["error"]["message"]


async def test_anthropic_messages_json_and_stream(model):
    body = {"model": "claude-demo", "max_tokens": 1024, "system": "be brief", "messages": HELLO}
    r = await model.post("/v1/messages", json=body)
    answer = await r.json()
    assert r.status == 200 and answer["type"] == "message" and answer["upstream"] == "medical"
    assert answer["content"] == [{"type": "text", "text": REPLY_TEXT}]
    assert answer["usage"] == {"input_tokens": tokens_of("hello there be brief"), "output_tokens": REPLY_TOKENS}

    events = await sse(await model.post("/v1/messages", json={**body, "stream": True}))
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert events[0][1]["message"]["usage"]["input_tokens"] == answer["usage"]["input_tokens"]
    assert events[-2][1]["usage"] == {"output_tokens": REPLY_TOKENS}
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == REPLY_TEXT


async def test_anthropic_errors_have_the_anthropic_shape(model):
    r = await model.post("/v1/messages", data=b"{nope")
    assert r.status == 400
    assert (await r.json()) == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "the body is not valid JSON"}}


async def test_models_lists_this_upstreams_model(model):
    r = await model.get("/v1/models")
    body = await r.json()
    assert r.headers["x-upstream"] == "medical" and [m["id"] for m in body["data"]] == ["gpt-medical"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
async def test_echo_returns_the_request(model, method):
    r = await model.request(method, "/echo/a/b?x=1", data="héllo".encode(), headers={"X-Authz-Roles": "doctor"})
    body = await r.json()
    assert body["upstream"] == "medical" and body["method"] == method and body["path"] == "/echo/a/b?x=1"
    assert body["headers"]["x-authz-roles"] == "doctor" and body["body"] == "héllo"


async def test_repeated_headers_are_all_echoed(model):
    r = await model.get("/echo", headers=[("x-authz-role", "a"), ("x-authz-role", "b")])
    assert (await r.json())["headers"]["x-authz-role"] == "a, b"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions"])
@pytest.mark.parametrize("data", [b"", b"{nope", b"[1, 2]", b"\xff\xfe", b'{"messages": []}'])
async def test_a_bad_body_is_an_openai_style_400_never_a_crash(model, path, data):
    r = await model.post(path, data=data)
    assert r.status == 400 and r.headers["x-upstream"] == "medical"
    error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


async def test_unknown_paths_and_methods_answer_json(model):
    r = await model.get("/v2/whatever")
    assert r.status == 404 and r.headers["x-upstream"] == "medical" and (await r.json())["error"]
    r = await model.delete("/v1/chat/completions")
    assert r.status == 405 and "POST" in r.headers["allow"] and (await r.json())["error"]


def test_the_program_serves_on_the_port_it_was_given():
    with program("authz.dev.llm", "--name", "financial", "--port", "0") as (url, lines):
        assert lines == [f"demo model 'financial' listening on {url}"]
        with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as r:
            assert r.headers["x-upstream"] == "financial"
