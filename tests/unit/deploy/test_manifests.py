"""deploy/ is checked, not hoped: every manifest validates against the Kubernetes schemas, the
Envoy config inside its ConfigMap passes `envoy --mode validate`, the policy inside its ConfigMap
passes check-config, the Istio resources carry the fields we rely on, the dashboard and alerts
name metrics that exist, and a broken manifest makes the validator fail."""

from __future__ import annotations

import base64
import copy
import importlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from authz.devstack import ROOT, envoy_binary

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.37.0"
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"}


# --- a small kustomize, for exactly the features our kustomizations use --------------------------

def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pointer(doc: Any, path: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.strip("/").split("/")]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc, parts[-1]


def _apply(doc: dict, ops: list[dict]) -> None:
    for op in ops:
        parent, key = _pointer(doc, op["path"])
        if op["op"] == "remove":
            del parent[int(key) if isinstance(parent, list) else key]
        elif op["op"] == "replace":
            if isinstance(parent, list):
                parent[int(key)] = op["value"]
            else:
                assert key in parent, f"replace of missing {op['path']}"
                parent[key] = op["value"]
        elif op["op"] == "add":
            if isinstance(parent, list):
                parent.append(op["value"]) if key == "-" else parent.insert(int(key), op["value"])
            else:
                parent[key] = op["value"]
        else:
            raise AssertionError(f"unsupported op {op['op']}")


def build(directory: Path) -> list[dict]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    allowed = {"apiVersion", "kind", "labels", "resources", "configMapGenerator", "secretGenerator",
               "generatorOptions", "patches"}
    assert set(k) <= allowed, f"kustomization uses features this test does not model: {set(k) - allowed}"
    objs: list[dict] = []
    for res in k.get("resources", []):
        path = directory / res
        objs += build(path) if path.is_dir() else _docs(path)
    for gen in k.get("configMapGenerator", []):
        data = {Path(f).name: (directory / f).read_text() for f in gen.get("files", [])}
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for gen in k.get("secretGenerator", []):
        data = {}
        for lit in gen.get("literals", []):
            key, _, value = lit.partition("=")
            data[key] = base64.b64encode(value.encode()).decode()
        objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": gen["name"]}, "type": "Opaque",
                     "data": data})
    for patch in k.get("patches", []):
        target = patch["target"]
        matches = [o for o in objs if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        assert matches, f"patch target {target} not found"
        for o in matches:
            _apply(o, yaml.safe_load(patch["patch"]))
    for pairs in k.get("labels", []):
        for o in objs:
            o.setdefault("metadata", {}).setdefault("labels", {}).update(pairs["pairs"])
    return objs


OVERLAYS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "istio": K8S / "overlays" / "istio"}


@pytest.fixture(scope="module", params=list(OVERLAYS))
def built(request) -> tuple[str, list[dict]]:
    return request.param, build(OVERLAYS[request.param])


def by_kind(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''}"
    return found[0]


# --- the tests -----------------------------------------------------------------------------------

def test_core_objects_validate_against_the_kubernetes_schema(built):
    _, objs = built
    core = [o for o in objs if o["kind"] in CORE_KINDS]
    assert core
    for obj in core:
        kubernetes_validate.validate(copy.deepcopy(obj), K8S_VERSION, strict=True)


