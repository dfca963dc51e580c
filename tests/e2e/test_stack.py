"""The foundation through real Envoy: both hops happen, the sidecar fails closed, it drains."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request

import httpx
import pytest

from authz.dev.stack import (
    FIRST_COMMANDS,
    ROOT,
    THROUGH_BOTH_HOPS,
    ManagedProcess,
    Ports,
    ProcessFailed,
    Stack,
    banner,
    free_port,
)
from tests.e2e.conftest import Running

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
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        r = stack.http.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text)
    doc = stack.http.get("/.well-known/oauth-protected-resource/mcp").json()
    assert doc["resource"] == "http://localhost:10000/mcp"
    assert doc["authorization_servers"] == [stack.stack.issuer_url]


def test_the_sidecars_other_endpoints_are_not_reachable_through_envoy(stack):
    """Only the metadata documents skip authz; /metrics and friends stay on the sidecar's port."""
    for path in ("/metrics", "/readyz", "/.well-known/oauth-protected-resourcex"):
        r = stack.http.get(path)
        assert r.status_code == 401, (path, r.status_code)


def test_sidecar_down_means_503_not_200():
    with Stack(upstreams=True) as s, httpx.Client(base_url=s.url, timeout=10) as http:  # issuer up: ready
        assert http.get("/v1/models").status_code == 401  # the sidecar answers
        s.stop_authz()
        for path in ("/v1/models", "/mcp", "/anything"):
            r = http.get(path)
            assert r.status_code == 503, (path, r.status_code, r.text)


def test_process_unreachable_means_503_even_after_check_allowed():
    """Check and Process share the sidecar, so stopping it only ever shows Check failing closed.
    Here Process alone points at a port nobody listens on."""
    dead_port = free_port()

    def process_to_nowhere(cfg):
        filters = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ext_proc = next(f for f in filters["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
        ext_proc["typed_config"]["extension_config"]["typed_config"]["grpc_service"]["envoy_grpc"][
            "cluster_name"] = "nowhere"
        authz = next(c for c in cfg["static_resources"]["clusters"] if c["name"] == "authz")
        nowhere = json.loads(json.dumps(authz).replace('"authz"', '"nowhere"'))
        group = nowhere["load_assignment"]["endpoints"][0]
        group["lb_endpoints"] = group["lb_endpoints"][:1]  # one endpoint per worker in authz's: keep one
        group["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = dead_port
        cfg["static_resources"]["clusters"].append(nowhere)

    s = Stack(envoy_edit=process_to_nowhere).start()
    running = Running(s)
    try:
        token = running.token("oscar", roles=["accounting"])
        r = running.http.post("/v1/chat/completions", headers=running.auth(token),
                              json={"model": "gpt-general", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503, r.text
        assert "x-upstream" not in r.headers
    finally:
        running.http.close()
        s.stop()


def readyz_status(url: str) -> int | None:
    """The /readyz status code, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def test_sigterm_drains_and_exits_cleanly(tmp_path):
    cfg = tmp_path / "authz.yaml"
    cfg.write_text("server: {drain_seconds: 1, grace_seconds: 2}\nlog: {format: json}\n")
    s = Stack(authz_config=cfg, upstreams=False, issuer=False)
    try:
        proc = s.start_authz()
        readyz = f"{s.authz_http}/readyz"
        assert readyz_status(readyz) == 200
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        # Unready but still answering while it drains (how Envoy and Kubernetes notice in time).
        deadline = time.monotonic() + 30
        status = readyz_status(readyz)
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
            status = readyz_status(readyz)
        assert status == 503
        assert proc.proc.wait(60) == 0
        assert time.monotonic() - started >= 1.0  # drain_seconds were honoured
        events = [json.loads(line).get("msg", "") for line in proc.output().splitlines() if line.startswith("{")]
        assert any("draining" in e for e in events) and any(e == "stopped" for e in events)
    finally:
        s.stop()


def test_make_run_banner_shows_the_readmes_first_steps():
    readme = (ROOT / "README.md").read_text()
    for command in FIRST_COMMANDS:
        assert command in readme, command
    text = banner(Ports(), store="memory")
    for command in (*FIRST_COMMANDS, THROUGH_BOTH_HOPS):
        assert command.replace("\n     ", "\n       ") in text
    assert "localhost:10000" in text and ":9901" in text and ":9400" in text



def test_a_process_that_dies_before_it_is_ready_is_reported_with_its_last_output(tmp_path):
    log = tmp_path / "logs" / "dying.log"
    proc = ManagedProcess("dying", [sys.executable, "-c", "print('config is broken: key x'); raise SystemExit(3)"],
                          log_path=log).start()
    try:
        with pytest.raises(ProcessFailed, match=r"(?s)dying exited with 3 before it was ready.*config is broken"):
            proc.wait_ready(lambda: False, timeout=60)
    finally:
        assert proc.stop() == 3
    assert log.read_text() == "config is broken: key x\n"


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period_and_reaped():
    script = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
              "time.sleep(600)")
    proc = ManagedProcess("stubborn", [sys.executable, "-c", script]).start()
    proc.wait_ready(lambda: "up" in proc.output(), timeout=60)
    assert proc.stop(grace=0.5) == -signal.SIGKILL
    assert not proc.alive() and proc.stop() == -signal.SIGKILL  # a second stop is harmless
