"""CheckRequest → Request: what Envoy's partial-body flag does not say."""

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from authz.envoy.check import request_from_check


def check(body: bytes, **headers: str) -> external_auth_pb2.CheckRequest:
    msg = external_auth_pb2.CheckRequest()
    http = msg.attributes.request.http
    http.method, http.path, http.host = "POST", "/mcp", "h"
    for k, v in headers.items():
        h = http.header_map.headers.add()
        h.key, h.raw_value = k.replace("_", "-"), v.encode()
    http.raw_body = body
    return msg


@pytest.mark.parametrize(("body", "headers", "limit", "cut"), [
    (b"{}", {}, 1024, False),
    (b"{}", {"content_length": "2"}, 1024, False),
    (b"{}", {"x_envoy_auth_partial_body": "true"}, 1024, True),    # Envoy says so
    (b"{}", {"content_length": "3"}, 1024, True),                  # shorter than declared
    (b"x" * 1024, {}, 1024, True),                                  # as long as Envoy sends
    (b"x" * 1024, {"x_envoy_auth_partial_body": "false"}, 1024, True),  # Envoy's flag misses this
    (b"x" * 1024, {}, 0, False),                                    # limit not configured
    (b"{}", {"content_length": "junk"}, 1024, False),               # Envoy rejects those anyway
])
def test_a_cut_body_is_recognised(body, headers, limit, cut):
    assert request_from_check(check(body, **headers), body_limit=limit).body_truncated is cut


def test_metadata_that_a_struct_cannot_hold_goes_as_text_not_as_an_error():
    from authz.envoy.check import to_struct

    s = to_struct({"claims": {"level": 10**400, "n": 3, "ok": True, "xs": [1, None, "a"]}})
    assert s["claims"]["level"] == "1" + "0" * 400
    assert s["claims"]["n"] == 3 and s["claims"]["ok"] is True and list(s["claims"]["xs"]) == [1, None, "a"]
