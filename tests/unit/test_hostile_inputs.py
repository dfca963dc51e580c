"""Hostile input from a client (through ``Check``) or an upstream (through ``Process``) gets a
deliberate answer: an allow, or a 4xx with its own reason code. Never a 500, a gRPC error, a
stage crash logged at ERROR, a hang, or a budget left in a broken state.

The real pipeline is built in-process from the reference config (deploy/authz/authz.yaml) with
the memory store, a test issuer whose keys are inline (no network) and the audit log in a
temporary directory, and driven through the real servicers with xds-protos messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as proc_pb2
from google.protobuf import struct_pb2

from authz.cli.audit import explain
from authz.config import parse_config
from authz.envoy import handoff
from authz.envoy.check import METADATA_NAMESPACE
from authz.envoy.servicers import AuthorizationServicer, ExternalProcessorServicer
from authz.identity.testing import FakeIssuer
from authz.limits.metering import MAX_TOKENS
from authz.model import Handoff
from authz.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
RESOURCE = "http://localhost:10000/mcp"  # the reference config's identity.resource default
IDP = FakeIssuer(audience=RESOURCE)  # never started: its keys are given to the config inline
IDP.issuer = "https://idp.test"

P = proc_pb2.ProcessingRequest
JSON = "application/json"
SSE = "text/event-stream"


def reference_config(audit_dir: Path):
    raw = yaml.safe_load((ROOT / "deploy/authz/authz.yaml").read_text())
    raw["store"]["redis_url"] = ""
    raw["log"]["decisions"] = False
    raw["identity"]["issuers"] = [{"name": "dev", "issuer": IDP.issuer, "typ": "at+jwt",
                                   "algorithms": ["RS256"], "jwks": IDP.jwks()}]
    return parse_config(yaml.safe_dump(raw), env={"AUTHZ_AUDIT_DIR": str(audit_dir)})


def token(**claims: Any) -> str:
    # Minted at import: valid for the whole suite (the e2e tests run first and take minutes).
    claims.setdefault("exp", int(time.time()) + 6 * 3600)
    return IDP.mint(header={"typ": "at+jwt"}, **claims)


OSCAR = token(sub="oscar", roles=["accounting"], scope="tools:calendar invoices:read")
VERA = token(sub="vera", roles=["vp"])
AUTH = {"authorization": f"Bearer {OSCAR}", "content-type": JSON}


@pytest.fixture
async def rt(tmp_path, caplog):
    runtime = Runtime(tmp_path / "authz.yaml", config=reference_config(tmp_path / "audit"),
                      sha256="0" * 64)
    await runtime.start()
    caplog.set_level(logging.WARNING)
    yield runtime
    await runtime.close()
    # A stage that crashed (500), a completion that failed (budget not settled), an audit record
    # that could not be written: each is logged at ERROR, and none may happen here.
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


# --- driving the servicers ---------------------------------------------------------------------

def check_request(path: str = "/mcp", body: bytes = b"", headers: dict[str, str] | None = None, *,
                  method: str = "POST", raw_headers: Iterable[tuple[str, bytes]] = ()
                  ) -> auth_pb2.CheckRequest:
    req = auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.id, http.method, http.host, http.path = "rid-1", method, "localhost:10000", path
    for k, v in (headers if headers is not None else AUTH).items():
        http.headers[k] = v
    for k, v in raw_headers:  # encode_raw_headers: Envoy then sends header_map, bytes as they came
        http.header_map.headers.append(base_pb2.HeaderValue(key=k, raw_value=v))
    http.raw_body = body
    return req


async def check(rt: Runtime, req: auth_pb2.CheckRequest) -> tuple[int, str, auth_pb2.CheckResponse]:
    """(HTTP status, reason, response) of one Check."""
    resp = auth_pb2.CheckResponse.FromString(await AuthorizationServicer(rt).Check(req, None))
    if resp.HasField("ok_response"):
        return 200, "ok", resp
    headers = {h.header.key: h.header.value for h in resp.denied_response.headers}
    return resp.denied_response.status.code, headers.get("x-authz-reason", ""), resp


def headers(values: dict[str, str | bytes] | Iterable[tuple[str, str | bytes]]) -> proc_pb2.HttpHeaders:
    items = values.items() if isinstance(values, dict) else values
    return proc_pb2.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v if isinstance(v, bytes) else v.encode())
        for k, v in items]))


def handoff_of(struct: struct_pb2.Struct) -> Handoff:
    return handoff.decode(struct[handoff.FIELD])


def metadata(struct: struct_pb2.Struct) -> base_pb2.Metadata:
    md = base_pb2.Metadata()
    md.filter_metadata[METADATA_NAMESPACE].CopyFrom(struct)
    return md


def body(data: bytes, end: bool = True) -> proc_pb2.HttpBody:
    return proc_pb2.HttpBody(body=data, end_of_stream=end)


async def process(rt: Runtime, msgs: list[proc_pb2.ProcessingRequest]) -> list[proc_pb2.ProcessingResponse]:
    async def stream():
        for m in msgs:
            yield m
    return [proc_pb2.ProcessingResponse.FromString(r) async for r in ExternalProcessorServicer(rt).Process(stream(), None)]


def immediate(responses: list[proc_pb2.ProcessingResponse]) -> tuple[int, str] | None:
    """(status, reason) when the stream ended with an immediate response, else None."""
    last = responses[-1]
    if not last.HasField("immediate_response"):
        return None
    reason = next(h.header.raw_value.decode() for h in last.immediate_response.headers.set_headers
                  if h.header.key == "x-authz-reason")
    return last.immediate_response.status.code, reason


async def allowed_metadata(rt: Runtime, path: str, payload: dict) -> struct_pb2.Struct:
    """What Check hands to Process (dynamic metadata) for an allowed request of Oscar's."""
    status, reason, resp = await check(rt, check_request(path, json.dumps(payload).encode()))
    assert (status, reason) == (200, "ok")
    return resp.dynamic_metadata


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


