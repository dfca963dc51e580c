"""The alerts: promtool accepts them, rule-unit tests pin what pages and what does not, and every
Envoy metric they read is one the pod's Envoy really exports, with the labels they select on.

promtool comes from Debian's `prometheus` package (`make test` installs it when it can); without
it only the two promtool tests are skipped, with a message saying so."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from authz.dev.stack import ROOT, envoy_binary

RULES = ROOT / "deploy/k8s/components/monitoring/prometheusrule.yaml"
UNIT_TESTS = Path(__file__).parent / "data/alerts_test.yaml"
POD_ENVOY = ROOT / "deploy/k8s/base/envoy.yaml"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not found: `apt-get install prometheus` (Debian) provides it; `make test` installs it "
           "when run as root")


def rule_groups() -> dict:
    doc = yaml.safe_load(RULES.read_text())
    assert doc["kind"] == "PrometheusRule"
    return {"groups": doc["spec"]["groups"]}


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


@needs_promtool
def test_promtool_checks_the_rules(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    result = _promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests(tmp_path):
    """data/alerts_test.yaml: no checkpoint-lag page on an idle pod (and one on a busy pod that
    stopped sealing); the reload alert keeps firing for as long as the failure gauge is set;
    authz absent fires; a crash-looping native sidecar fires; ext_authz errors page only with
    traffic."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    shutil.copy(UNIT_TESTS, tmp_path / "alerts_test.yaml")
    result = _promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert that reads a condition we can simulate is exercised by at least one case.
    tested = set(re.findall(r"alertname: (\w+)", UNIT_TESTS.read_text()))
    assert {"AuthzAuditUnsealed", "AuthzConfigReloadFailing", "AuthzAbsent", "AuthzDown", "AuthzCrashLooping",
            "AuthzExtAuthzErrors"} <= tested


@needs_promtool
def test_rule_unit_tests_can_fail(tmp_path):
    """The old checkpoint-lag rule (lag alone) pages on the idle pod: the unit tests catch it."""
    groups = rule_groups()
    for rule in groups["groups"][0]["rules"]:
        if rule.get("alert") == "AuthzAuditUnsealed":
            rule["expr"] = "max by (namespace, pod) (authz_audit_checkpoint_lag_seconds) > 60"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    shutil.copy(UNIT_TESTS, tmp_path / "alerts_test.yaml")
    result = _promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode != 0 and "alertname: AuthzAuditUnsealed" in result.stdout + result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_envoy_metrics_the_alerts_read_exist_in_the_pods_envoy(tmp_path):
    """The pod's Envoy config, run for real with authz unreachable: a request is refused with 503,
    and the stats listener's /stats/prometheus (the ServiceMonitor's path) shows every envoy_*
    series the rules read, with the label values they select on, and counts the failure."""
    config = yaml.safe_load(POD_ENVOY.read_text())
    ports = {"admin": _free_port(), "ingress": _free_port(), "stats": _free_port()}
    dead = _free_port()  # nothing listens: Check fails to connect
    config["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"].update(address="127.0.0.1", port_value=ports[listener["name"]])
    for cluster in config["static_resources"]["clusters"]:
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        address["socket_address"]["port_value"] = ports["admin"] if cluster["name"] == "envoy_admin" else dead
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    envoy = subprocess.Popen([envoy_binary(), "-c", str(path), "--log-level", "error", "--base-id",
                              str(ports["admin"])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = _fetch(f"http://127.0.0.1:{ports['stats']}/stats/prometheus", timeout=1)
                break
            except OSError:
                assert envoy.poll() is None and time.monotonic() < deadline, "envoy did not start"
                time.sleep(0.1)
        assert status == 200
        assert _fetch(f"http://127.0.0.1:{ports['ingress']}/mcp")[0] == 503
        # Nothing but the stats path is reachable on the stats listener.
        assert _fetch(f"http://127.0.0.1:{ports['stats']}/config_dump")[0] == 404
        _, stats = _fetch(f"http://127.0.0.1:{ports['stats']}/stats/prometheus")
    finally:
        envoy.terminate()
        envoy.wait(10)

    samples = {}
    for line in stats.splitlines():
        m = re.fullmatch(r"(envoy_\w+)\{([^}]*)\} (\S+)", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            samples[(m.group(1), labels)] = float(m.group(3))
    rules = rule_groups()
    selectors = [sel for g in rules["groups"] for r in g["rules"]
                 for sel in re.findall(r"(envoy_\w+)\{([^}]*)\}", r["expr"])]
    assert selectors
    for name, matchers in selectors:
        wanted = set(re.findall(r'(\w+)="([^"]*)"', matchers))
        assert any(n == name and wanted <= labels for n, labels in samples), f"{name}{{{matchers}}} not exported"
    errors = [v for (n, labels), v in samples.items()
              if n == "envoy_http_ext_authz_error" and ("envoy_http_conn_manager_prefix", "ingress") in labels]
    assert errors == [1.0]