def test_a_broken_manifest_fails_validation():
    deployment = copy.deepcopy(by_kind(build(OVERLAYS["base"]), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(by_kind(build(OVERLAYS["base"]), "Deployment"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_pod_is_locked_down_and_probes_point_at_real_ports(built):
    name, objs = built
    pod = by_kind(objs, "Deployment", "mcp-demo")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in c:
                target = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert target["port"] in ports, f"{c['name']} {probe} names port {target['port']}"
    authz = next(c for c in pod["containers"] if c["name"] == "authz")
    assert authz["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert authz["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "audit", "mountPath": "/var/lib/authz/audit"} in authz["volumeMounts"]
    # The args are a command line the CLI accepts.
    from authz.cli import build_parser

    args = build_parser().parse_args(authz["args"])
    assert args.config.startswith("/etc/authz/policy/")
    # authz drains, then waits for in-flight calls: the pod must outlive both.
    assert pod["terminationGracePeriodSeconds"] >= 5 + 10
    if name != "istio":
        envoy = next(c for c in pod["containers"] if c["name"] == "envoy")
        assert envoy["image"].startswith("envoyproxy/envoy:v1.40")


def test_envoy_config_in_the_configmap_is_the_reference_and_valid(tmp_path):
    cm = by_kind(build(OVERLAYS["base"]), "ConfigMap", "authz-envoy")
    text = cm["data"]["envoy.yaml"]
    assert text == (ROOT / "deploy/envoy/envoy.yaml").read_text(), \
        "deploy/k8s/base/envoy.yaml drifted from deploy/envoy/envoy.yaml"
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every cluster the sidecar needs is in the pod: authz on 9001, its HTTP port on 9002.
    clusters = {c["name"]: c for c in yaml.safe_load(text)["static_resources"]["clusters"]}
    port = clusters["authz"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert port["socket_address"] == {"address": "127.0.0.1", "port_value": 9001}


def test_policy_in_the_configmap_passes_check_config(tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from authz.assembly import build_pipeline
    from authz.config import parse_config
    from authz.store import MemoryStore

    keys = tmp_path / "keys"
    keys.mkdir()
    pem = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    (keys / "assertion-signing-key.pem").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(*pem))
    (keys / "audit-signing-key.pem").write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(*pem))
    text = by_kind(build(OVERLAYS["base"]), "ConfigMap", "authz-policy")["data"]["authz.yaml"]
    text = text.replace("/etc/authz/keys", str(keys)).replace("/var/lib/authz/audit", str(tmp_path / "audit"))
    env = {"AUTHZ_RESOURCE": "https://mcp.example.com/mcp", "AUTHZ_ISSUER": "https://sso.example.com/realms/main",
           "AUTHZ_REDACTION_KEY": "k", **os.environ}
    config = parse_config(text, env=env)
    build_pipeline(config, MemoryStore())
    assert config.server.http_address.startswith("0.0.0.0:")  # probes and scrapes reach it
    assert config.server.grpc_address.startswith("127.0.0.1:")  # only the pod's Envoy calls it


def test_dev_overlay_runs_redis_and_wires_redis_url():
    objs = build(OVERLAYS["dev"])
    assert by_kind(objs, "Deployment", "redis") and by_kind(objs, "Service", "redis")
    secret = by_kind(objs, "Secret", "authz-secrets")
    assert base64.b64decode(secret["data"]["redis-url"]).decode() == "redis://redis:6379/0"
    pod = by_kind(objs, "Deployment", "mcp-demo")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in next(c for c in pod["containers"] if c["name"] == "authz")["env"]}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "authz-secrets", "key": "redis-url",
                                                            "optional": True}


def test_istio_resources_carry_the_fields_we_rely_on():
    objs = build(OVERLAYS["istio"])
    pod = by_kind(objs, "Deployment", "mcp-demo")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["app", "authz"]  # istio-proxy is the Envoy
    authz = pod["containers"][1]
    assert "--grpc-address" in authz["args"] and "0.0.0.0:9001" in authz["args"]
    policy = by_kind(objs, "AuthorizationPolicy")
    assert policy["apiVersion"].startswith("security.istio.io/")
    assert policy["spec"]["action"] == "CUSTOM" and policy["spec"]["provider"]["name"] == "authz"
    ef = by_kind(objs, "EnvoyFilter")["spec"]["configPatches"][0]
    assert ef["applyTo"] == "HTTP_FILTER" and ef["patch"]["operation"] == "INSERT_BEFORE"
    typed = ef["patch"]["value"]["typed_config"]
    assert typed["@type"].endswith("ext_proc.v3.ExternalProcessor")
    assert typed["failure_mode_allow"] is False and typed["allow_mode_override"] is True
    mesh = _docs(K8S / "overlays/istio/istio-meshconfig.yaml")[0]["spec"]["meshConfig"]
    provider = mesh["extensionProviders"][0]
    assert provider["name"] == "authz"
    grpc = provider["envoyExtAuthzGrpc"]
    assert grpc["failOpen"] is False and grpc["statusOnError"] == "503"
    assert grpc["includeRequestBodyInCheck"]["packAsBytes"] is True
    service = by_kind(objs, "Service", "mcp-demo")
    assert grpc["port"] in [p["port"] for p in service["spec"]["ports"]]


def test_service_monitor_scrapes_the_metrics_port():
    objs = build(OVERLAYS["base"])
    sm = by_kind(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    ports = [p["name"] for p in by_kind(objs, "Service", "mcp-demo")["spec"]["ports"]]
    assert sm["spec"]["endpoints"][0]["port"] in ports and sm["spec"]["endpoints"][0]["path"] == "/metrics"


def _registered_metric_names() -> set[str]:
    for module in ("authz.metrics", "authz.policy.stage", "authz.limits.stage", "authz.redaction.stage",
                   "authz.audit.log"):
        importlib.import_module(module)
    from prometheus_client import REGISTRY

    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                "info": ("_info",)}
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def test_dashboard_and_alerts_name_metrics_that_exist():
    names = _registered_metric_names()
    dashboard = json.loads((ROOT / "deploy/grafana/authz-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = _docs(ROOT / "deploy/prometheus/authz-rules.yaml")[0]
    assert rules["kind"] == "PrometheusRule"
    exprs += [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\b(authz_[a-z0-9_]+)", e)}
    missing = sorted(m for m in used if m not in names)
    assert not missing, f"dashboard/alerts use undefined metrics: {missing}"


def test_dockerfile_runs_the_cli_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M)
    assert 'ENTRYPOINT ["authz"]' in text and 'CMD ["serve", "--config", "/etc/authz/authz.yaml"]' in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    from authz.cli import build_parser

    build_parser().parse_args(["serve", "--config", "/etc/authz/authz.yaml"])