# --- Check: JSON-RPC bodies on /mcp --------------------------------------------------------------

def rpc(rest: str) -> bytes:
    return b'{"jsonrpc":"2.0",' + rest.encode() + b"}"


def call(arguments: str) -> bytes:
    return rpc('"id":1,"method":"tools/call","params":{"name":"get_calendar","arguments":' + arguments + "}")


MCP_BODIES = [
    # ids: only strings and integers; -0 is the integer 0, 1e400 a float (inf)
    ("id-float-overflow", rpc('"id":1e400,"method":"tools/list"'), 400, "mcp.invalid_jsonrpc"),
    ("id-negative-zero-int", rpc('"id":-0,"method":"tools/list"'), 200, "ok"),
    ("id-negative-zero-float", rpc('"id":-0.0,"method":"tools/list"'), 400, "mcp.invalid_jsonrpc"),
    ("id-bool", rpc('"id":true,"method":"tools/list"'), 400, "mcp.invalid_jsonrpc"),
    ("id-object", rpc('"id":{},"method":"tools/list"'), 400, "mcp.invalid_jsonrpc"),
    ("id-list", rpc('"id":[1],"method":"tools/list"'), 400, "mcp.invalid_jsonrpc"),
    ("id-4300-digits", rpc('"id":' + "9" * 4300 + ',"method":"tools/list"'), 200, "ok"),
    ("id-4301-digits", rpc('"id":' + "9" * 4301 + ',"method":"tools/list"'), 400, "mcp.invalid_json"),
    ("method-number", rpc('"id":1,"method":5'), 400, "mcp.invalid_jsonrpc"),
    ("method-null", rpc('"id":1,"method":null'), 400, "mcp.invalid_jsonrpc"),
    ("method-list", rpc('"id":1,"method":["tools/list"]'), 400, "mcp.invalid_jsonrpc"),
    ("method-empty", rpc('"id":1,"method":""'), 400, "mcp.invalid_jsonrpc"),
    ("params-list", rpc('"id":1,"method":"tools/call","params":[]'), 400, "mcp.invalid_params"),
    ("params-string", rpc('"id":1,"method":"tools/call","params":"get_calendar"'), 400, "mcp.invalid_params"),
    ("params-null", rpc('"id":1,"method":"tools/call","params":null'), 400, "mcp.invalid_params"),
    ("name-number", rpc('"id":1,"method":"tools/call","params":{"name":5}'), 400, "mcp.invalid_params"),
    # NaN and Infinity are not JSON (Python's decoder takes them; an upstream's may not)
    ("arguments-nan", call("NaN"), 400, "mcp.invalid_json"),
    ("arguments-infinity", call('{"b":-Infinity}'), 400, "mcp.invalid_json"),
    ("arguments-odd-numbers", call('{"c":1e400,"d":-0,"e":1e308}'), 200, "ok"),
    ("arguments-lone-surrogate", call('{"a":"mail a@b.com \\ud800"}'), 400, "mcp.invalid_json"),
    ("arguments-not-utf8", call('{"a":"\xff"}').replace(b"\xc3\xbf", b"\xff"), 400, "mcp.invalid_json"),
    ("arguments-depth-64", call('{"a":' + deep(61).decode() + "}"), 200, "ok"),
    ("arguments-depth-65", call('{"a":' + deep(62).decode() + "}"), 400, "mcp.invalid_json"),
    ("arguments-depth-5000", call(deep(5000).decode()), 400, "mcp.invalid_json"),
    ("duplicate-method", rpc('"id":1,"method":"tools/list","method":"tools/call"'), 400, "mcp.invalid_json"),
    ("utf8-bom", b"\xef\xbb\xbf" + rpc('"id":1,"method":"tools/list"'), 400, "mcp.invalid_json"),
    ("null", b"null", 400, "mcp.invalid_jsonrpc"),
    ("number", b"1e400", 400, "mcp.invalid_jsonrpc"),
    ("batch", b"[]", 400, "mcp.batch_unsupported"),
    ("empty", b"", 400, "mcp.empty_body"),
    ("blank", b" \r\n", 400, "mcp.invalid_json"),
    ("no-method", rpc('"id":1'), 400, "mcp.invalid_jsonrpc"),
    ("response-to-server", rpc('"id":1,"result":{}'), 200, "ok"),
]


