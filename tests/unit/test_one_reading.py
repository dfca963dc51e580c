"""One reading of each request, through the real servicers and the reference pipeline: the body
is parsed once for Check and Process together, the hand-off keeps every type, and the tools/list
filter gives the same answer as tools/call for every condition type."""

from __future__ import annotations

import datetime
import json

import pytest
import yaml

from authz.config import parse_config
from authz.envoy import handoff
from authz.model import ANONYMOUS, Action, Handoff, Metering, Principal, Reservation
from authz.request import jsonbody
from authz.runtime import Runtime
from tests.unit.test_hostile_inputs import (
    IDP,
    JSON,
    ROOT,
    P,
    body,
    check,
    check_request,
    headers,
    immediate,
    metadata,
    process,
    reference_config,
    token,
)


@pytest.fixture
async def rt(tmp_path):
    runtime = Runtime(tmp_path / "authz.yaml", config=reference_config(tmp_path / "audit"), sha256="0" * 64)
    await runtime.start()
    yield runtime
    await runtime.close()


async def test_the_body_is_parsed_once_for_check_and_process(rt):
    request = {"model": "gpt-general", "stream": True,
               "messages": [{"role": "user", "content": "mail oscar@acme.com, Acme Corp pays"}]}
    raw = json.dumps(request).encode()
    before = jsonbody.PARSES.n
    status, _, resp = await check(rt, check_request("/v1/chat/completions", raw))
    assert status == 200
    responses = await process(rt, [
        P(request_headers=headers({":path": "/v1/chat/completions", ":method": "POST", "content-type": JSON}),
          metadata_context=metadata(resp.dynamic_metadata)),
        P(request_body=body(raw)),
        P(response_headers=headers({":status": "200", "content-type": "text/event-stream"})),
        P(response_body=body(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
                             b"data: [DONE]\n\n")),
    ])
    # Redaction, the usage request and metering all worked on the one reading made in Check.
    assert jsonbody.PARSES.n - before == 1
    assert immediate(responses) is None
    forwarded = json.loads(responses[1].request_body.response.body_mutation.body)
    assert forwarded["stream_options"] == {"include_usage": True}
    assert forwarded["messages"][0]["content"] == "mail ***@acme.com, [CUSTOMER_1] pays"


async def test_process_forwards_the_rewrite_only_for_the_body_check_read(rt):
    raw = json.dumps({"model": "gpt-general", "messages": [{"role": "user", "content": "x@y.com"}]}).encode()
    _, _, resp = await check(rt, check_request("/v1/chat/completions", raw))
    md = metadata(resp.dynamic_metadata)
    start = P(request_headers=headers({":path": "/v1/chat/completions", ":method": "POST"}), metadata_context=md)
    other = raw.replace(b"x@y.com", b"a@b.com")
    assert immediate(await process(rt, [start, P(request_body=body(other))])) == (503, "body.rewrite_lost")
    # Taken once: the same stream replayed finds nothing either.
    assert immediate(await process(rt, [start, P(request_body=body(raw))])) == (503, "body.rewrite_lost")


@pytest.mark.parametrize("jsonrpc_id", [7, -3, 2**70, "req-7", None])
def test_the_handoff_keeps_every_type(jsonrpc_id):
    h = Handoff(request_body="buffered", response_body="streamed", body_key="k",
                principal=Principal(subject="s", issuer="i", email="e@x", tenant="t", client="c",
                                    roles=frozenset({"a", "b"}), scopes=frozenset({"x"}),
                                    claims={"n": 10**30, "f": 1.5, "b": True, "l": [1, "2"]}, credential="api_key"),
                source_address="10.0.0.1", checked_at=1700000000.25,
                action=Action(protocol="mcp", kind="tools/list", jsonrpc_id=jsonrpc_id, max_tokens=9),
                headers={"x-team": "blue"}, filter_tools=True,
                metering=Metering(reservations=(Reservation("d", "bg:k", 12, "tokens"),), model="m", stream=True,
                                  prompt_tokens=7))
    back = handoff.decode(handoff.encode(h)[handoff.FIELD])
    assert back == h
    assert type(back.action.jsonrpc_id) is type(jsonrpc_id)
    assert handoff.decode(handoff.encode(Handoff())[handoff.FIELD]) == Handoff()
    assert Handoff().principal is ANONYMOUS


