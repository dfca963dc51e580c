"""The hand-encoded allow answer parses to exactly the message upb would build."""

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2

from authz.envoy import check, wire
from authz.model import Action, Context, Request


def context(**mutations) -> Context:
    ctx = Context(request=Request(id="r1", method="GET", scheme="http", host="h", path="/x", headers={}))
    m = ctx.mutations
    for k, v in mutations.get("set", {}).items():
        m.set_header(k, v)
    for k in mutations.get("remove", ()):
        m.remove_header(k)
    m.response_headers.update(mutations.get("response", {}))
    if "model" in mutations:
        ctx.handoff.filter_tools = True
        ctx.handoff.action = Action(protocol="llm", kind="chat.completions", model=mutations["model"],
                                    jsonrpc_id=2**70)
    return ctx


CASES = {
    "empty": context(),
    "identity": context(set={"x-authz-user": "oscar", "x-authz-roles": "a,b", "x-authz-assertion": "e" * 700},
                        remove=["authorization", "x-authz-user-spoof", "x-user-id"]),
    "unicode and long": context(set={"x-authz-user": "zoë%20" + "é" * 9000},
                                response={"ratelimit": '"per-user";r=9;t=1'}),
    "metadata": context(set={"x-authz-route": "medical"},
                        model="gpt-medical"),
}


@pytest.mark.parametrize("name", CASES)
def test_wire_encoding_equals_the_upb_message(name):
    ctx = CASES[name]
    if name == "metadata":
        ctx.handoff.request_body = "buffered"
    for extra in (None, {"x-authz-check": "allow"}):
        fast = auth_pb2.CheckResponse.FromString(check.allow_response(ctx, extra_response_headers=extra))
        slow = check.allow_response_message(ctx, extra_response_headers=extra)
        assert fast == slow
        assert fast.ok_response.headers_to_remove == sorted(ctx.mutations.remove_headers)


def test_varints_across_byte_boundaries():
    for n in (0, 1, 127, 128, 300, 16383, 16384, 2**21 + 5):
        payload = b"x" * n
        encoded = wire.field(2, payload)
        parsed = auth_pb2.OkHttpResponse.FromString(wire.field(5, payload))
        assert parsed.headers_to_remove == ["x" * n]
        assert encoded.endswith(payload)


def test_cached_header_encodings_stay_correct_past_the_cache_bound():
    for i in range(wire._OPTIONS_MAX + 50):
        ok = auth_pb2.OkHttpResponse.FromString(wire.header_field(2, "x-n", str(i)) + wire.header_field(6, "x-n", "r"))
        assert ok.headers[0].header.value == str(i) and ok.response_headers_to_add[0].header.value == "r"
    assert len(wire._OPTIONS) <= wire._OPTIONS_MAX


# --- Process answers: the ones that change nothing are encoded once --------------------------------

def test_process_answers_equal_the_messages_they_stand_for():
    from envoy.service.ext_proc.v3 import external_processor_pb2 as proc_pb2

    from authz.envoy import process
    from authz.model import Mutations

    parse = proc_pb2.ProcessingResponse.FromString
    for req, resp in (("", ""), ("buffered", "partial"), ("", "streamed"), ("buffered", "")):
        mode = process.body_mode(request_body=req, response_body=resp) if req or resp else None
        for _ in range(2):  # built, then from the cache
            assert parse(process.headers_answer("request_headers", Mutations(), request_body=req, response_body=resp)) \
                == process.headers_response("request_headers", Mutations(), mode=mode)
    changed = Mutations()
    changed.set_header("x-authz-process", "request_headers,response_headers")
    changed.remove_header("content-length")
    assert parse(process.headers_answer("response_headers", changed)) \
        == process.headers_response("response_headers", changed)
    assert parse(process.headers_answer("response_headers", Mutations())).response_headers.response \
        == proc_pb2.CommonResponse()  # the cached plain answer did not keep the other one's headers
    for buffered in (True, False):
        body = Mutations(body=b"masked")
        assert parse(process.body_answer("response_body", body, buffered=buffered)) \
            == process.body_response("response_body", body, buffered=buffered)
        assert parse(process.body_answer("request_body", Mutations(), buffered=buffered)) \
            == process.body_response("request_body", Mutations(), buffered=buffered)