@pytest.mark.parametrize(("payload", "status", "reason"), [c[1:] for c in MCP_BODIES],
                         ids=[c[0] for c in MCP_BODIES])
async def test_check_mcp_bodies(rt, payload, status, reason):
    assert (await check(rt, check_request("/mcp", payload)))[:2] == (status, reason)


# --- Check: LLM API bodies and bodies only redaction reads ----------------------------------------

def chat(extra: str) -> bytes:
    return b'{"model":"gpt-general","messages":[{"role":"user","content":"hi"}]' + extra.encode() + b"}"


LLM_BODIES = [
    ("max-tokens-inf", "/v1/chat/completions", chat(',"max_tokens":1e400'), JSON, 200, "ok"),
    ("max-tokens-huge", "/v1/chat/completions", chat(',"max_tokens":' + "9" * 4000), JSON, 200, "ok"),
    ("max-tokens-negative", "/v1/chat/completions", chat(',"max_tokens":-5'), JSON, 200, "ok"),
    ("max-tokens-bool", "/v1/chat/completions", chat(',"max_tokens":true'), JSON, 200, "ok"),
    ("stream-options-string", "/v1/chat/completions", chat(',"stream":true,"stream_options":"x"'), JSON, 200, "ok"),
    ("model-number", "/v1/chat/completions", b'{"model":5}', JSON, 400, "llm.model_missing"),
    ("model-nul", "/v1/chat/completions", b'{"model":"\\u0000"}', JSON, 200, "ok"),
    ("model-100k", "/v1/chat/completions", b'{"model":"' + b"m" * 100_000 + b'"}', JSON, 200, "ok"),
    ("model-lone-surrogate", "/v1/chat/completions", b'{"model":"\\udfff"}', JSON, 400, "llm.invalid_json"),
    ("not-an-object", "/v1/chat/completions", b"[1]", JSON, 400, "llm.invalid_json"),
    ("depth-5000", "/v1/chat/completions", deep(5000), JSON, 400, "llm.invalid_json"),
    ("charset-nul", "/v1/chat/completions", chat(""), "application/json; charset=\x00", 200, "ok"),
    # /v1/models and unknown /v1 paths are allowed without parsing: only redaction reads them
    ("redaction-depth-100", "/v1/models", deep(100), JSON, 400, "redaction.too_deep"),
    ("redaction-depth-990", "/v1/models", b'{"a":' * 990 + b"1" + b"}" * 990, JSON, 400, "redaction.too_deep"),
    ("redaction-depth-5000", "/v1/files", deep(5000), JSON, 400, "redaction.too_deep"),
    ("redaction-depth-5000-no-type", "/v1/files", deep(5000), "", 400, "redaction.too_deep"),
    # The label never switches the JSON reading off: JSON sent as text is still JSON too deep to scan.
    ("redaction-depth-5000-as-text", "/v1/files", deep(5000), "text/plain", 400, "redaction.too_deep"),
    ("redaction-depth-63", "/v1/models", deep(63), JSON, 200, "ok"),
    ("form-bad-escapes", "/v1/files", b"a=%ZZ&b=%C3%28&c=x@y.com&%", "application/x-www-form-urlencoded", 200, "ok"),
    ("text-not-utf8", "/v1/files", b"\xff\xfe mail x@y.com \xed\xa0\x80", "text/plain; charset=utf-16", 200, "ok"),
    ("blank-no-type", "/v1/files", b"  ", "", 200, "ok"),
    ("too-large-to-scan", "/v1/models", b"x" * (1024 * 1024 + 1), "text/plain", 413, "body.too_large"),
]