# --- tools/list shows a tool exactly when tools/call of it is allowed ----------------------------

def _closed_window() -> dict:
    now = datetime.datetime.now(datetime.UTC)
    start = (now + datetime.timedelta(hours=3)).strftime("%H:00")
    end = (now + datetime.timedelta(hours=5)).strftime("%H:00")
    return {"from": start, "to": end}


CONDITIONS = {
    "scopes_all": {"scopes_all": ["s1", "s2"]},
    "scopes_any": {"scopes_any": ["s3", "s2"]},
    "roles_any": {"roles_any": ["r9", "r1"]},
    "roles_all": {"roles_all": ["r1", "r2"]},
    "clients": {"clients": ["claude*"]},
    "subjects": {"subjects": ["yes-*"]},
    "tenants": {"tenants": ["acme"]},
    "email_domains": {"email_domains": ["acme.com"]},
    "claims": {"claims": {"dept": "finance"}},
    "headers": {"headers": {"x-team": "blue"}},
    "source_cidrs": {"source_cidrs": ["10.0.0.0/8"]},
    "time_open": {"time": {"from": "00:00", "to": "24:00"}},
    "time_closed": {"time": _closed_window()},
}
PEOPLE = {
    "yes": (dict(sub="yes-1", roles=["r1", "r2"], scope="s1 s2", azp="claude-desktop", org_id="acme",
                 email="y@acme.com", dept="finance"), {"x-team": "blue"}, "10.1.2.3"),
    "no": (dict(sub="no-1", roles=["r3"], scope="s4", azp="chatgpt", org_id="globex",
                email="n@globex.com", dept="sales"), {"x-team": "red"}, "192.0.2.7"),
}


@pytest.fixture
async def matrix_rt(tmp_path):
    raw = yaml.safe_load((ROOT / "deploy/authz/authz.yaml").read_text())
    raw["store"]["redis_url"] = ""
    raw["log"]["decisions"] = False
    raw["identity"]["issuers"] = [{"name": "dev", "issuer": IDP.issuer, "typ": "at+jwt", "algorithms": ["RS256"],
                                   "jwks": IDP.jwks(), "claims": {"tenant": "org_id"}}]
    raw["policy"]["rules"] = [
        {"id": "session", "match": {"paths": ["/mcp"], "mcp": {"methods": ["tools/list"]}}},
        *({"id": f"t-{name}", "match": {"paths": ["/mcp"], "mcp": {"methods": ["tools/call"], "tools": [name]}},
           "require": cond} for name, cond in CONDITIONS.items()),
    ]
    raw["redaction"]["enabled"] = False
    config = parse_config(yaml.safe_dump(raw), env={"AUTHZ_AUDIT_DIR": str(tmp_path / "audit")})
    runtime = Runtime(tmp_path / "authz.yaml", config=config, sha256="0" * 64)
    await runtime.start()
    yield runtime
    await runtime.close()


def _mcp(msg: dict, person: str):
    claims, extra, source = PEOPLE[person]
    req = check_request("/mcp", json.dumps(msg).encode(),
                        {"authorization": f"Bearer {token(**claims)}", "content-type": JSON, **extra})
    req.attributes.source.address.socket_address.address = source
    return req


