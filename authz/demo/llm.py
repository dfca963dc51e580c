"""A fake OpenAI/Anthropic-compatible model API for the demo and the tests.

``python -m authz.demo.llm --name medical --port 8083``

Answers chat/completions, completions, responses, embeddings and messages, as JSON or as an
SSE stream, with deterministic ``usage`` so metering can be checked exactly. Every answer says
which upstream answered (``x-upstream`` header, ``"upstream"`` field) and echoes the headers
it received, so tests can see which identity headers reached it and that the user's token did not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import time
import uuid
from typing import Any

from aiohttp import web

log = logging.getLogger("authz.demo.llm")

NAME = web.AppKey("name", str)
REPLY = "This is a demo answer from the {name} model."


def tokens_of(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _texts(value: Any) -> list[str]:
    """Every string inside a messages/input structure (content parts included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, dict):
        return [t for k, v in value.items() if k in ("content", "text", "input", "prompt", "system")
                for t in _texts(v)]
    return []


def _usage_numbers(body: dict, name: str) -> tuple[str, int, int]:
    prompt = tokens_of(" ".join(_texts(body.get("messages")) + _texts(body.get("input"))
                                + _texts(body.get("prompt")) + _texts(body.get("system"))))
    reply = REPLY.format(name=name)
    out = tokens_of(reply)
    limit = next((body[k] for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")
                  if isinstance(body.get(k), int) and body[k] > 0), None)
    if limit is not None and out > limit:
        out = limit
        reply = reply[: limit * 4]
    return reply, prompt, out


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}},
                             status=status)


async def _read_json(request: web.Request) -> dict | web.Response:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return _error(400, "the body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


def _common(request: web.Request, body: Any = None) -> dict[str, Any]:
    """Who answered and what reached it (headers, and the JSON body as received)."""
    return {"upstream": request.app[NAME],
            "echo": {"headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}}


async def _sse(request: web.Request, events: list[tuple[str | None, dict | str]]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache",
                                       "x-upstream": request.app[NAME]})
    await resp.prepare(request)
    for event, data in events:
        payload = data if isinstance(data, str) else json.dumps(data)
        prefix = f"event: {event}\n" if event else ""
        await resp.write(f"{prefix}data: {payload}\n\n".encode())
        await asyncio.sleep(0)  # let each event go out as its own chunk
    await resp.write_eof()
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("model"), str):
        return _error(400, "model is required")
    name = request.app[NAME]
    reply, prompt, out = _usage_numbers(body, name)
    usage = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
             "prompt_tokens_details": {"cached_tokens": 0}}
    ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    created = int(time.time())
    if body.get("stream") is True:
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body["model"]}
        words = reply.split(" ")
        events: list[tuple[str | None, dict | str]] = [
            (None, {**base, "choices": [{"index": 0, "delta": {"content": (w if i == 0 else " " + w)},
                                         "finish_reason": None}]}) for i, w in enumerate(words)]
        events.append((None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            events.append((None, {**base, "choices": [], "usage": usage, "upstream": name}))
        events.append((None, "[DONE]"))
        return await _sse(request, events)
    return web.json_response({
        "id": ident, "object": "chat.completion", "created": created, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                     "finish_reason": "stop"}],
        "usage": usage, **_common(request, body)}, headers={"x-upstream": name})


async def completions(request: web.Request) -> web.StreamResponse:
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    reply, prompt, out = _usage_numbers(body, request.app[NAME])
    return web.json_response({
        "id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "model": body.get("model"),
        "choices": [{"index": 0, "text": reply, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out},
        **_common(request, body)}, headers={"x-upstream": request.app[NAME]})


async def responses(request: web.Request) -> web.StreamResponse:
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    name = request.app[NAME]
    reply, prompt, out = _usage_numbers(body, name)
    usage = {"input_tokens": prompt, "output_tokens": out, "total_tokens": prompt + out,
             "input_tokens_details": {"cached_tokens": 0}}
    response = {"id": f"resp_{uuid.uuid4().hex[:12]}", "object": "response", "model": body.get("model"),
                "status": "completed",
                "output": [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": reply}]}],
                "usage": usage}
    if body.get("stream") is True:
        return await _sse(request, [
            ("response.created", {"type": "response.created", "response": {**response, "status": "in_progress",
                                                                           "usage": None}}),
            ("response.output_text.delta", {"type": "response.output_text.delta", "delta": reply}),
            ("response.completed", {"type": "response.completed", "response": response}),
        ])
    return web.json_response({**response, **_common(request, body)}, headers={"x-upstream": name})


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    prompt = tokens_of(" ".join(_texts(items)))
    return web.json_response({
        "object": "list", "model": body.get("model"),
        "data": [{"object": "embedding", "index": i, "embedding": [0.0, 0.1, 0.2]} for i in range(len(items))],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt}, **_common(request, body)},
        headers={"x-upstream": request.app[NAME]})


async def messages(request: web.Request) -> web.StreamResponse:
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    name = request.app[NAME]
    reply, prompt, out = _usage_numbers(body, name)
    ident = f"msg_{uuid.uuid4().hex[:12]}"
    if body.get("stream") is True:
        return await _sse(request, [
            ("message_start", {"type": "message_start", "message": {
                "id": ident, "type": "message", "role": "assistant", "model": body.get("model"),
                "content": [], "usage": {"input_tokens": prompt, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": reply}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                               "usage": {"output_tokens": out}}),
            ("message_stop", {"type": "message_stop"}),
        ])
    return web.json_response({
        "id": ident, "type": "message", "role": "assistant", "model": body.get("model"),
        "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn",
        "usage": {"input_tokens": prompt, "output_tokens": out}, **_common(request, body)},
        headers={"x-upstream": name})


async def models(request: web.Request) -> web.Response:
    name = request.app[NAME]
    return web.json_response({"object": "list", "data": [
        {"id": f"gpt-{name}", "object": "model", "owned_by": "authz-demo"}], **_common(request)},
        headers={"x-upstream": name})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"upstream": request.app[NAME], "method": request.method,
                              "path": request.path_qs, "headers": {k.lower(): v for k, v in request.headers.items()},
                              "body": body.decode("utf-8", "replace")},
                             headers={"x-upstream": request.app[NAME]})


def build_app(name: str) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[NAME] = name
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    return app


async def serve(name: str, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(name), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("demo model %r listening on http://%s:%d", name, host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m authz.demo.llm", description=__doc__)
    parser.add_argument("--name", default="general")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(serve(args.name, args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
