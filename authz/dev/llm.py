"""A fake OpenAI/Anthropic-compatible model API for the demo and the tests.

``python -m authz.dev.llm --name medical --port 8083``

Answers chat/completions, completions, responses, embeddings and messages, as JSON or as an SSE
stream shaped like the real APIs, with deterministic ``usage`` so metering can be checked exactly:

- input tokens  = ceil(chars / 4) of the request's text (message contents, ``input``, ``prompt``,
  ``system``, ``instructions``, joined by single spaces); token-id arrays count one per id;
- output tokens = ceil(chars / 4) of a fixed reply, cut to ``max_tokens`` (or
  ``max_completion_tokens`` / ``max_output_tokens``) when that is smaller.

Trigger words in the request's text turn the demo into a leaky model, for response redaction:
``demo:leak`` answers with personal data split across deltas (a card over four, an email over
two, and the first ``[PLACEHOLDER_N]`` of the request, or ``Acme Corp``, over two);
``demo:secret`` adds an AWS key over two deltas; ``demo:malformed`` answers with an event (or a
body) that is not JSON; ``demo:huge`` with a 2 MB answer (one event, in a stream).

A request header ``x-demo-delay-ms`` makes a stream pause that long between events.

Every response says which upstream answered (``x-upstream`` header; ``"upstream"`` in JSON bodies)
and JSON bodies echo what arrived (``"echo": {"headers": {...}, "body": ...}``), so tests can see
which identity headers reached the model and that the user's token did not.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from authz.dev import bind, configure_logging, url_of

log = logging.getLogger("authz.dev.llm")

NAME = web.AppKey("name", str)
REPLY = "This is a demo answer from the {name} model."
TEXT_KEYS = ("content", "text", "input", "prompt", "system", "instructions")
LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
EMBEDDING_DIMENSIONS = 8

Event = tuple[str | None, dict[str, Any] | str]


class InvalidRequest(Exception):
    """The request cannot be answered; becomes a 400 in the API's own error shape."""


def tokens_of(text: str) -> int:
    return math.ceil(len(text) / 4)


def _texts(value: Any) -> list[str]:
    """Every string inside a messages/input structure (content parts included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, dict):
        return [t for k, v in value.items() if k in TEXT_KEYS for t in _texts(v)]
    return []


def input_tokens(body: dict[str, Any]) -> int:
    return tokens_of(" ".join(t for key in ("messages", *TEXT_KEYS) for t in _texts(body.get(key))))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def reply_for(body: dict[str, Any], name: str) -> tuple[str, int, bool]:
    """The reply text, its token count, and whether the token limit cut it."""
    leak = leak_deltas(body)
    reply = "".join(leak) if leak is not None else REPLY.format(name=name)
    if "demo:huge" in _request_text(body):
        reply = "lorem ipsum " * (2 * 1024 * 1024 // 12)
    limit: int | None = None
    for key in LIMIT_KEYS:
        if key in body and body[key] is not None:
            if not _is_count(body[key]):
                raise InvalidRequest(f"{key} must be a positive integer")
            limit = body[key]
            break
    cut = False
    if limit is not None and tokens_of(reply) > limit:
        reply, cut = reply[: limit * 4], True
    return reply, tokens_of(reply), cut


PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_]*_\d+\]")


def _request_text(body: dict[str, Any]) -> str:
    return " ".join(t for key in ("messages", *TEXT_KEYS) for t in _texts(body.get(key)))


def leak_deltas(body: dict[str, Any]) -> list[str] | None:
    """The deltas of a leaky answer, when the request asks for one (``demo:leak``)."""
    text = _request_text(body)
    if "demo:leak" not in text and "demo:secret" not in text:
        return None
    found = PLACEHOLDER.search(text)
    name = found.group(0) if found else "Acme Corp"
    half = len(name) // 2
    deltas = ["Summary for ", name[:half], name[half:], ": card ", "4539 14", "88 03", "43 64", "67",
              ", mail cfo@ac", "me.com, phone +1 415 555 0134."]
    if "demo:secret-first" in text:  # the secret opens the answer (a stream refused early)
        return ["Key: AKIAIOSF", "ODNN7EXAMPLE. ", *deltas]
    if "demo:secret" in text:
        deltas += [" Key: AKIAIOSF", "ODNN7EXAMPLE."]
    return deltas


def _words(text: str) -> list[str]:
    """Stream deltas: word by word, spaces kept, so the deltas join back to the text."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _deltas(body: dict[str, Any], reply: str) -> list[str]:
    if "demo:huge" in _request_text(body):
        return [reply]  # one event of 2 MB
    leak = leak_deltas(body)
    return leak if leak is not None and "".join(leak) == reply else _words(reply)


