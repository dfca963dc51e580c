"""The limits stage with the memory store: headers, refusals, reservation and settlement."""

import json
from typing import Any

import pytest

from authz.config import parse_config
from authz.errors import TooManyRequests, Unavailable
from authz.limits.stage import LimitsStage
from authz.model import Context, Exchange, Principal, Request
from authz.request import Action
from authz.store import MemoryStore, RedisStore

CONFIG = """limits:
  rate_limits:
    - {id: per-user, key: [user], rate: 2/hour}
    - {id: per-tool, key: [user, tool], rate: 100/min, burst: 1, match: {mcp: {tools: [delete_*]}}}
  budgets:
    - {id: daily-tokens, key: [user], period: day, limit: 1000}
    - {id: daily-cost, key: [tenant], period: month, unit: cost, limit: 1.0, on_store_error: fail_open}
  prices:
    "gpt-*": {input: 10, output: 30, cached_input: 1}
  estimate: {bytes_per_token: 4, default_max_tokens: 100}
"""

OSCAR = Principal(subject="oscar", tenant="acme")


def stage(store=None, text=CONFIG) -> LimitsStage:
    return LimitsStage(parse_config(text, env={}).limits, store or MemoryStore())


def chat_ctx(body: dict, principal=OSCAR) -> Context:
    raw = json.dumps(body).encode()
    ctx = Context(request=Request(id="r", method="POST", scheme="http", host="h",
                                  path="/v1/chat/completions", headers={}, body=raw), principal=principal)
    return ctx


def tool_ctx(tool: str) -> Context:
    ctx = Context(request=Request(id="r", method="POST", scheme="http", host="h", path="/mcp", headers={}),
                  principal=OSCAR)
    ctx.view.action = Action(protocol="mcp", kind="tools/call", name=tool)
    return ctx


async def test_rate_limit_headers_and_429():
    s = stage(text="limits:\n  rate_limits:\n    - {id: per-user, rate: 2/hour}\n")
    ctx = tool_ctx("whoami")
    await s.on_request(ctx)
    assert ctx.mutations.response_headers["ratelimit-policy"] == '"per-user";q=2;w=3600'
    assert ctx.mutations.response_headers["ratelimit"].startswith('"per-user";r=1;t=')
    await s.on_request(tool_ctx("whoami"))
    with pytest.raises(TooManyRequests) as info:
        await s.on_request(tool_ctx("whoami"))
    deny = info.value
    assert deny.status == 429 and deny.reason == "rate_limited"
    assert 1790 <= int(deny.headers["retry-after"]) <= 1800
    assert deny.headers["ratelimit"].startswith('"per-user";r=0;t=')


async def test_limit_keyed_by_a_missing_dimension_does_not_apply():
    s = stage(text="limits:\n  rate_limits:\n    - {id: t, key: [tool], rate: 1/hour}\n")
    for _ in range(3):
        ctx = chat_ctx({"model": "gpt-x"})
        await s.on_request(ctx)
        assert "limits" not in ctx.facts


