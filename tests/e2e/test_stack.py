"""The foundation through real Envoy: both hops happen, the sidecar fails closed, drains."""

import json
import signal
import time

import pytest

from authz.devstack import http_ok

pytestmark = pytest.mark.e2e


def test_request_passes_check_and_process_and_reaches_the_upstream(stack):
    token = stack.token("oscar", roles=["accounting"])
    r = stack.http.post("/v1/chat/completions", headers=stack.auth(token),
                        json={"model": "gpt-general", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-upstream"] == "general"
    assert r.headers["x-authz-check"] == "allow"
    assert r.headers["x-authz-process"] == "request_headers,response_headers"


def test_unauthenticated_request_gets_a_401_challenge(stack):
    r = stack.http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer resource_metadata=")
    assert r.headers["x-authz-reason"] == "token.missing"


def test_metadata_is_public_and_served_by_the_sidecar(stack):
    r = stack.http.get("/.well-known/oauth-protected-resource/mcp")
    assert r.status_code == 200
    doc = r.json()
    assert doc["resource"] == "http://localhost:10000/mcp"
    assert doc["authorization_servers"] == [stack.stack.issuer_url]


def test_sidecar_down_means_503_not_200(tmp_path):
    from authz.devstack import Stack

    with Stack(upstreams=True, issuer=False) as s:
        import httpx

        with httpx.Client(base_url=s.url, timeout=10) as http:
            assert http.get("/v1/models").status_code == 401  # the sidecar answers
            s.stop_authz()
            for path in ("/v1/models", "/mcp", "/anything"):
                r = http.get(path)
                assert r.status_code == 503, (path, r.status_code, r.text)


def test_sigterm_drains_and_exits_cleanly(tmp_path):
    from authz.devstack import Stack

    cfg = tmp_path / "authz.yaml"
    cfg.write_text("server: {drain_seconds: 1, grace_seconds: 2}\nlog: {format: json}\n")
    s = Stack(authz_config=cfg, upstreams=False, issuer=False)
    try:
        proc = s.start_authz()
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert not http_ok(f"{s.authz_http}/readyz")  # unready while draining, still answering
        assert proc.proc.wait(15) == 0
        assert time.monotonic() - started >= 1.0
        events = [json.loads(line).get("msg", "") for line in proc.output().splitlines() if line.startswith("{")]
        assert any("draining" in e for e in events) and any(e == "stopped" for e in events)
    finally:
        s.stop()