def _headers(request: web.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.headers.items():
        key = key.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _echo(request: web.Request, body: Any = None) -> dict[str, Any]:
    return {"upstream": request.app[NAME],
            "echo": {"headers": _headers(request), "body": body, "path": request.raw_path}}


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("the body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise InvalidRequest("model is required")
    return body


def _error_body(request: web.Request, status: int, message: str) -> dict[str, Any]:
    if request.path.startswith("/v1/messages"):
        kinds = {400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large"}
        return {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": message}}
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


@web.middleware
async def errors(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every failure is a JSON error in the API's shape, never an HTML page or a dropped connection."""
    try:
        return await handler(request)
    except InvalidRequest as exc:
        return web.json_response(_error_body(request, 400, str(exc)), status=400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keep = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.json_response(_error_body(request, exc.status, exc.reason), status=exc.status,
                                 headers=keep)
    except Exception:
        log.exception("demo model failed on %s %s", request.method, request.path)
        return web.json_response(_error_body(request, 500, "the demo model failed"), status=500)


MALFORMED = "demo.malformed"


@web.middleware
async def malformed(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """``demo:malformed``: a JSON answer that is not JSON (streams get a bad event in ``_sse``)."""
    if request.method == "POST" and b"demo:malformed" in await request.read():
        body = json.loads(await request.read())
        if body.get("stream") is not True:
            return web.Response(body=b'{"id": "x", "choices": [oops', content_type="application/json")
        request[MALFORMED] = True
    return await handler(request)


async def _tag(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["x-upstream"] = request.app[NAME]


async def _sse(request: web.Request, events: list[Event]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await resp.prepare(request)
    if MALFORMED in request:
        events = [*events[:2], (None, "{this is not json"), *events[2:]]
    try:  # x-demo-delay-ms: a pause between events, as a slow model (tests cut streams short)
        delay = min(max(int(request.headers.get("x-demo-delay-ms", "0")), 0), 5000) / 1000
    except ValueError:
        delay = 0
    try:
        for event, data in events:
            payload = data if isinstance(data, str) else json.dumps(data)
            prefix = f"event: {event}\n" if event else ""
            await resp.write(f"{prefix}data: {payload}\n\n".encode())
            await asyncio.sleep(delay)  # each event its own chunk, as a real model streams them
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-stream; nothing left to tell it
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    reply, out, cut = reply_for(body, request.app[NAME])
    prompt = input_tokens(body)
    usage = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
             "prompt_tokens_details": {"cached_tokens": 0}}
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body["model"]}
    finish = "length" if cut else "stop"
    if body.get("stream") is not True:
        return web.json_response({
            **base, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "finish_reason": finish}],
            "usage": usage, **_echo(request, body)})
    options = body.get("stream_options")
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    # With include_usage OpenAI sends "usage": null on every chunk, then one chunk with
    # empty choices carrying the usage, just before [DONE].
    extra = {"usage": None} if with_usage else {}
    chunk = {**base, "object": "chat.completion.chunk"}
    deltas = [{"role": "assistant", "content": ""}, *({"content": w} for w in _deltas(body, reply)), {}]
    events: list[Event] = [
        (None, {**chunk, "choices": [{"index": 0, "delta": delta,
                                      "finish_reason": finish if i == len(deltas) - 1 else None}], **extra})
        for i, delta in enumerate(deltas)]
    if with_usage:
        events.append((None, {**chunk, "choices": [], "usage": usage}))
    events.append((None, "[DONE]"))
    return await _sse(request, events)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    reply, out, cut = reply_for(body, request.app[NAME])
    prompt = input_tokens(body)
    return web.json_response({
        "id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "text": reply, "finish_reason": "length" if cut else "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out},
        **_echo(request, body)})


async def responses(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    reply, out, _ = reply_for(body, request.app[NAME])
    prompt = input_tokens(body)
    item_id = f"msg_{uuid.uuid4().hex[:24]}"
    part = {"type": "output_text", "text": reply, "annotations": []}
    item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    response = {"id": f"resp_{uuid.uuid4().hex[:24]}", "object": "response", "created_at": int(time.time()),
                "model": body["model"], "status": "completed", "output": [item],
                "usage": {"input_tokens": prompt, "output_tokens": out, "total_tokens": prompt + out,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
    if body.get("stream") is not True:
        return web.json_response({**response, **_echo(request, body)})
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
        *({"type": "response.output_text.delta", **at, "delta": w} for w in _deltas(body, reply)),
        {"type": "response.output_text.done", **at, "text": reply},
        {"type": "response.content_part.done", **at, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response},
    ]
    return await _sse(request, [(e["type"], {**e, "sequence_number": n}) for n, e in enumerate(events)])


def _embedding(text: str, dimensions: int, as_base64: bool) -> list[float] | str:
    """A fixed vector per text, so equal inputs embed equally."""
    digest = hashlib.sha256(text.encode()).digest()
    vector = [round(b / 255 - 0.5, 4) for b in digest[:dimensions]]
    if as_base64:  # what the official openai SDK asks for by default
        return base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
    return vector


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    given = body.get("input")
    if isinstance(given, str) or (isinstance(given, list) and given and all(_is_count(t) for t in given)):
        given = [given]  # one string, or one array of token ids
    if not isinstance(given, list) or not given or not all(isinstance(x, str | list) for x in given):
        raise InvalidRequest("input must be a string, an array of strings or an array of token arrays")
    prompt = sum(tokens_of(x) if isinstance(x, str) else len(x) for x in given)
    as_base64 = body.get("encoding_format") == "base64"
    return web.json_response({
        "object": "list", "model": body["model"],
        "data": [{"object": "embedding", "index": i,
                  "embedding": _embedding(json.dumps(x), EMBEDDING_DIMENSIONS, as_base64)}
                 for i, x in enumerate(given)],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt}, **_echo(request, body)})


async def messages(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    reply, out, cut = reply_for(body, request.app[NAME])
    prompt = input_tokens(body)
    stop = "max_tokens" if cut else "end_turn"
    message = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
               "model": body["model"], "content": [{"type": "text", "text": reply}],
               "stop_reason": stop, "stop_sequence": None,
               "usage": {"input_tokens": prompt, "output_tokens": out}}
    if body.get("stream") is not True:
        return web.json_response({**message, **_echo(request, body)})
    # Anthropic splits usage: input tokens in message_start, output tokens in message_delta.
    start = {**message, "content": [], "stop_reason": None,
             "usage": {"input_tokens": prompt, "output_tokens": 1}}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
          for w in _deltas(body, reply)),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
         "usage": {"output_tokens": out}},
        {"type": "message_stop"},
    ]
    return await _sse(request, [(e["type"], e) for e in events])


async def models(request: web.Request) -> web.Response:
    model = {"id": f"gpt-{request.app[NAME]}", "object": "model", "created": 0, "owned_by": "authz-demo"}
    return web.json_response({"object": "list", "data": [model], **_echo(request)})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"upstream": request.app[NAME], "method": request.method,
                              "path": request.path_qs, "headers": _headers(request),
                              "body": body.decode("utf-8", "replace")})


def build_app(name: str) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[errors, malformed])
    app[NAME] = name
    app.on_response_prepare.append(_tag)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m authz.dev.llm",
                                     description="A fake OpenAI/Anthropic-compatible model API.")
    parser.add_argument("--name", default="general", help="upstream name: x-upstream, the model gpt-NAME")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    args = parser.parse_args(argv)
    configure_logging()
    sock = bind(args.host, args.port)
    url = url_of(sock)
    # run_app stops cleanly on SIGTERM and SIGINT; its banner is replaced by our one line.
    web.run_app(build_app(args.name), sock=sock, access_log=None, shutdown_timeout=5,
                print=lambda *_: log.info("demo model %r listening on %s", args.name, url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