@pytest.mark.parametrize(("path", "payload", "ctype", "status", "reason"), [c[1:] for c in LLM_BODIES],
                         ids=[c[0] for c in LLM_BODIES])
async def test_check_llm_and_scanned_bodies(rt, path, payload, ctype, status, reason):
    req = check_request(path, payload, {**AUTH, "content-type": ctype})
    assert (await check(rt, req))[:2] == (status, reason)


# --- Check: headers and paths -------------------------------------------------------------------

LIST = rpc('"id":1,"method":"tools/list"')

HEADER_CASES = [
    ("request-id-controls", {**AUTH, "x-request-id": "\x00\r\n\x7f" * 1000}, (), 200, "ok"),
    ("request-id-1mb", {**AUTH, "x-request-id": "r" * 1_000_000}, (), 200, "ok"),
    ("bearer-crlf", {**AUTH, "authorization": f"Bearer {OSCAR}\r\nx-authz-user: ceo"}, (), 401, "credentials.malformed"),
    ("bearer-nul", {**AUTH, "authorization": f"Bearer\x00{OSCAR}"}, (), 401, "credentials.bad_scheme"),
    ("bearer-1mb", {**AUTH, "authorization": "Bearer " + "a" * 1_000_000}, (), 401, "token.too_large"),
    ("bearer-joined", {**AUTH, "authorization": f"Bearer {OSCAR},{OSCAR}"}, (), 401, "credentials.multiple"),
    ("mcp-method-nul", {**AUTH, "mcp-method": "tools/list\x00"}, (), 400, "mcp.header_mismatch"),
    ("mcp-name-100k", {**AUTH, "mcp-name": "x" * 100_000}, (), 400, "mcp.header_mismatch"),
    ("approval-not-an-id", {**AUTH, "x-authz-approval": "%ZZ:granted\r\n"}, (), 200, "ok"),
    ("content-type-garbage", {**AUTH, "content-type": "\x01;;;=\x7f"}, (), 415, "mcp.unsupported_media_type"),
    ("partial-body-claimed", {**AUTH, "x-envoy-auth-partial-body": "TRUE"}, (), 413, "body.truncated"),
    # header_map: raw bytes as the client sent them, repeats kept apart
    ("raw-not-utf8", {}, [("authorization", f"Bearer {OSCAR}".encode()), ("content-type", JSON.encode()),
                          ("x-request-id", b"\xff\xfe\xed\xa0\x80"), ("x-user-id", b"\xc0\xaf")], 200, "ok"),
    ("raw-two-bearers", {}, [("authorization", f"Bearer {OSCAR}".encode())] * 2, 401, "credentials.multiple"),
    ("raw-two-content-types", {}, [("authorization", f"Bearer {OSCAR}".encode()),
                                   ("content-type", JSON.encode()), ("content-type", b"text/plain")],
     415, "mcp.unsupported_media_type"),
    ("raw-two-mcp-methods", {}, [("authorization", f"Bearer {OSCAR}".encode()), ("content-type", JSON.encode()),
                                 ("mcp-method", b"tools/list"), ("mcp-method", b"tools/list")], 400, "mcp.header_mismatch"),
]


@pytest.mark.parametrize(("hdrs", "raw", "status", "reason"), [c[1:] for c in HEADER_CASES],
                         ids=[c[0] for c in HEADER_CASES])
async def test_check_hostile_headers(rt, hdrs, raw, status, reason):
    assert (await check(rt, check_request("/mcp", LIST, hdrs, raw_headers=raw)))[:2] == (status, reason)


PATH_CASES = [
    ("empty", "", 403, "policy.no_rule"),
    ("only-query", "?", 403, "policy.no_rule"),
    ("asterisk", "*", 403, "policy.no_rule"),
    ("nul", "/\x00", 403, "policy.no_rule"),
    ("100k", "/" + "a" * 100_000, 403, "policy.no_rule"),
    ("mcp-undecodable-query", "/mcp?%ZZ&%ff%fe=%", 200, "ok"),
    ("llm-undecodable-query", "/v1/chat/completions?%ff%fe", 200, "ok"),
    ("approvals-not-an-id", "/authz/approvals/%ZZ:granted/grant", 403, "approvals.unknown"),
    ("approvals-empty-id", "/authz/approvals//grant", 400, "approvals.bad_request"),
]


