"""deploy/ is checked, not hoped: every overlay is built (with the kustomize model in kustomize.py,
and with kubectl when it is installed), every object validates against the Kubernetes schemas,
names and ports agree between the objects that refer to each other, the Envoy config inside its
ConfigMap passes `envoy --mode validate`, the policy inside its ConfigMap passes check-config with
the environment the Deployment gives it, the Istio resources carry the fields we rely on, the
dashboard and alerts name metrics that exist, and a broken manifest makes the validator fail."""

from __future__ import annotations

import base64
import copy
import fnmatch
import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from authz.dev.stack import ROOT, envoy_binary

from .kustomize import KustomizeError, build, load_docs

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.37.0"
OVERLAYS = {"base": K8S / "base", "dev": K8S / "overlays/dev", "istio": K8S / "overlays/istio",
            "production": K8S / "overlays/production"}
WITH_ENVOY = ["base", "dev", "production"]  # in the istio overlay istio-proxy is the Envoy
# Validated against the Kubernetes schemas; custom resources are checked field by field below.
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret", "ServiceAccount",
              "HorizontalPodAutoscaler"}
CRD_API_VERSIONS = {"ServiceMonitor": "monitoring.coreos.com/v1", "AuthorizationPolicy": "security.istio.io/v1",
                    "EnvoyFilter": "networking.istio.io/v1alpha3", "ServiceEntry": "networking.istio.io/v1",
                    "VirtualService": "networking.istio.io/v1"}
# Created by the operator before applying (README.md, "Deploy on Kubernetes"); dev generates authz-secrets.
EXTERNAL_SECRETS = {"authz-signing-keys", "authz-secrets"}
POLICY_VARS = ("REDIS_URL", "AUTHZ_REDIS_CLUSTER", "AUTHZ_RESOURCE", "AUTHZ_ISSUER", "AUTHZ_REDACTION_KEY")
PLACEHOLDER_SECRETS = {"redis-url": "rediss://redis.example:6380/0", "redaction-key": "k"}
METADATA_PATH = "/.well-known/oauth-protected-resource"


@pytest.fixture(scope="module", params=list(OVERLAYS))
def built(request) -> tuple[str, list[dict]]:
    return request.param, build(OVERLAYS[request.param])


def by_kind(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(objs: list[dict]) -> set[str]:
    return {o["kind"] for o in objs}


def pod_of(objs: list[dict], name: str = "mcp-demo") -> dict:
    return by_kind(objs, "Deployment", name)["spec"]["template"]["spec"]


def container(pod: dict, name: str) -> dict:
    found = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def volume(pod: dict, name: str) -> dict:
    return next(v for v in pod["volumes"] if v["name"] == name)


def mount(c: dict, volume_name: str) -> str:
    return next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == volume_name)


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def policy_of(objs: list[dict]) -> tuple[str, dict]:
    """The policy text the authz container reads, found through its volume, and its parsed YAML."""
    pod = pod_of(objs)
    authz = container(pod, "authz")
    config = Path(option(authz["args"], "--config"))
    assert str(config.parent) == mount(authz, "policy")
    cm = by_kind(objs, "ConfigMap", volume(pod, "policy")["configMap"]["name"])
    text = cm["data"][config.name]
    return text, yaml.safe_load(text)


def secret_value(objs: list[dict], name: str, key: str) -> str:
    secret = by_kind(objs, "Secret", name)
    return base64.b64decode(secret["data"][key]).decode()


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- the build -----------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_kustomize_model_matches_kubectl(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(OVERLAYS[overlay])], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    real = [d for d in yaml.safe_load_all(out.stdout) if d]

    def canonical(objs: list[dict]) -> list[str]:
        return sorted(json.dumps(o, sort_keys=True) for o in objs)

    assert canonical(build(OVERLAYS[overlay])) == canonical(real)


