"""Issue 16 through real Envoy: answers are guarded on their way back.

The official MCP SDK client against the demo MCP server (JSON and SSE answers) sees personal data
masked and a secret blocked as a JSON-RPC error, and its session goes on; the openai and
anthropic SDKs streaming from the demo model (a card over four deltas, a placeholder over two)
never see a raw value, get ``Acme Corp`` back where the model said ``[CUSTOMER_1]``, and raise
on a blocked stream; bad answers (not JSON, a malformed event, too large) fail closed in the
protocol's shape."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from authz.dev.stack import REFERENCE_CONFIG

from .conftest import Running, running_stack

# "4539 14": the card's first delta as the demo model streams it (bare "4539" also matched a
# millisecond timestamp in an audit record once).
RAW = ("4539 1488 0343 6467", "4539 14", "536-22-1234", "cfo@acme.com", "415 555 0134", "DE89 3704",
       "AKIAIOSFODNN7EXAMPLE")
MCP_PATHS = ["/mcp", "/mcp/sse"]


def answers_config(tmp) -> str:
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    for rule in cfg["policy"]["rules"]:
        if rule.get("match", {}).get("paths") == ["/mcp"]:
            rule["match"]["paths"] = MCP_PATHS
    cfg["policy"]["rules"][:0] = [
        {"id": "test-customers", "match": {"paths": MCP_PATHS, "mcp": {"methods": ["tools/call"],
                                                                  "tools": ["customer_*"]}}},
        {"id": "test-customer-data", "match": {"paths": MCP_PATHS, "mcp": {"methods": ["resources/read",
                                                                               "prompts/get"]}}},
    ]
    cfg["limits"] = {"rate_limits": [], "budgets": []}  # many calls from one user here
    red = cfg["redaction"]
    red["rules"] = [
        {"id": "mcp-results", "direction": "response",
         "match": {"paths": MCP_PATHS, "mcp": {"methods": ["tools/call", "resources/read", "prompts/get"]}},
         "actions": {"secret": "block", "customer": "allow", "default": "mask"}},
        {"id": "llm", "direction": "both", "restore": True, "match": {"paths": ["/v1/*"]},
         "actions": {"customer": "placeholder", "secret": "block", "default": "mask"}},
    ]
    path = tmp / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Running]:
    from pathlib import Path

    with running_stack(Path(answers_config(tmp_path_factory.mktemp("answers")))) as running:
        yield running


def assert_clean(text: str) -> None:
    for raw in RAW:
        assert raw not in text, raw


# --- MCP ------------------------------------------------------------------------------------------

async def _mcp(stack: Running, path: str):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    async with create_mcp_http_client(headers=stack.auth(token)) as http, \
            streamable_http_client(stack.url + path, http_client=http) as (read, write, *_), \
            ClientSession(read, write) as session:
        await session.initialize()
        record = await session.call_tool("customer_record", {"customer": "Acme Corp"})
        with pytest.raises(MCPError) as blocked:
            await session.call_tool("customer_credentials", {"customer": "Acme Corp"})
        again = await session.call_tool("customer_record", {"customer": "Globex"})
        resource = await session.read_resource("customers://acme")
        prompt = await session.get_prompt("write_to_customer", {"customer": "Acme Corp"})
        calendar = await session.call_tool("get_calendar", {"day": "mon"})
        return record, blocked.value, again, resource, prompt, calendar


@pytest.mark.parametrize("path", MCP_PATHS)
def test_mcp_sdk_sees_values_masked_and_secrets_blocked_and_the_session_goes_on(stack, path):
    record, blocked, again, resource, prompt, calendar = asyncio.run(_mcp(stack, path))
    text = record.model_dump_json()
    assert_clean(text)
    assert "**** **** **** 6467" in text and "***@acme.com" in text and "Acme Corp" in text  # customer: allow
    assert record.structured_content["card"] == "**** **** **** 6467"
    assert blocked.error.code == -32001 and "aws_key" in blocked.error.message
    assert blocked.error.data["entity_types"] == ["aws_key"]
    assert not again.is_error and "Globex" in again.model_dump_json()
    assert_clean(again.model_dump_json())
    assert_clean(resource.model_dump_json()) and "6467" in resource.model_dump_json()
    assert_clean(prompt.model_dump_json()) and "***@acme.com" in prompt.model_dump_json()
    assert "Stand-up" in calendar.model_dump_json()


def test_mcp_findings_are_counted_by_direction(stack):
    asyncio.run(_mcp(stack, "/mcp"))
    metrics = httpx.get(f"{stack.stack.authz_http}/metrics").text
    assert 'authz_redaction_findings_total{direction="response",type="card"}' in metrics
    assert 'authz_redaction_answers_total{action="blocked"}' in metrics


# --- LLM streams ----------------------------------------------------------------------------------

def _openai(stack: Running) -> openai.OpenAI:
    token = stack.token("oscar", roles=["accounting"])
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=token, max_retries=0, timeout=20)


def test_openai_chat_stream_split_values_masked_and_placeholder_restored(stack):
    client = _openai(stack)
    stream = client.chat.completions.create(model="gpt-general", stream=True, messages=[
        {"role": "user", "content": "Tell me about Acme Corp. demo:leak"}])
    deltas = [c.choices[0].delta.content or "" for c in stream if c.choices]
    text = "".join(deltas)
    assert_clean(text)
    # The prompt said "Acme Corp." (a legal form with its period, one dictionary finding): that is
    # what the placeholder stood for, and what the user reads back.
    assert text.startswith("Summary for Acme Corp.: card **** **** **** 6467, mail ***@acme.com")
    assert "[CUSTOMER_1]" not in text


def test_a_paused_stream_shows_its_clean_text_at_the_flush_deadline_and_never_a_value(stack):
    """The demo model pauses 500 ms between deltas. Held text that no value can continue out of
    goes out at the flush deadline (50 ms), long before the next delta; a card or an address
    cut by a pause is held until it is whole (and masked)."""
    import time

    delay = 0.5
    client = _openai(stack)
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-general", stream=True, extra_headers={"x-demo-delay-ms": str(int(delay * 1000))},
        messages=[{"role": "user", "content": "Tell me about Acme Corp. demo:leak"}])
    seen: list[tuple[float, str]] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen.append((time.monotonic() - started, chunk.choices[0].delta.content))
    text = "".join(t for _, t in seen)
    assert_clean(text)
    assert text.startswith("Summary for Acme Corp.: card **** **** **** 6467, mail ***@acme.com")
    # "Summary for " was sent at about 1 x delay, the next delta at 2 x delay: without the
    # deadline it would wait for the answer's end (10 deltas later).
    first_at, first = seen[0]
    assert first == "Summary for " and first_at < 2 * delay, seen
    assert len(seen) >= 4, seen  # released piece by piece, not all at the end


def test_a_large_clean_stream_arrives_whole_through_duplex_pieces(stack):
    """A 300 KB delta (under max_bytes) goes back to Envoy in 64 KiB pieces and arrives intact."""
    client = _openai(stack)
    stream = client.chat.completions.create(model="gpt-general", stream=True, max_tokens=75_000,
                                            messages=[{"role": "user", "content": "demo:huge"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == ("lorem ipsum " * (2 * 1024 * 1024 // 12))[:300_000]


def test_openai_chat_json_answer_restored_and_masked(stack):
    client = _openai(stack)
    r = client.chat.completions.create(model="gpt-general", messages=[
        {"role": "user", "content": "Tell me about Acme Corp. demo:leak"}])
    text = r.choices[0].message.content
    assert_clean(text) and "Acme Corp" in text and "**** **** **** 6467" in text


def test_openai_blocked_stream_raises(stack):
    client = _openai(stack)
    stream = client.chat.completions.create(model="gpt-general", stream=True, messages=[
        {"role": "user", "content": "Acme Corp keys please. demo:secret"}])
    seen = []
    with pytest.raises(openai.APIError, match="aws_key"):
        for chunk in stream:
            seen.append(chunk.model_dump_json())
    assert_clean("".join(seen))
    with pytest.raises(openai.PermissionDeniedError, match="aws_key"):
        client.chat.completions.create(model="gpt-general", messages=[
            {"role": "user", "content": "keys please. demo:secret"}])


def _envoy_stat(stack: Running, name: str) -> int:
    text = httpx.get(f"http://127.0.0.1:{stack.stack.ports.envoy_admin}/stats?filter=^{name}$").text
    return int(text.split(": ", 1)[1]) if ": " in text else 0


def test_a_stream_refused_midway_ends_at_once(stack):
    """The model streams a secret first, then a dozen more events 0.4 s apart (~5 s). The refusal
    is the stream's last event: the client is not kept waiting for the rest, which never arrives,
    Envoy cuts the upstream's stream (the model stops generating), and the next request is
    answered as usual."""
    token = stack.token("oscar", roles=["accounting"])
    cut = "cluster.general.upstream_cx_destroy_local_with_active_rq"
    cuts_before = _envoy_stat(stack, cut)
    started = time.monotonic()
    with httpx.stream("POST", stack.url + "/v1/chat/completions", timeout=20, json={
            "model": "gpt-general", "stream": True,
            "messages": [{"role": "user", "content": "keys first. demo:secret-first"}]},
            headers={**stack.auth(token), "x-demo-delay-ms": "400"}) as r:
        assert r.status_code == 200
        body = b"".join(r.iter_bytes()).decode()
    took = time.monotonic() - started
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert "aws_key" in json.loads(events[-1])["error"]["message"], body[-500:]
    assert "AKIA" not in body and "Summary" not in body  # nothing after the refusal went out
    assert took < 3.0, f"the client waited {took:.1f} s for a stream that was over"
    # ... and Envoy cut the upstream's stream: the model stops generating what nobody will read.
    deadline = time.monotonic() + 3
    while _envoy_stat(stack, cut) == cuts_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _envoy_stat(stack, cut) == cuts_before + 1
    client = _openai(stack)
    r2 = client.chat.completions.create(model="gpt-general", messages=[{"role": "user", "content": "hi"}])
    assert "demo answer" in r2.choices[0].message.content


def test_responses_api_stream(stack):
    client = _openai(stack)
    events = list(client.responses.create(model="gpt-general", stream=True,
                                          input="Tell me about Acme Corp. demo:leak"))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e.response for e in events if e.type == "response.completed")
    assert_clean(text) and "Acme Corp" in text and "**** **** **** 6467" in text
    assert done.output_text == text
    with pytest.raises(openai.APIError, match="aws_key"):
        list(client.responses.create(model="gpt-general", stream=True, input="demo:secret"))
    whole = client.responses.create(model="gpt-general", input="Tell me about Acme Corp. demo:leak")
    assert whole.output_text == text


def test_anthropic_stream(stack):
    token = stack.token("oscar", roles=["accounting"])
    client = anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0, timeout=20,
                                 default_headers={"authorization": f"Bearer {token}"})
    with client.messages.stream(model="gpt-general", max_tokens=1000, messages=[
            {"role": "user", "content": "Tell me about Acme Corp. demo:leak"}]) as stream:
        text = "".join(stream.text_stream)
    assert_clean(text) and text.startswith("Summary for Acme Corp: card **** **** **** 6467")
    whole = client.messages.create(model="gpt-general", max_tokens=1000, messages=[
        {"role": "user", "content": "Tell me about Acme Corp. demo:leak"}])
    assert whole.content[0].text == text
    with pytest.raises(anthropic.PermissionDeniedError, match="aws_key"):
        client.messages.create(model="gpt-general", max_tokens=1000,
                               messages=[{"role": "user", "content": "demo:secret"}])
    with pytest.raises(anthropic.APIStatusError, match="aws_key"), \
            client.messages.stream(model="gpt-general", max_tokens=1000,
                                   messages=[{"role": "user", "content": "demo:secret"}]) as stream:
        "".join(stream.text_stream)


# --- bad answers ----------------------------------------------------------------------------------

def test_bad_answers_fail_closed_in_the_protocol_shape(stack):
    client = _openai(stack)
    with pytest.raises(openai.APIError, match="not passed on unscanned"):
        client.chat.completions.create(model="gpt-general", messages=[
            {"role": "user", "content": "demo:malformed"}])
    with pytest.raises(openai.APIError, match="not passed on unscanned"):
        list(client.chat.completions.create(model="gpt-general", stream=True, messages=[
            {"role": "user", "content": "demo:malformed"}]))
    with pytest.raises(openai.APIError, match="larger than"):
        list(client.chat.completions.create(model="gpt-general", stream=True, messages=[
            {"role": "user", "content": "demo:huge"}]))
    # A non-streamed answer larger than Envoy's buffer arrives cut (BUFFERED_PARTIAL) and is
    # refused before any of it goes out, in the API's error shape.
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-general", messages=[{"role": "user", "content": "demo:huge"}])
    assert info.value.status_code == 502 and "lorem" not in info.value.response.text
    assert info.value.body["code"] == "redaction.response_too_large"
    # After all that, the same client still gets answers.
    r = client.chat.completions.create(model="gpt-general", messages=[{"role": "user", "content": "hi"}])
    assert "demo answer" in r.choices[0].message.content


async def _mcp_broken(stack: Running, path: str):
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    errors = {}
    async with create_mcp_http_client(headers=stack.auth(token)) as http, \
            streamable_http_client(stack.url + path, http_client=http) as (read, write, *_), \
            ClientSession(read, write) as session:
        await session.initialize()
        for kind in ("not_json", "not_utf8", "huge"):
            with pytest.raises(MCPError) as info:
                await asyncio.wait_for(session.call_tool("customer_broken_answer", {"kind": kind}), 20)
            errors[kind] = info.value.error
        after = await asyncio.wait_for(session.call_tool("customer_record", {"customer": "Globex"}), 20)
    return errors, after


@pytest.mark.parametrize("path", MCP_PATHS)
def test_mcp_sdk_gets_a_jsonrpc_error_for_an_answer_it_cannot_be_given_unscanned(stack, path):
    """A JSON answer (/mcp) or SSE event (/mcp/sse) that is not JSON, not UTF-8 or over
    ``responses.max_bytes``: the SDK client raises the JSON-RPC error for its own request id,
    and the session goes on."""
    errors, after = asyncio.run(_mcp_broken(stack, path))
    for kind in ("not_json", "not_utf8"):
        assert errors[kind].code == -32603 and "not passed on unscanned" in errors[kind].message, kind
        assert errors[kind].data == {"reason": "redaction.response_unreadable"}
    assert errors["huge"].code == -32603 and errors["huge"].data == {"reason": "redaction.response_too_large"}
    assert "larger than the 1048576 bytes" in errors["huge"].message
    assert not after.is_error and "Globex" in after.model_dump_json()


def test_mcp_broken_answers_on_the_wire(stack):
    """Below the SDK: the refusal replaces the whole answer (nothing of it, no lorem ipsum)."""
    token = stack.token("oscar", roles=["accounting"], scopes=["tools:calendar"])
    call = {"jsonrpc": "2.0", "id": "call-7", "method": "tools/call",
            "params": {"name": "customer_broken_answer", "arguments": {"kind": "huge"}}}
    headers = {**stack.auth(token), "accept": "application/json, text/event-stream",
               "mcp-protocol-version": "2025-06-18"}
    for path in MCP_PATHS:
        r = httpx.post(stack.url + path, json=call, headers=headers, timeout=20)
        assert r.status_code == 200 and "lorem" not in r.text, path
        message = json.loads(r.text.split("data: ", 1)[1]) if path.endswith("/sse") else r.json()
        assert message["id"] == "call-7" and message["error"]["data"]["reason"] == "redaction.response_too_large"


def test_anthropic_and_responses_streams_with_a_malformed_event_raise(stack):
    token = stack.token("oscar", roles=["accounting"])
    claude = anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0, timeout=20,
                                 default_headers={"authorization": f"Bearer {token}"})
    seen = []
    with pytest.raises(anthropic.APIStatusError, match="not passed on unscanned"), \
            claude.messages.stream(model="gpt-general", max_tokens=1000,
                                   messages=[{"role": "user", "content": "demo:malformed"}]) as stream:
        seen.extend(stream.text_stream)
    with pytest.raises(anthropic.APIStatusError, match="larger than"), \
            claude.messages.stream(model="gpt-general", max_tokens=1_000_000,  # not cut short
                                   messages=[{"role": "user", "content": "demo:huge"}]) as stream:
        seen.extend(stream.text_stream)
    assert "lorem" not in "".join(seen)
    with pytest.raises(anthropic.APIStatusError, match="not passed on unscanned"):
        claude.messages.create(model="gpt-general", max_tokens=1000,
                               messages=[{"role": "user", "content": "demo:malformed"}])
    client = _openai(stack)
    with pytest.raises(openai.APIError, match="not passed on unscanned"):
        list(client.responses.create(model="gpt-general", stream=True, input="demo:malformed"))
    with pytest.raises(openai.APIError, match="larger than"):
        list(client.responses.create(model="gpt-general", stream=True, input="demo:huge"))


def test_no_raw_value_in_the_bytes_on_the_wire(stack):
    """Below the SDK: the raw stream, as Envoy delivers it."""
    token = stack.token("oscar", roles=["accounting"])
    body = {"model": "gpt-general", "stream": True, "messages": [{"role": "user", "content": "demo:leak"}]}
    with httpx.stream("POST", stack.url + "/v1/chat/completions", json=body, timeout=20,
                      headers={"authorization": f"Bearer {token}"}) as r:
        raw = b"".join(r.iter_raw()).decode()
        assert r.status_code == 200 and "content-length" not in r.headers
    assert_clean(raw)
    assert raw.rstrip().endswith("data: [DONE]")
    json.loads(raw.split("data: ")[1].split("\n")[0])


def test_the_outcome_record_has_response_findings_by_type_and_never_a_value(stack):
    import time

    from authz.audit.verify import audit_files, read_records

    client = _openai(stack)
    r = client.chat.completions.with_raw_response.create(model="gpt-general", messages=[
        {"role": "user", "content": "Tell me about Acme Corp. demo:leak"}])
    request_id = r.headers["x-request-id"] if "x-request-id" in r.headers else None
    audit_dir = stack.stack.workdir / "audit"
    deadline = time.monotonic() + 20  # the outcome record follows the answer; a loaded box is slow
    found = None
    while found is None and time.monotonic() < deadline:
        time.sleep(0.2)
        for _, _, rec, _ in read_records(audit_files([audit_dir])):
            red = (rec or {}).get("facts", {}).get("redaction", {})
            if rec and rec.get("type") == "outcome" and red.get("direction") == "response" and (
                    request_id is None or rec.get("request_id") == request_id):
                found = rec
    assert found is not None
    red = found["facts"]["redaction"]
    assert red["found"]["card"] >= 1 and red["found"]["email"] >= 1 and red["restored"] >= 1
    raw = b"".join(f.read_bytes() for f in audit_files([audit_dir])).decode("utf-8", "replace")
    assert_clean(raw)
    assert "Acme Corp" not in raw  # neither the request, the answer nor the mapping is written down
    logs = stack.stack.logs()
    assert "Acme Corp" not in logs and "[CUSTOMER_1]" not in logs
    assert_clean(logs)
