"""The Envoy configs in the repo: valid for the Envoy we ship, wired the way authz assumes, and
behaving as authz assumes (checked against real Envoy with a recording stand-in sidecar)."""

from __future__ import annotations

import itertools
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from google.protobuf import json_format

from authz.dev.stack import (
    REFERENCE_ENVOY,
    ROOT,
    ManagedProcess,
    Ports,
    envoy_binary,
    http_ok,
    render_envoy_config,
)
from authz.envoy import process as proc_adapter
from tests.helpers.recording import (
    CHECK_METADATA,
    PROBE_ID,
    PROBE_MODE,
    PROBE_NO_HANDOFF,
    RecordingSidecar,
    Upstream,
    header_entries,
    metadata_dict,
)

Mode = processing_mode_pb2.ProcessingMode
CONFIGS = sorted(p for p in (ROOT / "deploy").rglob("envoy*.yaml"))
EXT_AUTHZ = "envoy.filters.http.ext_authz"
EXT_PROC = "envoy.filters.http.ext_proc"


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                          capture_output=True, text=True, timeout=120)


def hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def http_filter(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """A filter's own config (inside the matcher that wraps ext_proc, when it is wrapped)."""
    typed = next(f["typed_config"] for f in hcm(cfg)["http_filters"] if f["name"] == name)
    return typed.get("extension_config", {}).get("typed_config", typed)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return yaml.safe_load(REFERENCE_ENVOY.read_text())


# --- valid -------------------------------------------------------------------------------------

def test_the_reference_config_is_among_those_checked():
    assert REFERENCE_ENVOY in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_envoy_config_is_valid(path: Path):
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_config_is_valid(tmp_path):
    out = tmp_path / "envoy.yaml"
    out.write_text(render_envoy_config(Ports.free()))
    result = validate(out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_config_is_refused(tmp_path):
    broken = tmp_path / "envoy.yaml"
    broken.write_text(REFERENCE_ENVOY.read_text().replace("failure_mode_allow: false",
                                                          "failure_mode_allowed: false", 1))
    assert validate(broken).returncode != 0


# --- wired as authz assumes ------------------------------------------------------------------

def test_rendering_moves_every_port_and_only_ports():
    ports = Ports.free()
    rendered = yaml.safe_load(render_envoy_config(ports))
    endpoints = {c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                 ["socket_address"] for c in rendered["static_resources"]["clusters"]}
    assert {name: ep["port_value"] for name, ep in endpoints.items()} == ports.cluster_ports()
    assert rendered["admin"]["address"]["socket_address"]["port_value"] == ports.envoy_admin
    listener = rendered["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (listener["address"], listener["port_value"]) == ("127.0.0.1", ports.envoy)
    assert hcm(rendered)["http_filters"] == hcm(yaml.safe_load(REFERENCE_ENVOY.read_text()))["http_filters"]


def test_rendering_refuses_a_config_without_a_cluster_it_must_move(tmp_path):
    cfg = yaml.safe_load(REFERENCE_ENVOY.read_text())
    cfg["static_resources"]["clusters"] = [c for c in cfg["static_resources"]["clusters"]
                                           if c["name"] != "medical"]
    source = tmp_path / "envoy.yaml"
    source.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="medical"):
        render_envoy_config(Ports.free(), source=source)


def test_check_then_process_then_router_all_failing_closed_with_503(reference):
    assert [f["name"] for f in hcm(reference)["http_filters"]] == [EXT_AUTHZ, EXT_PROC,
                                                                   "envoy.filters.http.router"]
    for name in (EXT_AUTHZ, EXT_PROC):
        f = http_filter(reference, name)
        assert f["failure_mode_allow"] is False, name
        assert f["status_on_error"] == {"code": "ServiceUnavailable"}, name
        assert f["grpc_service"]["envoy_grpc"]["cluster_name"] == "authz", name
    check = http_filter(reference, EXT_AUTHZ)
    assert check["with_request_body"] == {"max_request_bytes": 1048576, "allow_partial_message": True,
                                          "pack_as_bytes": True}
    assert check["clear_route_cache"] is True and check["encode_raw_headers"] is True
    process = http_filter(reference, EXT_PROC)
    assert process["metadata_options"]["forwarding_namespaces"]["untyped"] == [EXT_AUTHZ]


def test_only_the_public_metadata_documents_and_sign_in_skip_authz(reference):
    skipping = []
    for vhost in hcm(reference)["route_config"]["virtual_hosts"]:
        assert "typed_per_filter_config" not in vhost
        for route in vhost["routes"]:
            per_filter = route.get("typed_per_filter_config", {})
            if per_filter:
                assert per_filter[EXT_AUTHZ]["disabled"] is True and per_filter[EXT_PROC]["disabled"] is True
                assert route["route"]["cluster"] == "authz_http"
                skipping.append(route["match"])
    assert skipping == [{"path": "/.well-known/oauth-protected-resource"},
                        {"prefix": "/.well-known/oauth-protected-resource/"},
                        {"path": "/.well-known/oauth-authorization-server"},   # sign-in (signin:)
                        {"prefix": "/oauth/"}]


def effective_override(override: Mode, configured: Mode) -> Mode:
    """What Envoy 1.40 compares with allowed_override_modes (ext_proc.cc effectiveModeOverride):
    DEFAULT header and trailer modes in an override mean "as configured"; body modes are taken
    as sent."""
    effective = Mode()
    effective.CopyFrom(configured)
    for field in ("request_header_mode", "response_header_mode", "request_trailer_mode", "response_trailer_mode"):
        if getattr(override, field) != Mode.DEFAULT:
            setattr(effective, field, getattr(override, field))
    effective.request_body_mode = override.request_body_mode
    effective.response_body_mode = override.response_body_mode
    return effective


def comparable(mode: Mode) -> tuple:
    return (mode.request_body_mode, mode.response_body_mode, mode.response_header_mode,
            mode.request_trailer_mode, mode.response_trailer_mode)  # Envoy ignores request_header_mode


SENT_BODY_MODES = [(req, resp) for req, resp in itertools.product(("", "streamed", "buffered"), repeat=2)
                   if req or resp]


def test_every_override_authz_sends_is_on_the_allow_list(reference):
    """An override missing from allowed_override_modes is dropped silently by Envoy (debug log
    only): the request would then pass without the body check that asked for it."""
    process = http_filter(reference, EXT_PROC)
    assert process["allow_mode_override"] is True
    configured = json_format.ParseDict(process["processing_mode"], Mode())
    allowed = {comparable(json_format.ParseDict(m, Mode())) for m in process["allowed_override_modes"]}
    for req, resp in SENT_BODY_MODES:
        sent = proc_adapter.body_mode(request_body=req, response_body=resp)
        assert comparable(effective_override(sent, configured)) in allowed, (req, resp)


# --- behaving as authz assumes (real Envoy, recording stand-in) --------------------------------

class Probe:
    def __init__(self, sidecar: RecordingSidecar, url: str) -> None:
        self.sidecar = sidecar
        self.http = httpx.Client(base_url=url, timeout=30)

    def send(self, *, mode: str = "", extra: list[tuple[bytes, bytes]] = (), body: bytes = b'{"hi":1}'
             ) -> tuple[str, httpx.Response]:
        probe = uuid.uuid4().hex
        headers = [(PROBE_ID.encode(), probe.encode()), *extra]
        if mode:
            headers.append((PROBE_MODE.encode(), mode.encode()))
        r = self.http.post("/v1/chat/completions", headers=headers, content=body)
        return probe, r


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Iterator[Probe]:
    """The reference Envoy config (ports rewritten) in front of a recording sidecar and upstream."""
    ports = Ports.free()
    workdir = tmp_path_factory.mktemp("envoy-probe")
    sidecar = RecordingSidecar().start(ports.authz_grpc)
    upstream = Upstream(ports.general).start()
    cfg = workdir / "envoy.yaml"
    cfg.write_text(render_envoy_config(ports))
    envoy = ManagedProcess("envoy", [envoy_binary(), "-c", str(cfg), "--concurrency", "1",
                                     "--disable-hot-restart", "--log-level", "warning"]).start()
    client = None
    try:
        envoy.wait_ready(lambda: http_ok(f"http://127.0.0.1:{ports.envoy_admin}/ready"), timeout=60)
        client = Probe(sidecar, f"http://127.0.0.1:{ports.envoy}")
        yield client
    finally:
        if client is not None:
            client.http.close()
        envoy.stop()
        upstream.stop()
        sidecar.stop()


def test_repeated_headers_reach_check_one_by_one_as_raw_bytes(probe):
    """encode_raw_headers: one header_map entry per header line, values only in raw_value (bytes,
    so non-UTF-8 survives), and the old string map left empty."""
    probe_id, r = probe.send(extra=[(b"x-dup", b"a"), (b"x-dup", b"b"), (b"x-bytes", "café".encode())])
    assert r.status_code == 200, r.text
    (check,) = probe.sidecar.messages(probe_id, "check")
    http = check.attributes.request.http
    entries = header_entries(http.header_map)
    assert [(k, v, raw) for k, v, raw in entries if k == "x-dup"] == [("x-dup", "", b"a"), ("x-dup", "", b"b")]
    assert [raw for k, _, raw in entries if k == "x-bytes"] == ["café".encode()]
    assert len(http.headers) == 0
    assert http.raw_body == b'{"hi":1}' and http.body == ""  # pack_as_bytes


def test_process_gets_raw_headers_and_what_check_decided(probe):
    probe_id, r = probe.send(extra=[(b"x-dup", b"a"), (b"x-dup", b"b")])
    assert r.status_code == 200, r.text
    assert probe.sidecar.kinds(probe_id) == ["check", "request_headers", "response_headers"]
    (headers,) = probe.sidecar.messages(probe_id, "request_headers")
    entries = header_entries(headers.request_headers.headers)
    assert [(k, v, raw) for k, v, raw in entries if k == "x-dup"] == [("x-dup", "", b"a"), ("x-dup", "", b"b")]
    metadata = metadata_dict(headers, EXT_AUTHZ)
    assert {k: metadata[k] for k in CHECK_METADATA} == CHECK_METADATA
    assert "ext_authz_duration" in metadata  # Envoy's own addition to the namespace


@pytest.mark.parametrize(("request_body", "response_body"), SENT_BODY_MODES,
                         ids=[f"{a or 'none'}-{b or 'none'}" for a, b in SENT_BODY_MODES])
def test_every_body_mode_authz_asks_for_is_honoured(probe, request_body, response_body):
    sent = proc_adapter.body_mode(request_body=request_body, response_body=response_body)
    names = f"{Mode.BodySendMode.Name(sent.request_body_mode)},{Mode.BodySendMode.Name(sent.response_body_mode)}"
    probe_id, r = probe.send(mode=names)
    assert r.status_code == 200, r.text
    kinds = probe.sidecar.kinds(probe_id)
    assert ("request_body" in kinds) == bool(request_body), kinds
    assert ("response_body" in kinds) == bool(response_body), kinds
    assert "response_headers" in kinds


def test_no_handoff_no_process_stream(probe):
    """Check left no hand-off (no "authz" field in its metadata): the matcher skips ext_proc, no
    stream is opened, and the request still reaches the upstream and its answer the client."""
    probe_id, r = probe.send(extra=[(PROBE_NO_HANDOFF.encode(), b"1")])
    assert r.status_code == 200, r.text
    assert probe.sidecar.kinds(probe_id) == ["check"]
    probe_id, r = probe.send()
    assert r.status_code == 200 and probe.sidecar.kinds(probe_id) == ["check", "request_headers", "response_headers"]


def test_an_override_off_the_allow_list_is_ignored_whole(probe):
    """Asking to skip the response headers is refused, and with it the body mode in the same
    override: the request is processed as configured."""
    probe_id, r = probe.send(mode="BUFFERED,NONE,skip")
    assert r.status_code == 200, r.text
    assert probe.sidecar.kinds(probe_id) == ["check", "request_headers", "response_headers"]