def test_kustomize_model_refuses_what_it_does_not_model(tmp_path):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\nnamespace: prod\n")
    with pytest.raises(KustomizeError, match="namespace"):
        build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n  - target: {kind: ConfigMap, name: x}\n"
        "    patch: '[{op: test, path: /data/a, value: c}]'\n")
    with pytest.raises(KustomizeError, match="test failed"):
        build(tmp_path)


# --- every overlay -------------------------------------------------------------------------------

def test_objects_validate_against_the_kubernetes_schema(built):
    _, objs = built
    unknown = kinds(objs) - CORE_KINDS - set(CRD_API_VERSIONS)
    assert not unknown, f"kinds nothing validates: {unknown}"
    for obj in objs:
        if obj["kind"] in CORE_KINDS:
            kubernetes_validate.validate(copy.deepcopy(obj), K8S_VERSION, strict=True)
        else:
            assert obj["apiVersion"] == CRD_API_VERSIONS[obj["kind"]], obj["metadata"]["name"]


def test_a_broken_manifest_fails_validation():
    deployment = copy.deepcopy(by_kind(build(OVERLAYS["base"]), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(by_kind(build(OVERLAYS["base"]), "Deployment"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_names_and_ports_agree_between_objects(built):
    _, objs = built
    # No namespace is baked in: `kubectl apply -n` (or a kustomize namespace) decides.
    assert not [o["metadata"]["name"] for o in objs if "namespace" in o["metadata"]]
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in objs if d["kind"] == "Deployment"}
    for d in (o for o in objs if o["kind"] == "Deployment"):
        assert selects(d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
    for svc in (o for o in objs if o["kind"] == "Service"):
        targets = [t for t in pods.values() if selects(svc["spec"]["selector"], t["metadata"]["labels"])]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects {len(targets)} Deployments"
        ports = {p["name"]: p["containerPort"] for c in targets[0]["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports or p["targetPort"] in ports.values(), \
                f"Service {svc['metadata']['name']} port {p['name']} targets {p['targetPort']}: no such container port"
    pdb = by_kind(objs, "PodDisruptionBudget", "mcp-demo")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pods["mcp-demo"]["metadata"]["labels"])
    pod = pod_of(objs)
    assert by_kind(objs, "ServiceAccount", pod["serviceAccountName"])
    # Every volume is mounted and every mount has its volume (the istio overlay removes some).
    mounted = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
    assert mounted == {v["name"] for v in pod["volumes"]}
    # ConfigMaps come from the build (generated names included); Secrets from it or from the operator.
    generated = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for v in pod["volumes"]:
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in generated, v
        if "secret" in v:
            assert ("Secret", v["secret"]["secretName"]) in generated or v["secret"]["secretName"] in EXTERNAL_SECRETS
    for c in pod["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ("Secret", ref["name"]) in generated or ref["name"] in EXTERNAL_SECRETS, e
        # The images transformer pinned every image to a registry and a tag.
        assert re.fullmatch(r"[a-z0-9.-]+/[a-z0-9./_-]+:[\w.-]+", c["image"]), c["image"]


def test_the_pod_is_locked_down_and_probes_point_at_real_ports(built):
    _, objs = built
    pod = pod_of(objs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    port_names = [p["name"] for c in pod["containers"] for p in c.get("ports", [])]
    assert len(port_names) == len(set(port_names)), f"port names repeat in the pod: {port_names}"
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsUser"] != 0
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in c:
                target = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert target["port"] in ports, f"{c['name']} {probe} names port {target['port']}"
    _, policy = policy_of(objs)
    authz = container(pod, "authz")
    assert authz["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert authz["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The probes' port is the policy's HTTP port, and the annotations scrape the same one.
    metrics = next(p["containerPort"] for p in authz["ports"] if p["name"] == authz["readinessProbe"]["httpGet"]["port"])
    assert host_port(policy["server"]["http_address"]) == ("0.0.0.0", metrics)
    annotations = by_kind(objs, "Deployment", "mcp-demo")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics) and annotations["prometheus.io/path"] == "/metrics"
    # The files the policy names are where the pod mounts them.
    assert mount(authz, "audit") == policy["audit"]["directory"]
    keys = mount(authz, "keys")
    for path in policy["identity"]["assertion"]["key_files"] + [policy["audit"]["signing_key_file"]]:
        assert Path(path).parent == Path(keys), path
    # The args are a command line the CLI accepts, and the user is the image's.
    from authz.cli.main import build_parser

    build_parser().parse_args(authz["args"])
    uid = int(re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M).group(1))
    assert authz["securityContext"]["runAsUser"] == uid
    assert container(pod, "app")["securityContext"]["runAsUser"] != uid  # the app is not authz
    # authz drains, then waits for in-flight calls; the other containers sleep through both in
    # preStop, and the pod outlives them.
    drain = policy["server"]["drain_seconds"] + policy["server"]["grace_seconds"]
    for c in pod["containers"]:
        if c["name"] != "authz":
            assert c["lifecycle"]["preStop"]["sleep"]["seconds"] >= drain, c["name"]
    assert pod["terminationGracePeriodSeconds"] > max(
        [drain] + [c["lifecycle"]["preStop"]["sleep"]["seconds"] for c in pod["containers"] if "lifecycle" in c])


def test_policy_in_the_configmap_passes_check_config(built, tmp_path, monkeypatch, capsys):
    """`authz check-config` on the policy, with exactly the environment the Deployment sets."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from authz.cli import main
    from authz.config import parse_config

    _, objs = built
    text, policy = policy_of(objs)
    keys = tmp_path / "keys"
    keys.mkdir()
    pem = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    (keys / "assertion-signing-key.pem").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(*pem))
    (keys / "audit-signing-key.pem").write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(*pem))
    text = text.replace("/etc/authz/keys", str(keys)).replace(policy["audit"]["directory"], str(tmp_path / "audit"))
    path = tmp_path / "authz.yaml"
    path.write_text(text)

    for var in POLICY_VARS:
        monkeypatch.delenv(var, raising=False)
    generated = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    env = {}
    for e in container(pod_of(objs), "authz")["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            env[e["name"]] = e["value"]
        elif ref["name"] in generated:
            env[e["name"]] = secret_value(objs, ref["name"], ref["key"])
        else:
            env[e["name"]] = PLACEHOLDER_SECRETS[ref["key"]]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    assert "ok" in capsys.readouterr().out

    config = parse_config(text, env=env)
    assert config.server.http_address.startswith("0.0.0.0:")   # probes and scrapes reach it
    assert config.server.grpc_address.startswith("127.0.0.1:")  # only the pod's proxy calls it
    assert config.store.cluster is False
    # The documented switch for a Redis Cluster works.
    assert parse_config(text, env={**env, "AUTHZ_REDIS_CLUSTER": "true"}).store.cluster is True


# --- base and the overlays that keep our Envoy ---------------------------------------------------

@pytest.mark.parametrize("overlay", WITH_ENVOY)
def test_envoy_config_in_the_configmap_is_the_reference_and_points_at_the_pod(overlay):
    objs = build(OVERLAYS[overlay])
    pod = pod_of(objs)
    envoy = container(pod, "envoy")
    assert envoy["image"].startswith("envoyproxy/envoy:v1.40.")
    config = Path(option(envoy["args"], "-c"))
    assert str(config.parent) == mount(envoy, "envoy-config")
    cm_name = volume(pod, "envoy-config")["configMap"]["name"]
    assert re.fullmatch(r"authz-envoy-[a-z0-9]{10}", cm_name)  # hashed: a change rolls the pods
    text = by_kind(objs, "ConfigMap", cm_name)["data"][config.name]
    assert text == (ROOT / "deploy/envoy/envoy.yaml").read_text(), \
        "deploy/k8s/base/envoy.yaml drifted from deploy/envoy/envoy.yaml"

    envoy_config = yaml.safe_load(text)
    [listener] = envoy_config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == next(
        p["containerPort"] for p in envoy["ports"] if p["name"] == "http")
    service = by_kind(objs, "Service", "mcp-demo")
    assert next(p for p in service["spec"]["ports"] if p["name"] == "http")["targetPort"] == "http"

    def endpoint(cluster: str) -> tuple[str, int]:
        c = next(c for c in envoy_config["static_resources"]["clusters"] if c["name"] == cluster)
        address = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        return address["address"], address["port_value"]

    _, policy = policy_of(objs)
    assert endpoint("authz") == host_port(policy["server"]["grpc_address"])
    assert endpoint("authz_http") == ("127.0.0.1", host_port(policy["server"]["http_address"])[1])
    app = container(pod, "app")["command"]
    assert endpoint("mcp") == (option(app, "--host"), int(option(app, "--port")))


def test_envoy_config_in_the_configmap_passes_envoy_validate(tmp_path):
    objs = build(OVERLAYS["base"])
    cm = by_kind(objs, "ConfigMap", volume(pod_of(objs), "envoy-config")["configMap"]["name"])
    path = tmp_path / "envoy.yaml"
    path.write_text(cm["data"]["envoy.yaml"])
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=60).stdout
    tag = container(pod_of(objs), "envoy")["image"].rsplit(":v", 1)[1]
    assert f"/{tag}/" in version, f"validated with {version.strip()}, the pod runs {tag}"


def test_base_has_a_service_account_without_a_token():
    objs = build(OVERLAYS["base"])
    sa = by_kind(objs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert pod_of(objs)["serviceAccountName"] == sa["metadata"]["name"]
    # Base applies on clusters without the Prometheus Operator: no ServiceMonitor there.
    assert "ServiceMonitor" not in kinds(objs)


def test_dev_overlay_runs_redis_and_wires_redis_url():
    objs = build(OVERLAYS["dev"])
    pod = pod_of(objs)
    env = {e["name"]: e for e in container(pod, "authz")["env"]}
    ref = env["REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert re.fullmatch(r"authz-secrets-[a-z0-9]{10}", ref["name"]) and ref["key"] == "redis-url"
    assert env["AUTHZ_REDACTION_KEY"]["valueFrom"]["secretKeyRef"]["name"] == ref["name"]
    url = urlsplit(secret_value(objs, ref["name"], "redis-url"))
    assert url.scheme == "redis"
    service = by_kind(objs, "Service", url.hostname)
    [port] = service["spec"]["ports"]
    assert port["port"] == url.port
    redis = by_kind(objs, "Deployment", url.hostname)
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    redis_pod = redis["spec"]["template"]["spec"]
    assert redis_pod["securityContext"]["runAsNonRoot"] is True
    [c] = redis_pod["containers"]
    assert {"name": port["targetPort"], "containerPort": url.port} in c["ports"]
    assert c["readinessProbe"]["tcpSocket"]["port"] == port["targetPort"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert mount(c, "data") == "/data"  # the one place redis writes


def test_production_overlay_scales_on_cpu_and_requires_redis():
    objs = build(OVERLAYS["production"])
    deployment = by_kind(objs, "Deployment", "mcp-demo")
    pod = deployment["spec"]["template"]["spec"]
    hpa = by_kind(objs, "HorizontalPodAutoscaler", "mcp-demo")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (deployment["apiVersion"], deployment["kind"])
    assert target["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # the HPA owns it: an apply must not reset it
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    # Utilization is relative to requests: every container must request CPU.
    assert all(c["resources"]["requests"].get("cpu") for c in pod["containers"])
    # A drain evicts one pod at a time and leaves the rest serving.
    assert by_kind(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(selects(c["labelSelector"]["matchLabels"], labels) for c in spread)
    env = {e["name"]: e for e in container(pod, "authz")["env"]}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "authz-secrets", "key": "redis-url",
                                                            "optional": False}
    assert env["AUTHZ_REDIS_CLUSTER"]["value"] in ("true", "false")
    assert "ServiceMonitor" in kinds(objs)


def test_service_monitor_scrapes_the_metrics_port():
    objs = build(OVERLAYS["production"])  # the overlay that adds components/monitoring
    sm = by_kind(objs, "ServiceMonitor")
    service = by_kind(objs, "Service", "mcp-demo")
    assert selects(sm["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    [endpoint] = sm["spec"]["endpoints"]
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    authz = container(pod_of(objs), "authz")
    assert port["targetPort"] in [p["name"] for p in authz["ports"]]  # authz's HTTP port, not Envoy
    assert endpoint["path"] == "/metrics"
    assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


def _seconds(duration: str) -> int:
    return int(re.fullmatch(r"(\d+)s", duration).group(1))


# --- istio ---------------------------------------------------------------------------------------

def test_istio_resources_carry_the_fields_we_rely_on():
    objs = build(OVERLAYS["istio"])
    deployment = by_kind(objs, "Deployment", "mcp-demo")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["app", "authz"]  # istio-proxy is the Envoy
    assert not [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("authz-envoy")]
    # istio-proxy forwards inbound traffic to the pod IP: the app listens there, on the port
    # the Service's "http" names.
    app = container(pod, "app")
    app_port = int(option(app["command"], "--port"))
    assert option(app["command"], "--host") == "0.0.0.0"
    assert app["ports"] == [{"name": "http", "containerPort": app_port}]
    service = by_kind(objs, "Service", "mcp-demo")
    service_ports = {p["targetPort"]: p["port"] for p in service["spec"]["ports"]}
    authz = container(pod, "authz")
    metrics_port = authz["ports"][0]["containerPort"]
    _, policy = policy_of(objs)
    grpc_host, grpc_port = host_port(policy["server"]["grpc_address"])
    assert grpc_host == "127.0.0.1" and "--grpc-address" not in authz["args"]

    # The provider, the ServiceEntry and the EnvoyFilter's cluster all name authz in the pod.
    mesh = load_docs(K8S / "overlays/istio/istio-meshconfig.yaml")[0]["spec"]["meshConfig"]
    [provider] = mesh["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert grpc["failOpen"] is False and grpc["statusOnError"] == "503"
    assert grpc["includeRequestBodyInCheck"]["packAsBytes"] is True
    se = by_kind(objs, "ServiceEntry")["spec"]
    assert se["hosts"] == [grpc["service"]] and se["exportTo"] == ["."]
    assert se["resolution"] == "STATIC" and se["endpoints"] == [{"address": grpc_host}]
    assert se["ports"] == [{"name": "grpc", "number": grpc_port, "protocol": "GRPC"}]
    assert grpc["port"] == grpc_port

    policy_obj = by_kind(objs, "AuthorizationPolicy")
    assert policy_obj["spec"]["action"] == "CUSTOM" and policy_obj["spec"]["provider"]["name"] == provider["name"]
    assert selects(policy_obj["spec"]["selector"]["matchLabels"], labels)
    [rule] = policy_obj["spec"]["rules"]
    [to] = rule["to"]
    assert to["operation"]["notPorts"] == [str(metrics_port)]  # Prometheus, probes: not the app
    assert to["operation"]["notPaths"] == [METADATA_PATH, METADATA_PATH + "/*"]

    ef = by_kind(objs, "EnvoyFilter")["spec"]
    assert selects(ef["workloadSelector"]["labels"], labels)
    [patch] = ef["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER" and patch["patch"]["operation"] == "INSERT_BEFORE"
    assert patch["match"]["context"] == "SIDECAR_INBOUND"
    assert patch["match"]["listener"]["portNumber"] == app_port  # inbound: the container port
    typed = patch["patch"]["value"]["typed_config"]
    assert typed["grpc_service"]["envoy_grpc"]["cluster_name"] == f"outbound|{grpc_port}||{grpc['service']}"
    assert typed["failure_mode_allow"] is False and typed["allow_mode_override"] is True

    # The metadata goes to authz's HTTP port, everything else on port 80 to the app.
    vs = by_kind(objs, "VirtualService", "mcp-demo")["spec"]
    assert vs["hosts"] == [service["metadata"]["name"]] and vs["gateways"] == ["mesh"]
    routes = {r["name"]: r for r in vs["http"]}
    assert [r["name"] for r in vs["http"]] == ["resource-metadata", "app"]  # first match wins
    assert routes["resource-metadata"]["match"] == [
        {"port": service_ports["http"], "uri": {"exact": METADATA_PATH}},
        {"port": service_ports["http"], "uri": {"prefix": METADATA_PATH + "/"}}]
    assert routes["app"]["match"] == [{"port": service_ports["http"]}]
    for route, target_port in (("resource-metadata", "metrics"), ("app", "http")):
        [dest] = routes[route]["route"]
        assert dest["destination"] == {"host": service["metadata"]["name"],
                                       "port": {"number": service_ports[target_port]}}


def test_istio_ext_proc_filter_is_the_reference_one_and_valid(tmp_path):
    """The EnvoyFilter's ext_proc is deploy/envoy/envoy.yaml's, only pointed at the ServiceEntry's
    cluster; swapped into the reference config, Envoy accepts it."""
    objs = build(OVERLAYS["istio"])
    typed = copy.deepcopy(by_kind(objs, "EnvoyFilter")["spec"]["configPatches"][0]["patch"]["value"]["typed_config"])
    reference = yaml.safe_load((ROOT / "deploy/envoy/envoy.yaml").read_text())
    hcm = reference["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    ext_proc = ext_proc["typed_config"]["extension_config"]  # inside the 431 matcher (envoy.yaml)
    cluster = typed["grpc_service"]["envoy_grpc"]["cluster_name"]
    expected = copy.deepcopy(ext_proc["typed_config"])
    expected["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster
    assert typed == expected

    ext_proc["typed_config"] = typed
    clusters = reference["static_resources"]["clusters"]
    authz = copy.deepcopy(next(c for c in clusters if c["name"] == "authz"))
    authz["name"] = authz["load_assignment"]["cluster_name"] = cluster
    clusters.append(authz)
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(reference))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- monitoring and the image --------------------------------------------------------------------

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
    rules = load_docs(ROOT / "deploy/prometheus/authz-rules.yaml")[0]
    assert rules["kind"] == "PrometheusRule"
    exprs += [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\b(authz_[a-z0-9_]+)", e)}
    assert used
    missing = sorted(m for m in used if m not in names)
    assert not missing, f"dashboard/alerts use undefined metrics: {missing}"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (or a directory above it) out of the build context.
    fnmatch's * also crosses /, so this errs towards "ignored"."""
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(p, pattern) or (pattern.startswith("**/") and fnmatch.fnmatchcase(p, pattern[3:]))
               for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_runs_the_cli_as_non_root_with_what_the_context_holds():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M)
    assert 'ENTRYPOINT ["authz"]' in text and 'CMD ["serve", "--config", "/etc/authz/authz.yaml"]' in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    from authz.cli.main import build_parser

    build_parser().parse_args(["serve", "--config", "/etc/authz/authz.yaml"])
    # Every file the build copies from the context exists and is not excluded by .dockerignore.
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ") and "--from" not in line]
    sources = [s for c in copies for s in c]
    assert "deploy/authz/authz.yaml" in sources and "authz" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source, patterns), f"{source} is copied but .dockerignore excludes it"
    assert _dockerignored("deploy/k8s/base/envoy.yaml", patterns)  # the matcher does match
    # The image exposes the ports the cluster policy listens on.
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
    _, policy = policy_of(build(OVERLAYS["base"]))
    assert {host_port(policy["server"][k])[1] for k in ("grpc_address", "http_address")} <= exposed
