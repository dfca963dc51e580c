"""Issue 19 through real Envoy: refusals the openai and anthropic SDKs can read, the sidecar's
header namespace sealed, x-request-id on every answer, oversized headers answered."""

from __future__ import annotations

import itertools
import socket
import string
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.dev.stack import REFERENCE_CONFIG
from tests.e2e.conftest import Running, running_stack

SSN = "my ssn is 536-22-1234"


def variant(tmp: Path) -> Path:
    """The reference config, plus: a JWT in x-api-key is a bearer token (Anthropic's SDK sends
    its key there), and a model whose rate limit allows one call a minute."""
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    cfg["identity"]["token_headers"] = ["x-api-key"]
    cfg["limits"]["rate_limits"].append({"id": "tight", "key": ["user"], "rate": "1/min", "burst": 1,
                                         "match": {"paths": ["/v1/*"], "llm": {"models": ["gpt-tight"]}}})
    path = tmp / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Running]:
    with running_stack(variant(tmp_path_factory.mktemp("seams"))) as running:
        yield running


def oai(stack: Running, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=token, max_retries=0, timeout=10)


def claude(stack: Running, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=token, max_retries=0, timeout=10)


def chat(client: openai.OpenAI, model: str, text: str = "hello") -> object:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


def message(client: anthropic.Anthropic, model: str, text: str = "hello") -> object:
    return client.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": text}])


# --- refusals the SDKs can read --------------------------------------------------------------------

def test_openai_sdk_reads_every_kind_of_refusal(stack):
    oscar = oai(stack, stack.token("oscar-oai", roles=["accounting"]))
    assert chat(oscar, "gpt-general").choices[0].message.content  # the path works at all

    with pytest.raises(openai.PermissionDeniedError) as info:  # policy
        chat(oscar, "gpt-medical")
    assert "only doctors may use medical models" in str(info.value)
    assert info.value.code == "policy.role_required" and info.value.type == "permission_error"

    chat(oscar, "gpt-tight")
    with pytest.raises(openai.RateLimitError) as info:  # limits
        chat(oscar, "gpt-tight")
    assert "rate limit exceeded (tight)" in str(info.value) and info.value.code == "rate_limited"

    with pytest.raises(openai.PermissionDeniedError) as info:  # redaction
        chat(oscar, "gpt-general", SSN)
    assert "needs approval by one of the roles vp" in str(info.value)
    assert info.value.code == "redaction.approval_required"
    assert info.value.response.headers["x-authz-approval-id"] in str(info.value)

    with pytest.raises(openai.AuthenticationError) as info:  # identity
        chat(oai(stack, "not-a-token"), "gpt-general")
    assert "access token" in str(info.value) and info.value.code == "token.malformed"
    assert info.value.response.headers["x-authz-reason"] == "token.malformed"


def test_anthropic_sdk_reads_every_kind_of_refusal_and_its_key_header_carries_the_token(stack):
    dana = claude(stack, stack.token("dana-ant", roles=["doctor"]))
    assert message(dana, "gpt-medical").content  # x-api-key: <jwt> signs Dana in

    oscar = claude(stack, stack.token("oscar-ant", roles=["accounting"]))
    with pytest.raises(anthropic.PermissionDeniedError) as info:  # policy
        message(oscar, "gpt-medical")
    assert "only doctors may use medical models" in str(info.value)
    assert info.value.body["error"]["type"] == "permission_error"
    assert info.value.body["error"]["code"] == "policy.role_required"

    message(oscar, "gpt-tight")
    with pytest.raises(anthropic.RateLimitError) as info:  # limits
        message(oscar, "gpt-tight")
    assert "rate limit exceeded (tight)" in str(info.value)

    with pytest.raises(anthropic.PermissionDeniedError) as info:  # redaction
        message(oscar, "gpt-general", SSN)
    assert "needs approval by one of the roles vp" in str(info.value)

    with pytest.raises(anthropic.AuthenticationError) as info:  # identity
        message(claude(stack, "sk-ant-not-ours-0123456789abcdef"), "gpt-general")
    assert info.value.body["type"] == "error" and info.value.body["error"]["message"] in str(info.value)
    assert info.value.response.headers["x-authz-reason"]


# --- the sealed namespace --------------------------------------------------------------------------

NAME_CHARS = string.ascii_lowercase + string.digits + "-_"
USERS = itertools.count()
SIDECAR_SETS = {"x-authz-user", "x-authz-issuer", "x-authz-client", "x-authz-roles", "x-authz-scopes",
                "x-authz-assertion", "x-authz-route", "x-authz-email", "x-authz-tenant"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffixes=st.lists(st.text(NAME_CHARS, min_size=1, max_size=24), min_size=1, max_size=6, unique=True),
       value=st.text(string.ascii_letters + string.digits + " ,;=./:", min_size=1, max_size=40),
       upper=st.booleans())
def test_no_header_under_the_namespace_reaches_the_upstream(stack, suffixes, value, upper):
    token = stack.token(f"prop-{next(USERS)}", roles=["accounting"])  # the rate limit is per user
    sent = [(("X-AUTHZ-" if upper else "x-authz-") + s, value.strip() or "v") for s in suffixes]
    r = stack.http.post("/v1/chat/completions", headers=[*stack.auth(token).items(), *sent],
                        json={"model": "gpt-general", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    seen = r.json()["echo"]["headers"]
    ours = {k for k in seen if k.startswith("x-authz-")}
    # Only what the sidecar set itself arrives (identity, route), never with a client's value.
    assert ours <= SIDECAR_SETS
    assert seen["x-authz-user"].startswith("prop-") and seen["x-authz-route"] == "general"
    for name, _ in sent:
        if name.lower() not in SIDECAR_SETS:
            assert name.lower() not in seen


# --- request ids and oversized headers -------------------------------------------------------------

def test_every_answer_carries_x_request_id(stack):
    token = stack.token("oscar", roles=["accounting"])
    answers = [
        stack.http.post("/v1/chat/completions", headers=stack.auth(token),
                        json={"model": "gpt-general", "messages": []}),                # allowed
        stack.http.post("/v1/chat/completions", json={"model": "gpt-general"}),          # 401
        stack.http.post("/v1/chat/completions", headers=stack.auth(token),
                        json={"model": "gpt-medical", "messages": []}),                # 403
        stack.http.get("/nowhere", headers=stack.auth(token)),                          # no route / policy
    ]
    ids = [r.headers.get("x-request-id") for r in answers]
    assert all(ids), [(r.status_code, dict(r.headers)) for r in answers]
    assert len(set(ids)) == len(ids)
    mine = stack.http.post("/v1/chat/completions", headers={**stack.auth(token), "x-request-id": "mine-1"},
                           json={"model": "gpt-medical", "messages": []})
    assert mine.headers["x-request-id"] and mine.json()["error"]["request_id"] == mine.headers["x-request-id"]


def test_oversized_request_headers_get_a_431_with_a_body(stack):
    port = int(stack.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 140_000 + b"\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and data.endswith(b"}"):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), data[:300]
    assert b"request_headers_too_large" in body