@pytest.mark.parametrize(("path", "status", "reason"), [c[1:] for c in PATH_CASES],
                         ids=[c[0] for c in PATH_CASES])
async def test_check_hostile_paths(rt, path, status, reason):
    payload = chat("") if path.startswith("/v1") else LIST
    assert (await check(rt, check_request(path, payload)))[:2] == (status, reason)


@pytest.mark.parametrize(("claims", "reason"), [
    ({"exp": 10**400}, "token.invalid_claim"),  # valid JSON; was float(exp) -> OverflowError -> 500
    ({"nbf": 10**400}, "token.invalid_claim"),
    ({"iat": -(10**400)}, "token.invalid_claim"),
    ({"sub": 10**400}, "token.invalid_claim"),
])
async def test_signed_tokens_with_absurd_numbers_are_401(rt, claims, reason):
    hdrs = {**AUTH, "authorization": f"Bearer {token(**claims)}"}
    assert (await check(rt, check_request("/mcp", LIST, hdrs)))[:2] == (401, reason)


async def test_identity_values_with_control_characters_are_encoded_in_headers(rt):
    tok = token(sub="a\x00\r\nb", roles=["r\r\n", "x,y"], email="\x7f@x", azp="c\nx")
    status, _, resp = await check(rt, check_request("/mcp", LIST, {**AUTH, "authorization": f"Bearer {tok}"}))
    assert status == 200
    for h in resp.ok_response.headers:
        assert all(" " <= c <= "~" for c in h.header.value), h.header.key


# --- approvals: an id names an approval record, never another key ---------------------------------

async def test_an_approval_id_cannot_name_a_grant(rt):
    ssn = chat("").replace(b'"hi"', b'"my ssn is 536-22-1234"')
    status, reason, resp = await check(rt, check_request("/v1/chat/completions", ssn))
    assert (status, reason) == (403, "redaction.approval_required")
    approval_id = json.loads(resp.denied_response.body)["error"]["approval_id"]
    vera = {"authorization": f"Bearer {VERA}"}
    grant = f"/authz/approvals/{approval_id}/grant"
    assert (await check(rt, check_request(grant, b"", vera)))[:2] == (200, "approvals.granted")

    # "<id>:granted" is the grant's own store key; reading it as an approval record was a 500
    spoofed = {**AUTH, "x-authz-approval": f"{approval_id}:granted"}
    assert (await check(rt, check_request("/v1/chat/completions", ssn, spoofed)))[:2] == (
        403, "redaction.approval_required")
    assert (await check(rt, check_request(f"/authz/approvals/{approval_id}:granted/grant", b"", vera)))[:2] == (
        403, "approvals.unknown")

    # the real id still works, once
    real = {**AUTH, "x-authz-approval": approval_id}
    assert (await check(rt, check_request("/v1/chat/completions", ssn, real)))[:2] == (200, "ok")


# --- Process: tools/list answers from the MCP server ------------------------------------------------

def tools_list(tools: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).encode()


TOOLS = [{"name": "get_calendar"}, {"name": "delete_invoice"}]  # Oscar may not delete invoices