async def test_budget_reservation_and_settlement_to_real_usage():
    store = MemoryStore()
    s = stage(store, text="limits:\n  budgets:\n    - {id: daily-tokens, limit: 1000}\n"
                          "  estimate: {bytes_per_token: 4, default_max_tokens: 100}\n")
    body = {"model": "gpt-x", "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ctx = chat_ctx(body)
    await s.on_request(ctx)
    reservation = ctx.handoff.metering.reservations[0]
    prompt_estimate = -(-len(ctx.request.body) // 4)
    assert reservation.amount == prompt_estimate + 200
    assert ctx.handoff.response_body == "streamed"
    # The forwarded body asks for usage in the stream (rewritten once, in Check).
    assert json.loads(ctx.outgoing.encode())["stream_options"] == {"include_usage": True}

    ex = Exchange(request=ctx.request, handoff=ctx.handoff, request_body=ctx.request.body,
                  response_status=200, response_headers={"content-type": "text/event-stream"})
    for chunk, end in ((b'data: {"choices":[]}\n\ndata: {"choices":[],"usage":', False),
                       (b'{"prompt_tokens":40,"completion_tokens":60}}\n\ndata: [DONE]\n\n', True)):
        ex.response_chunk, ex.response_end = chunk, end
        await s.on_response_body(ex)
    await s.on_complete(ex)
    assert ex.facts["usage"]["total_tokens"] == 100
    assert ex.facts["budgets"]["daily-tokens"]["settled"] == "metered"
    assert int(await store.get(reservation.key)) == 100


async def test_failed_upstream_releases_the_reservation():
    store = MemoryStore()
    s = stage(store, text="limits:\n  budgets:\n    - {id: d, limit: 1000}\n")
    ctx = chat_ctx({"model": "gpt-x", "max_tokens": 10})
    await s.on_request(ctx)
    key = ctx.handoff.metering.reservations[0].key
    ex = Exchange(request=ctx.request, handoff=ctx.handoff, response_status=503)
    await s.on_complete(ex)
    assert int(await store.get(key)) == 0
    assert ex.facts["budgets"]["d"]["settled"] == "released"


async def test_budget_exhaustion_is_a_429_until_the_period_ends():
    s = stage(text="limits:\n  budgets:\n    - {id: d, limit: 300}\n  estimate: {default_max_tokens: 100}\n")
    await s.on_request(chat_ctx({"model": "gpt-x"}))
    await s.on_request(chat_ctx({"model": "gpt-x"}))
    with pytest.raises(TooManyRequests) as info:
        await s.on_request(chat_ctx({"model": "gpt-x"}))
    assert info.value.reason == "budget.exceeded" and 0 < int(info.value.headers["retry-after"]) <= 86400


async def test_cost_budget_uses_the_price_table():
    store = MemoryStore()
    s = stage(store, text="limits:\n  budgets:\n    - {id: c, key: [tenant], unit: cost, limit: 1.0}\n"
                          "  prices:\n    'gpt-*': {input: 10, output: 30, cached_input: 1}\n")
    ctx = chat_ctx({"model": "gpt-x", "max_tokens": 1000})
    await s.on_request(ctx)
    ex = Exchange(request=ctx.request, handoff=ctx.handoff, response_status=200,
                  response_headers={"content-type": "application/json"},
                  response_chunk=json.dumps({"usage": {"prompt_tokens": 1000, "completion_tokens": 100,
                                                       "prompt_tokens_details": {"cached_tokens": 400}}}).encode(),
                  response_end=True)
    await s.on_response_body(ex)
    await s.on_complete(ex)
    # 600 uncached * 10 + 400 cached * 1 + 100 * 30 = 9,400 micro-units
    assert ex.facts["budgets"]["c"]["actual"] == 9400
    assert int(await store.get(ctx.handoff.metering.reservations[0].key)) == 9400


async def test_store_outage_fails_closed_or_open_per_limit():
    from authz.dev.stack import free_port

    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.1, connect_timeout=0.05)
    closed = stage(dead, text="limits:\n  rate_limits:\n    - {id: r, rate: 5/s}\n")
    with pytest.raises(Unavailable) as info:
        await closed.on_request(tool_ctx("x"))
    assert info.value.status == 503 and info.value.reason == "limits.store_unavailable"
    opened = stage(dead, text="limits:\n  rate_limits:\n    - {id: r, rate: 5/s, on_store_error: fail_open}\n")
    ctx = tool_ctx("x")
    await opened.on_request(ctx)
    assert ctx.facts["limits"] == {"store": "unavailable", "fail_open": ["r"]}
    await dead.close()


def test_cost_budget_needs_prices():
    from authz.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a prices table"):
        parse_config("limits:\n  budgets:\n    - {id: c, unit: cost, limit: 1}\n", env={})
    with pytest.raises(ConfigError, match="expected a rate"):
        parse_config("limits:\n  rate_limits:\n    - {id: r, rate: lots}\n", env={})



async def test_limits_show_reports_usage_from_redis(tmp_path, redis_url, capsys):
    from authz.cli.limits import main, usage

    cfg = tmp_path / "authz.yaml"
    cfg.write_text(f"store: {{redis_url: '{redis_url}', key_prefix: 'show{id(tmp_path)}:'}}\n" + CONFIG)
    from authz.config import load_config

    config, _ = load_config(cfg)
    store = RedisStore(redis_url, timeout=2, prefix=config.store.key_prefix)
    s = LimitsStage(config.limits, store)
    await s.on_request(chat_ctx({"model": "gpt-x", "max_tokens": 50}))
    rows = {r["id"]: r for r in await usage(str(cfg), {"user": "oscar", "tenant": "acme"})}
    assert rows["per-user"]["remaining"] == 1
    assert rows["daily-tokens"]["used"] > 50 and rows["daily-tokens"]["limit"] == 1000
    assert rows["daily-cost"]["unit"] == "cost"
    await store.close()
    assert main([]) == 2
    import asyncio

    assert await asyncio.to_thread(main, ["show", "-c", str(cfg), "--user", "oscar", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert "per-user" in out and "daily-tokens" in out and "used" in out


def llm_ctx(path: str, body: dict, principal=OSCAR) -> Context:
    raw = json.dumps(body).encode()
    return Context(request=Request(id="r", method="POST", scheme="http", host="h", path=path, headers={},
                                   body=raw), principal=principal)


@pytest.mark.parametrize(("path", "body", "expected"), [
    # token ids count one token each, even where their bytes / 4 is fewer
    ("/v1/embeddings", {"model": "gpt-e", "input": [1] * 300}, 300),
    ("/v1/embeddings", {"model": "gpt-e", "input": [[1] * 100, [2] * 50, "abcdefgh" * 10]}, 170),
    ("/v1/images/generations", {"model": "gpt-image", "prompt": "a cat", "n": 2}, None),
])
async def test_estimates_for_embeddings_and_images(path, body, expected):
    s = stage(text="limits:\n  budgets:\n    - {id: d, limit: 100000}\n"
                   "  estimate: {bytes_per_token: 4, tokens_per_image: 1000}\n")
    ctx = llm_ctx(path, body)
    await s.on_request(ctx)
    amount = ctx.handoff.metering.reservations[0].amount
    by_size = -(-len(ctx.request.body) // 4)
    if expected is None:  # an image: its prompt and tokens_per_image per image
        assert amount == by_size + 2 * 1000
    else:
        assert amount == max(by_size, expected)
        assert expected > by_size or "abcdefgh" in ctx.request.body.decode()


async def test_a_stream_cut_short_is_charged_its_prompt_and_what_was_streamed():
    store = MemoryStore()
    s = stage(store, text="limits:\n  budgets:\n    - {id: d, limit: 100000}\n"
                          "  estimate: {bytes_per_token: 4}\n")
    ctx = chat_ctx({"model": "gpt-x", "max_tokens": 4000, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]})
    await s.on_request(ctx)
    reservation = ctx.handoff.metering.reservations[0]
    prompt = ctx.handoff.metering.prompt_tokens
    assert reservation.amount == prompt + 4000
    ex = Exchange(request=ctx.request, handoff=ctx.handoff, response_status=200,
                  response_headers={"content-type": "text/event-stream"})
    ex.response_chunk = b'data: {"choices":[{"delta":{"content":"Twelve bytes"}}]}\n\n'
    await s.on_response_body(ex)  # then the client goes away: no end_of_stream, no usage
    await s.on_complete(ex)
    assert ex.facts["budgets"]["d"]["settled"] == "streamed"
    assert int(await store.get(reservation.key)) == prompt + 3


async def _second_check(store: MemoryStore, s: LimitsStage) -> tuple[list[str], list[Any], Context]:
    """A first Check, what its counters then hold, and a second Check (its context)."""
    first = chat_ctx({"model": "gpt-x", "max_tokens": 10})
    await s.on_request(first)
    keys = [r.key for r in first.handoff.metering.reservations] + ["rl:{user=oscar}:per-user"]
    before = [await store.get(k) for k in keys]
    second = chat_ctx({"model": "gpt-x", "max_tokens": 10})
    await s.on_request(second)
    return keys, before, second


async def test_an_undo_after_a_refusal_leaves_every_counter_as_it_was():
    store = MemoryStore()
    s = stage(store)
    keys, before, second = await _second_check(store, s)
    assert len(second.on_refusal) == 1
    for give_back in second.on_refusal:
        await give_back()
    assert [await store.get(k) for k in keys] == before


async def test_a_refusal_in_process_gives_back_what_check_took_from_the_handoff():
    """Process (maybe another replica) refuses before the request goes upstream: the rate charge
    and the reservation Check made are given back from the hand-off alone, and nothing is settled
    afterwards (no second release)."""
    from authz.envoy import handoff as wire
    from authz.pipeline import Pipeline

    store = MemoryStore()
    s = stage(store)
    keys, before, second = await _second_check(store, s)
    assert [await store.get(k) for k in keys] != before
    handoff = wire.decode(wire.encode(second.handoff)[wire.FIELD])
    assert [c.key for c in handoff.rate_charges] == ["rl:{user=oscar}:per-user"]
    other = stage(store)  # a fresh stage: nothing of the Check's context survives
    ex = Exchange(request=second.request, handoff=handoff, refused=True)
    await Pipeline([other]).complete(ex)
    assert [await store.get(k) for k in keys] == before
    assert {b["settled"] for b in ex.facts["budgets"].values()} == {"released"}