async def _listed(rt: Runtime, person: str) -> set[str]:
    status, _, resp = await check(rt, _mcp({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, person))
    assert status == 200
    answer = json.dumps({"jsonrpc": "2.0", "id": 1,
                         "result": {"tools": [{"name": n, "inputSchema": {}} for n in CONDITIONS]}}).encode()
    responses = await process(rt, [
        # Process sees the headers as Envoy forwards them (here: none of the client's), never decides on them.
        P(request_headers=headers({":path": "/mcp", ":method": "POST"}), metadata_context=metadata(resp.dynamic_metadata)),
        P(request_body=body(b"{}")),
        P(response_headers=headers({":status": "200", "content-type": JSON})),
        P(response_body=body(answer)),
    ])
    mutated = responses[-1].response_body.response.body_mutation.body or answer
    return {t["name"] for t in json.loads(mutated)["result"]["tools"]}


async def test_tools_list_shows_a_tool_exactly_when_calling_it_is_allowed(matrix_rt):
    for person in PEOPLE:
        listed = await _listed(matrix_rt, person)
        for name in CONDITIONS:
            msg = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name, "arguments": {}}}
            status, reason, _ = await check(matrix_rt, _mcp(msg, person))
            assert (status == 200) == (name in listed), (person, name, status, reason)
            # Not trivially equal: each condition lets "yes" through and stops "no" (time: open or closed).
            expected = person == "yes" if not name.startswith("time") else name == "time_open"
            assert (status == 200) == expected, (person, name, status, reason)


@pytest.mark.parametrize("raw_id", ["7", "-3", "1180591620717411303424", '"req-é"'])
async def test_the_tools_list_refusal_written_in_process_carries_the_id_as_sent(rt, raw_id):
    """Process writes its own JSON-RPC error when a tools/list answer cannot be filtered: the id
    is the one the client sent (before the typed hand-off, 7 came back as 7.0)."""
    raw = ('{"jsonrpc":"2.0","id":' + raw_id + ',"method":"tools/list"}').encode()
    status, _, resp = await check(rt, check_request("/mcp", raw))
    assert status == 200
    responses = await process(rt, [
        P(request_headers=headers({":path": "/mcp", ":method": "POST"}), metadata_context=metadata(resp.dynamic_metadata)),
        P(request_body=body(raw)),
        P(response_headers=headers({":status": "200", "content-type": JSON})),
        P(response_body=body(b'{"jsonrpc":"2.0","id":1,"result":{"tools":[' + b"[" * 70 + b"]" * 70 + b"]}}")),
    ])
    written = responses[-1].response_body.response.body_mutation.body
    assert written.startswith(b'{"jsonrpc":"2.0","id":' + raw_id.encode() + b","), written


# --- unknown LLM APIs are refused unless a route lets them through unmetered ----------------------

@pytest.mark.parametrize(("path", "method", "problem"), [
    ("/v1/images/variations", "POST", "llm.unknown_api"),
    ("/v1/audio/transcriptions", "POST", "llm.unknown_api"),
    ("/v1/files", "POST", None),            # listed in unmetered_paths
    ("/v1/batches/b1/cancel", "POST", None),
    ("/v1/files/f1", "DELETE", None),       # not a POST: nothing to meter
    ("/v1/images/generations", "POST", None),
    ("/v1/audio/speech", "POST", None),
])
def test_unknown_llm_apis_are_refused_unless_listed(path, method, problem):
    from authz.request import Reader
    from authz.request.config import ProtocolRoute
    from authz.request.http import Request

    reader = Reader([ProtocolRoute(paths=("/v1/*",), protocol="llm",
                                   unmetered_paths=("/v1/files*", "/v1/batches*"))])
    view = reader.read(Request(id="r", method=method, scheme="http", host="h", path=path, headers={},
                               body=b'{"model": "gpt-x", "input": "hi", "prompt": "a cat"}'))
    assert (view.problem.reason if view.problem else None) == problem
    if problem is None and method == "POST" and path.startswith(("/v1/images", "/v1/audio")):
        assert view.action.model == "gpt-x" and view.action.kind in ("images.generations", "audio.speech")