async def tools_list_metadata(rt: Runtime) -> struct_pb2.Struct:
    return await allowed_metadata(rt, "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})


async def filter_tools(rt: Runtime, ctype: str, answer: bytes, md: struct_pb2.Struct | None = None
                       ) -> bytes | None:
    """The answer Oscar gets instead of ``answer`` to his tools/list (None: the same)."""
    md = md or await tools_list_metadata(rt)
    responses = await process(rt, [
        P(request_headers=headers({":path": "/mcp", ":method": "POST"}), metadata_context=metadata(md)),
        P(response_headers=headers({":status": "200", "content-type": ctype})),
        P(response_body=body(answer)),
    ])
    last = responses[-1]
    assert last.HasField("response_body"), last
    mutation = last.response_body.response
    return mutation.body_mutation.body if mutation.HasField("body_mutation") else None


def sse(*events: bytes, eol: bytes = b"\n") -> bytes:
    return b"".join(b"event: message" + eol + b"data: " + e + eol + eol for e in events)


NOTE = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hi"}}'

TOOLS_LIST_ANSWERS = [
    # (id, content type, upstream answer, what Oscar must see: "filtered" | "untouched")
    ("json", JSON, tools_list(TOOLS), "filtered"),
    ("json-malformed-entries", JSON, tools_list([*TOOLS, None, 5, "x", {"name": 5}, {}, [], {"name": "\ud800"}]), "filtered"),
    ("json-lone-surrogate-elsewhere", JSON, tools_list(TOOLS).replace(b'"get_calendar"}', b'"get_calendar","d":"\\ud800"}'), "filtered"),
    ("json-odd-numbers", JSON, tools_list(TOOLS).replace(b'"get_calendar"}', b'"get_calendar","x":NaN,"y":1e400,"z":-0}'), "filtered"),
    # what the filter cannot read it cannot filter, and a lenient client might read it all:
    # replaced by a JSON-RPC error, never passed on
    ("json-not-utf8", JSON, tools_list(TOOLS).replace(b'"get_calendar"}', b'"get_calendar","d":"\xff\xfe"}'), "refused"),
    ("json-tools-not-a-list", JSON, b'{"jsonrpc":"2.0","id":1,"result":{"tools":{"name":"delete_invoice"}}}', "untouched"),
    ("json-result-a-list", JSON, b'{"jsonrpc":"2.0","id":1,"result":[1]}', "untouched"),
    ("json-depth-5000", JSON, tools_list(TOOLS)[:-2] + b',"x":' + deep(5000) + b"}}", "refused"),
    ("garbage", JSON, b"\xff" * 10, "refused"),
    ("an-error-page", "text/html", b"<html>502 bad gateway</html>", "untouched"),
    ("sse", SSE, sse(tools_list(TOOLS)), "filtered"),
    ("sse-crlf", SSE, sse(tools_list(TOOLS), eol=b"\r\n"), "filtered"),
    ("sse-cr", SSE, sse(tools_list(TOOLS), eol=b"\r"), "filtered"),
    # several events with CRLF line endings were one "event" to the filter: tools not hidden
    ("sse-crlf-after-a-notification", SSE, sse(NOTE, tools_list(TOOLS), eol=b"\r\n"), "filtered"),
    ("sse-lone-surrogate", SSE, sse(tools_list(TOOLS).replace(b'"get_calendar"}', b'"get_calendar","d":"\\udc00"}')), "filtered"),
    ("sse-not-utf8-in-data", SSE, sse(tools_list(TOOLS).replace(b'"get_calendar"}', b'"get_calendar","d":"\xff"}')), "filtered"),
    ("sse-not-utf8-elsewhere", SSE, sse(tools_list(TOOLS)) + b": \xff\xfe\n\n", "filtered"),
    ("sse-two-data-lines", SSE, b"data: x\ndata: y\n\n", "refused"),
    # a message split over several data: lines is one message to a client (joined with \n)
    ("sse-json-over-data-lines", SSE, b"event: message\n" + b"".join(
        b"data: " + line + b"\n" for line in json.dumps(json.loads(tools_list(TOOLS)), indent=1).encode().split(b"\n")
    ) + b"\n", "filtered"),
    ("sse-empty-data", SSE, b"data:\n\n", "untouched"),
    ("sse-only-newlines", "text/event-stream; charset=\x00", b"\n" * 100_000, "untouched"),
    ("sse-depth-5000", SSE, sse(tools_list(TOOLS)[:-2] + b',"x":' + deep(5000) + b"}}"), "refused"),
]


@pytest.mark.parametrize(("ctype", "answer", "expected"), [c[1:] for c in TOOLS_LIST_ANSWERS],
                         ids=[c[0] for c in TOOLS_LIST_ANSWERS])
async def test_tools_list_answers(rt, tmp_path, ctype, answer, expected):
    new = await filter_tools(rt, ctype, answer)
    if expected == "untouched":
        assert new is None
        return
    if expected == "refused":
        assert new is not None and b"delete_invoice" not in new and b"get_calendar" not in new
        message = json.loads(new.split(b"data: ", 1)[1] if ctype == SSE else new)
        assert message == {"jsonrpc": "2.0", "id": 1, "error": {
            "code": -32603, "message": "the tool list could not be checked against your permissions"}}
        await rt.close()  # the audit outcome record says so, and explain tells it
        records = [json.loads(line) for f in sorted((tmp_path / "audit").rglob("*.jsonl"))
                   for line in f.read_bytes().splitlines()]
        outcome = next(r for r in records if r["type"] == "outcome")
        assert outcome["facts"]["tools_list_refused"]
        assert "could not be filtered" in explain(outcome["request_id"], records)
        return
    assert new is not None and b"delete_invoice" not in new and b"get_calendar" in new
    several_data_lines = any(event.count(b"data:") > 1 for event in answer.split(b"\n\n"))
    if ctype == SSE and not several_data_lines:  # all but the rewritten data line kept, line endings too
        def others(sse_body: bytes) -> list[bytes]:
            return [line for line in sse_body.splitlines(keepends=True) if b"get_calendar" not in line]
        assert others(new) == others(answer)


async def test_tools_list_nested_about_as_deep_as_the_decoder_allows(rt):
    """The decoder and encoder recurse; at the depth where decoding just succeeded encoding the
    filtered answer failed (a RecursionError, a 500). The boundary moves with the stack, so
    sweep across it: every depth is refused (not passed on unfiltered, not a 500)."""
    md = await tools_list_metadata(rt)
    for depth in range(850, 1010):
        answer = tools_list(TOOLS)[:-2] + b',"x":' + deep(depth) + b"}}"
        new = await filter_tools(rt, JSON, answer, md)
        assert new is not None and b"-32603" in new and b"delete_invoice" not in new, depth


# --- Process: usage from the LLM upstream ---------------------------------------------------------

USAGES = [
    ("strings-and-negatives", {"prompt_tokens": "5", "completion_tokens": -3}),
    ("float-overflow", {"prompt_tokens": 1e400, "completion_tokens": -0.0}),
    ("huge-ints", {"prompt_tokens": 10**4000, "completion_tokens": 10**4000}),  # was a failed settlement
    ("huge-anthropic", {"input_tokens": 10**300, "cache_read_input_tokens": 10**300, "output_tokens": 10**300}),
    ("huge-cached", {"prompt_tokens": True, "prompt_tokens_details": {"cached_tokens": 10**4000}}),
    ("details-a-list", {"prompt_tokens": 5, "prompt_tokens_details": []}),
    ("usage-null", None),
    ("usage-a-list", [1, 2]),
    ("lone-surrogate-key", {"prompt_tokens": 5, "\ud800": 1}),
]


@pytest.mark.parametrize("ctype", [JSON, SSE])
@pytest.mark.parametrize("usage", [u for _, u in USAGES], ids=[i for i, _ in USAGES])
async def test_hostile_usage_is_settled_within_bounds(rt, usage, ctype):
    request = {"model": "gpt-general", "stream": True, "stream_options": "x",
               "messages": [{"role": "user", "content": "hi"}]}
    md = await allowed_metadata(rt, "/v1/chat/completions", request)
    if ctype == SSE:
        answer = b'data: {"choices":[]}\r\n\r\ndata: ' + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"
    else:
        answer = json.dumps({"usage": usage}).encode()
    responses = await process(rt, [
        P(request_headers=headers({":path": "/v1/chat/completions", ":method": "POST"}), metadata_context=metadata(md)),
        P(request_body=body(json.dumps(request).encode())),  # the body Check saw
        P(response_headers=headers({":status": "200", "content-type": ctype})),
        P(response_body=body(answer[:9], end=False)),  # split inside the first event
        P(response_body=body(answer[9:])),
    ])
    assert immediate(responses) is None
    assert json.loads(responses[1].request_body.response.body_mutation.body)["stream_options"] == {"include_usage": True}
    (reservation,) = handoff_of(md).metering.reservations
    used = int(await rt.current.store.get(reservation.key))
    assert 0 <= used <= 3 * MAX_TOKENS


# --- Process: the stream itself ----------------------------------------------------------------------

async def test_process_stream_oddities(rt):
    md = metadata(await allowed_metadata(rt, "/v1/chat/completions", {"model": "gpt-general", "stream": True}))
    req = P(request_headers=headers({":path": "/v1/chat/completions"}), metadata_context=md)
    usage = body(b'data: {"usage":{"prompt_tokens":3}}\n\n')
    streams = {
        "empty message": ([P()], (400, "process.unexpected_message")),
        "body before headers": ([P(response_body=body(b"x"))], None),
        # Not the body Check rewrote (to ask for usage): never forwarded in its place.
        "request body without headers": ([P(request_body=body(b"{}"), metadata_context=md)],
                                         (503, "body.rewrite_lost")),
        "status not a number": ([req, P(response_headers=headers({":status": "abc", "content-type": SSE})),
                                 P(response_body=usage)], None),
        "status 5000 digits": ([req, P(response_headers=headers({":status": "9" * 5000}))], None),
        "status negative": ([req, P(response_headers=headers({":status": "-1"}))], None),
        "repeated content-type": ([req, P(response_headers=headers([(":status", "200"), ("content-type", JSON),
                                                                     ("Content-Type", b"text/event-stream\xff")])),
                                   P(response_body=body(b'{"usage":{"prompt_tokens":3}}'))], None),
        "trailers": ([req, P(request_trailers=proc_pb2.HttpTrailers()), P(response_trailers=proc_pb2.HttpTrailers())], None),
        "ends without end_of_stream": ([req, P(response_headers=headers({":status": "200"})),
                                        P(response_body=body(b'{"usage":{"prompt_tokens":' + b"9" * 4000, end=False))], None),
        "1 MiB event never ended": ([req, P(response_headers=headers({":status": "200", "content-type": SSE})),
                                     P(response_body=body(b"data: " + b"x" * (1024 * 1024 + 1), end=False)),
                                     P(response_body=body(b"\n\n" + usage.body))], None),
    }
    assert handoff_of(md.filter_metadata[METADATA_NAMESPACE]).response_body == "duplex"  # a guarded answer
    for name, (msgs, expected) in streams.items():
        responses = await process(rt, msgs)
        # One answer per message, except body chunks of a duplex answer: one per piece sent (none
        # while all of it is held back, a JSON answer that never ended for one).
        bodies = sum(m.WhichOneof("request") == "response_body" for m in msgs)
        assert len(msgs) - bodies <= len(responses) <= len(msgs), name
        assert immediate(responses) == expected, name


@pytest.mark.parametrize("payload", [
    deep(3000), b'{"a":' * 990 + b"1" + b"}" * 990, b"\xff\xfe", b"null", b'{"x":NaN,"m":"x@y.com"}',
    b'{"model":"gpt-general","messages":[{"content":"mail x@y.com \\ud800"}]}',
    b'{"model":"gpt-general","stream_options":' + deep(64) + b"}",
], ids=["depth-3000", "depth-990", "not-utf8", "null", "nan", "lone-surrogate", "options-depth-64"])
async def test_request_bodies_rewritten_in_process(rt, payload):
    """Check saw a body needing redaction and usage and rewrote it; Process gets another body
    (Check would refuse most of these): it is refused, never rewritten nor forwarded."""
    md = await allowed_metadata(rt, "/v1/chat/completions", {
        "model": "gpt-general", "stream": True, "messages": [{"role": "user", "content": "mail x@y.com"}]})
    h = handoff_of(md)
    assert h.body_key and h.request_body == "buffered" and h.metering is not None
    responses = await process(rt, [
        P(request_headers=headers({":path": "/v1/chat/completions", "content-type": JSON}), metadata_context=metadata(md)),
        P(request_body=body(payload)),
    ])
    assert immediate(responses) == (503, "body.rewrite_lost")


async def test_a_duplex_answer_sends_held_text_at_a_pause_and_the_rest_before_the_trailers(rt):
    """Process in FULL_DUPLEX_STREAMED, as Envoy drives it: the override asks for the mode (with
    its trailers), a chunk whose text is all held gets no answer, the flush deadline releases the
    clean part unasked, and trailers bring the rest before their own answer."""
    md = metadata(await allowed_metadata(rt, "/v1/chat/completions", {"model": "gpt-general", "stream": True}))
    chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": "Summary for card 4539 14"}, "finish_reason": None}]}

    async def stream():
        yield P(request_headers=headers({":path": "/v1/chat/completions"}), metadata_context=md)
        yield P(response_headers=headers({":status": "200", "content-type": SSE}))
        yield P(response_body=body(f"data: {json.dumps(chunk)}\n\n".encode(), end=False))
        await asyncio.sleep(0.4)  # the model pauses: the deadline (50 ms) passes first
        yield P(response_body=body(b"data: " + json.dumps({**chunk, "choices": [
            {"index": 0, "delta": {"content": "88 0343 6467."}, "finish_reason": None}]}).encode() + b"\n\n",
            end=False))
        yield P(response_trailers=proc_pb2.HttpTrailers())

    responses = [proc_pb2.ProcessingResponse.FromString(r)
                 async for r in ExternalProcessorServicer(rt).Process(stream(), None)]
    mode = responses[0].mode_override
    assert mode.response_body_mode == mode.FULL_DUPLEX_STREAMED and mode.response_trailer_mode == mode.SEND
    pieces = [r.response_body.response.body_mutation.streamed_response for r in responses[2:-1]]
    assert responses[-1].HasField("response_trailers") and not any(p.end_of_stream for p in pieces)
    texts = [p.body.decode() for p in pieces]
    # each chunk's event (its text held), the pause's release, the rest at the trailers
    assert len(texts) == 4 and '"content":""' in texts[0] and '"content":""' in texts[2]
    assert '"content":"Summary for card "' in texts[1] and "4539" not in "".join(texts)
    assert '"content":"**** **** **** 6467."' in texts[3]
