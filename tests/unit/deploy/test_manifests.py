"""deploy/ is checked, not hoped: every overlay is built (with the kustomize model in kustomize.py,
and with real kustomize, kubectl's, when it is installed: the two must agree), every core object
validates against the Kubernetes schemas and every custom resource against its project's
published schema (data/crd-schemas), names and ports agree between the objects that refer to each
other, the pod's Envoy config keeps what must match the reference config and passes `envoy --mode
validate`, the policy passes check-config with the environment the Deployment gives it and the
keys `authz keygen` makes, the shutdown budget adds up, the NetworkPolicies admit only what must
reach the pod, the dashboard and alerts name metrics that exist, and a broken manifest makes the
validators fail."""

from __future__ import annotations

import base64
import copy
import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from authz.dev.stack import ROOT, envoy_binary

from .kustomize import KustomizeError, build, load_docs

K8S = ROOT / "deploy" / "k8s"
CRD_SCHEMAS = Path(__file__).parent / "data" / "crd-schemas"
K8S_VERSION = "1.37.0"
OVERLAYS = {"base": K8S / "base", "dev": K8S / "overlays/dev", "istio": K8S / "overlays/istio",
            "production": K8S / "overlays/production"}
WITH_ENVOY = ["base", "dev", "production"]  # in the istio overlay istio-proxy is the Envoy
# Validated against the Kubernetes schemas; custom resources against data/crd-schemas.
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret", "ServiceAccount",
              "HorizontalPodAutoscaler", "NetworkPolicy"}
CRD_API_VERSIONS = {"ServiceMonitor": "monitoring.coreos.com/v1", "PrometheusRule": "monitoring.coreos.com/v1",
                    "AuthorizationPolicy": "security.istio.io/v1",
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


def all_containers(pod: dict) -> list[dict]:
    """The pod's containers, native sidecars (init containers with restartPolicy Always) included."""
    return pod.get("initContainers", []) + pod["containers"]


def container(pod: dict, name: str) -> dict:
    found = [c for c in all_containers(pod) if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def settings(objs: list[dict]) -> dict[str, str]:
    """The values the operator supplies (base/settings.env), as the build's ConfigMap holds them."""
    [cm] = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("authz-settings-")]
    return cm["data"]


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

def real_kustomize() -> list[str] | None:
    """A real kustomize: the standalone binary, else kubectl's built-in one."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(real_kustomize() is None,
                    reason="no real kustomize (install kubectl or kustomize): the overlays were built with the "
                           "project's kustomize model only")
@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_kustomize_model_matches_kubectl(overlay):
    out = subprocess.run([*real_kustomize(), str(OVERLAYS[overlay])], capture_output=True, text=True,
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

def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    """The published schema of a custom resource's kind (data/crd-schemas, see its README)."""
    group, version = CRD_API_VERSIONS[kind].split("/")
    schema = json.loads((CRD_SCHEMAS / f"{group}_{kind.lower()}_{version}.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_objects_validate_against_the_kubernetes_schema(built):
    _, objs = built
    unknown = kinds(objs) - CORE_KINDS - set(CRD_API_VERSIONS)
    assert not unknown, f"kinds nothing validates: {unknown}"
    for obj in objs:
        if obj["kind"] in CORE_KINDS:
            kubernetes_validate.validate(copy.deepcopy(obj), K8S_VERSION, strict=True)
        else:
            assert obj["apiVersion"] == CRD_API_VERSIONS[obj["kind"]], obj["metadata"]["name"]
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                      for e in crd_validator(obj["kind"]).iter_errors(obj)]
            assert not errors, f"{obj['kind']} {obj['metadata']['name']}: {errors}"


@pytest.mark.parametrize("overlay, kind, path, value", [
    ("production", "ServiceMonitor", ["spec", "endpoints", 0, "intervall"], "15s"),
    ("production", "ServiceMonitor", ["spec", "endpoints", 0, "interval"], "15 seconds"),
    ("production", "PrometheusRule", ["spec", "groups", 0, "rules", 0, "for"], 5),
    ("istio", "AuthorizationPolicy", ["spec", "action"], "PERMIT"),
    ("istio", "EnvoyFilter", ["spec", "configPatches", 0, "patch", "operation"], "INSERT_SOMEWHERE"),
    ("istio", "ServiceEntry", ["spec", "resolution"], "MAGIC"),
    ("istio", "VirtualService", ["spec", "http", 0, "match", 0, "uri", "suffix"], "/x"),
])
def test_a_broken_custom_resource_fails_its_schema(overlay, kind, path, value):
    obj = copy.deepcopy(by_kind(build(OVERLAYS[overlay]), kind))
    assert not list(crd_validator(kind).iter_errors(obj))
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(crd_validator(kind).iter_errors(obj)), f"{kind} with {path}={value!r} passed its schema"


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
        ports = {p["name"]: p["containerPort"] for c in all_containers(targets[0]["spec"]) for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports or p["targetPort"] in ports.values(), \
                f"Service {svc['metadata']['name']} port {p['name']} targets {p['targetPort']}: no such container port"
    pdb = by_kind(objs, "PodDisruptionBudget", "mcp-demo")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pods["mcp-demo"]["metadata"]["labels"])
    pod = pod_of(objs)
    assert by_kind(objs, "ServiceAccount", pod["serviceAccountName"])
    # Every volume is mounted and every mount has its volume (the istio overlay removes some).
    mounted = {m["name"] for c in all_containers(pod) for m in c.get("volumeMounts", [])}
    assert mounted == {v["name"] for v in pod["volumes"]}
    # ConfigMaps come from the build (generated names included); Secrets from it or from the operator.
    generated = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for v in pod["volumes"]:
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in generated, v
        if "secret" in v:
            assert ("Secret", v["secret"]["secretName"]) in generated or v["secret"]["secretName"] in EXTERNAL_SECRETS
    for c in all_containers(pod):
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
    port_names = [p["name"] for c in all_containers(pod) for p in c.get("ports", [])]
    assert len(port_names) == len(set(port_names)), f"port names repeat in the pod: {port_names}"
    for c in all_containers(pod):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsUser"] != 0
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in c:
                target = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert target["port"] in ports, f"{c['name']} {probe} names port {target['port']}"
    _, policy = policy_of(objs)
    authz = container(pod, "authz")
    assert authz["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert authz["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The probes' port is the policy's HTTP port.
    metrics = next(p["containerPort"] for p in authz["ports"] if p["name"] == authz["readinessProbe"]["httpGet"]["port"])
    assert host_port(policy["server"]["http_address"]) == ("0.0.0.0", metrics)
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


def test_shutdown_order_keeps_authz_answering_until_envoy_is_gone(built):
    """authz and Envoy are native sidecars, started in that order and stopped in reverse after
    the app: Envoy never runs without authz, the app never without Envoy. The grace period
    covers the app's preStop, authz's drain and grace, and leaves a stream budget."""
    overlay, objs = built
    pod = pod_of(objs)
    sidecars = [c["name"] for c in pod["initContainers"]]
    assert all(c["restartPolicy"] == "Always" for c in pod["initContainers"])
    assert sidecars == (["authz"] if overlay == "istio" else ["authz", "envoy"])
    assert [c["name"] for c in pod["containers"]] == ["app"]
    # Each sidecar is started (its startupProbe passed) before the next container starts.
    assert all("startupProbe" in c for c in pod["initContainers"])
    # Only the app sleeps in preStop (while the pod leaves the endpoints); the sidecars are
    # stopped only after it exited, so they need none.
    assert [c["name"] for c in all_containers(pod) if "lifecycle" in c] == ["app"]
    _, policy = policy_of(objs)
    pre_stop = container(pod, "app")["lifecycle"]["preStop"]["sleep"]["seconds"]
    authz_stop = policy["server"]["drain_seconds"] + policy["server"]["grace_seconds"]
    stream_budget = pod["terminationGracePeriodSeconds"] - pre_stop - authz_stop
    assert stream_budget >= 60, f"a streamed answer gets only {stream_budget}s after deletion"
    # The numbers the Deployment's comment gives are these.
    text = (K8S / "base/deployment.yaml").read_text()
    assert f"terminationGracePeriodSeconds = {pod['terminationGracePeriodSeconds']}" in text
    assert f"preStop\n#         sleeps {pre_stop} s" in text
    assert f"drain_seconds ({policy['server']['drain_seconds']})" in text
    assert f"grace_seconds ({policy['server']['grace_seconds']})" in text


def test_one_scrape_path(built):
    """No prometheus.io annotations next to a ServiceMonitor (everything would be scraped
    twice); only the istio overlay, whose istio-proxy merges authz's metrics by them, has them."""
    overlay, objs = built
    annotations = by_kind(objs, "Deployment", "mcp-demo")["spec"]["template"]["metadata"].get("annotations", {})
    scrape = {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")}
    if overlay == "istio":
        authz = container(pod_of(objs), "authz")
        assert scrape == {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics",
                          "prometheus.io/port": str(authz["ports"][0]["containerPort"])}
        assert "ServiceMonitor" not in kinds(objs)
    else:
        assert scrape == {}


def test_settings_reach_the_images_and_the_policy(built):
    """The three values of settings.env are where they act: the image of the containers that run
    authz's image, and the policy's environment."""
    _, objs = built
    values = settings(objs)
    assert set(values) == {"AUTHZ_IMAGE", "AUTHZ_ISSUER", "AUTHZ_RESOURCE"}
    pod = pod_of(objs)
    assert container(pod, "authz")["image"] == container(pod, "app")["image"] == values["AUTHZ_IMAGE"]
    env = {e["name"]: e for e in container(pod, "authz")["env"]}
    for key in ("AUTHZ_ISSUER", "AUTHZ_RESOURCE"):
        ref = env[key]["valueFrom"]["configMapKeyRef"]
        assert ref["key"] == key and ref["name"] == by_kind(objs, "ConfigMap", ref["name"])["metadata"]["name"]
        assert ref["name"].startswith("authz-settings-")  # hashed: a change rolls the pods
    # No other placeholder hides anywhere in the build: example.com appears only where a
    # setting was copied.
    for obj in objs:
        if not obj["metadata"]["name"].startswith("authz-settings-"):
            text = json.dumps(obj).replace(values["AUTHZ_IMAGE"], "")
            assert "example.com" not in text, f"{obj['kind']} {obj['metadata']['name']}"


def test_policy_in_the_configmap_passes_check_config(built, tmp_path, monkeypatch, capsys):
    """`authz check-config` on the policy, with exactly the environment the Deployment sets."""
    from authz.cli import keygen, main
    from authz.config import parse_config

    _, objs = built
    text, policy = policy_of(objs)
    # The keys come from `authz keygen`, the command the README gives: it makes every file the
    # policy reads from the keys volume, and its kubectl line stores exactly those.
    keys = tmp_path / "keys"
    paths = keygen.generate(keys)
    mounted = mount(container(pod_of(objs), "authz"), "keys")
    wanted = {Path(f).name for f in policy["identity"]["assertion"]["key_files"] + [policy["audit"]["signing_key_file"]]
              if str(Path(f).parent) == mounted}
    assert wanted == {keygen.ASSERTION_KEY, keygen.AUDIT_KEY}
    command = keygen.secret_command(paths)
    assert f"secret generic {volume(pod_of(objs), 'keys')['secret']['secretName']} " in command
    assert {arg.split("=")[1] for arg in command.split() if arg.startswith("--from-file=")} == wanted
    text = text.replace("/etc/authz/keys", str(keys)).replace(policy["audit"]["directory"], str(tmp_path / "audit"))
    path = tmp_path / "authz.yaml"
    path.write_text(text)

    for var in POLICY_VARS:
        monkeypatch.delenv(var, raising=False)
    generated = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    env = {}
    for e in container(pod_of(objs), "authz")["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if "configMapKeyRef" in e.get("valueFrom", {}):
            cm_ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = by_kind(objs, "ConfigMap", cm_ref["name"])["data"][cm_ref["key"]]
        elif ref is None:
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

def _hcm(listener: dict) -> dict:
    [chain] = listener["filter_chains"]
    [hcm] = chain["filters"]
    return hcm["typed_config"]


def _listener(config: dict, name: str) -> dict:
    return next(x for x in config["static_resources"]["listeners"] if x["name"] == name)


def _cluster(config: dict, name: str) -> dict:
    return next(c for c in config["static_resources"]["clusters"] if c["name"] == name)


def test_pod_envoy_config_keeps_what_must_match_the_reference():
    """The pod's Envoy config is its own (no demo routes), but everything that decides what gets
    checked and how must equal deploy/envoy/envoy.yaml, the config every end-to-end test runs:
    the filters and their order, the connection manager's hardening and timeouts, the authz
    clusters, the metadata routes, the admin address and the overload manager."""
    reference = yaml.safe_load((ROOT / "deploy/envoy/envoy.yaml").read_text())
    pod = yaml.safe_load((K8S / "base/envoy.yaml").read_text())
    assert pod["admin"] == reference["admin"]
    assert pod["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert pod["overload_manager"] == reference["overload_manager"]
    ref_hcm, pod_hcm = _hcm(_listener(reference, "ingress")), _hcm(_listener(pod, "ingress"))
    assert _listener(pod, "ingress")["address"] == _listener(reference, "ingress")["address"]
    assert {k: v for k, v in pod_hcm.items() if k != "route_config"} == \
        {k: v for k, v in ref_hcm.items() if k != "route_config"}
    for name in ("authz", "authz_http"):
        assert _cluster(pod, name) == _cluster(reference, name)
    [ref_host] = ref_hcm["route_config"]["virtual_hosts"]
    [pod_host] = pod_hcm["route_config"]["virtual_hosts"]
    # The sidecar's own public documents: the RFC 9728 metadata and the sign-in server.
    served = [r for r in ref_host["routes"] if r["route"]["cluster"] == "authz_http"]
    assert len(served) == 4 and pod_host["routes"][:4] == served
    # The rest goes to the app, through both filters (nothing else disables them).
    for route in pod_host["routes"][4:]:
        assert route["route"]["cluster"] == "mcp" and "typed_per_filter_config" not in route
    assert pod_host["routes"][-1]["match"] == {"prefix": "/"}
    assert _cluster(pod, "mcp")["load_assignment"] == _cluster(reference, "mcp")["load_assignment"]
    # Nothing routes to an upstream that does not run in the pod.
    assert {c["name"] for c in pod["static_resources"]["clusters"]} == {"authz", "authz_http", "mcp", "envoy_admin"}
    # The stats listener serves /stats/prometheus of the admin port and nothing else.
    stats = _hcm(_listener(pod, "stats"))
    [host] = stats["route_config"]["virtual_hosts"]
    assert host["routes"] == [{"match": {"path": "/stats/prometheus"}, "route": {"cluster": "envoy_admin"}},
                              {"match": {"prefix": "/"}, "direct_response": {"status": 404}}]
    admin = _cluster(pod, "envoy_admin")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert admin["endpoint"]["address"] == pod["admin"]["address"]
    assert [f["name"] for f in stats["http_filters"]] == ["envoy.filters.http.router"]


def test_the_consistency_test_notices_a_drift(tmp_path, monkeypatch):
    """The test above fails when a security-relevant field differs (not a test that cannot fail)."""
    reference = yaml.safe_load((ROOT / "deploy/envoy/envoy.yaml").read_text())
    for mutate in (lambda c: _hcm(_listener(c, "ingress")).update(normalize_path=False),
                   lambda c: _hcm(_listener(c, "ingress"))["http_filters"][0]["typed_config"].update(
                       failure_mode_allow=True),
                   lambda c: _hcm(_listener(c, "ingress"))["route_config"]["virtual_hosts"][0]["routes"].insert(
                       2, {"match": {"prefix": "/admin"}, "route": {"cluster": "authz_http"}})):
        pod = yaml.safe_load((K8S / "base/envoy.yaml").read_text())
        mutate(pod)
        fake = tmp_path / "deploy/k8s/base"
        fake.mkdir(parents=True, exist_ok=True)
        (fake / "envoy.yaml").write_text(yaml.safe_dump(pod))
        (tmp_path / "deploy/envoy").mkdir(parents=True, exist_ok=True)
        (tmp_path / "deploy/envoy/envoy.yaml").write_text(yaml.safe_dump(reference))
        monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
        monkeypatch.setattr(f"{__name__}.K8S", tmp_path / "deploy/k8s")
        with pytest.raises(AssertionError):
            test_pod_envoy_config_keeps_what_must_match_the_reference()


@pytest.mark.parametrize("overlay", WITH_ENVOY)
def test_envoy_config_in_the_configmap_points_at_the_pod(overlay):
    objs = build(OVERLAYS[overlay])
    pod = pod_of(objs)
    envoy = container(pod, "envoy")
    assert envoy["image"].startswith("envoyproxy/envoy:v1.40.")
    config = Path(option(envoy["args"], "-c"))
    assert str(config.parent) == mount(envoy, "envoy-config")
    cm_name = volume(pod, "envoy-config")["configMap"]["name"]
    assert re.fullmatch(r"authz-envoy-[a-z0-9]{10}", cm_name)  # hashed: a change rolls the pods
    text = by_kind(objs, "ConfigMap", cm_name)["data"][config.name]
    assert text == (K8S / "base/envoy.yaml").read_text()

    envoy_config = yaml.safe_load(text)
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    assert _listener(envoy_config, "ingress")["address"]["socket_address"]["port_value"] == ports["http"]
    stats = _listener(envoy_config, "stats")["address"]["socket_address"]
    assert (stats["address"], stats["port_value"]) == ("0.0.0.0", ports["envoy-metrics"])
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
    # Redis requires the password the URL carries, taken from the same Secret.
    assert c["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    [password] = [e for e in c["env"] if e["name"] == "REDIS_PASSWORD"]
    pw_ref = password["valueFrom"]["secretKeyRef"]
    assert pw_ref["name"] == ref["name"]
    assert url.password and url.password == secret_value(objs, pw_ref["name"], pw_ref["key"])


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
    assert all(c["resources"]["requests"].get("cpu") for c in all_containers(pod))
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


def test_service_monitor_scrapes_authz_and_envoy_and_the_rules_ship_with_it():
    objs = build(OVERLAYS["production"])  # the overlay that adds components/monitoring
    sm = by_kind(objs, "ServiceMonitor")
    service = by_kind(objs, "Service", "mcp-demo")
    assert selects(sm["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    pod = pod_of(objs)
    paths = {}
    for endpoint in sm["spec"]["endpoints"]:
        port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
        owner = next(c["name"] for c in all_containers(pod) if port["targetPort"] in [p["name"] for p in c.get("ports", [])])
        paths[owner] = endpoint["path"]
        assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])
    assert paths == {"authz": "/metrics", "envoy": "/stats/prometheus"}
    # The rules are in the build, and both carry the label kube-prometheus-stack selects by.
    rule = by_kind(objs, "PrometheusRule")
    for obj in (sm, rule):
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The alerts' job is the Service's name (the Operator's default job label).
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    assert set(re.findall(r'job="([^"]+)"', exprs)) == {service["metadata"]["name"]}
    assert set(re.findall(r'endpoint="([^"]+)"', exprs)) <= {e["port"] for e in sm["spec"]["endpoints"]}


def test_network_policies_admit_only_what_must_reach_the_pods(built):
    overlay, objs = built
    pod_labels = by_kind(objs, "Deployment", "mcp-demo")["spec"]["template"]["metadata"]["labels"]
    policy = by_kind(objs, "NetworkPolicy", "mcp-demo")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels) and policy["policyTypes"] == ["Ingress"]
    open_to_all, monitoring = policy["ingress"]
    assert "from" not in open_to_all and [p["port"] for p in open_to_all["ports"]] == ["http"]
    assert monitoring["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    allowed = {p["port"] for p in monitoring["ports"]}
    pod = pod_of(objs)
    names = {p["name"]: p["containerPort"] for c in all_containers(pod) for p in c.get("ports", [])}
    assert allowed == ({"metrics", 15020} if overlay == "istio" else {"metrics", "envoy-metrics"})
    assert all(p in names for p in allowed if isinstance(p, str))
    # authz's gRPC port is on loopback: no rule can open it, none names it.
    _, authz_policy = policy_of(objs)
    grpc_host, grpc_port = host_port(authz_policy["server"]["grpc_address"])
    assert grpc_host == "127.0.0.1" and grpc_port not in names.values()
    if overlay == "dev":
        redis = by_kind(objs, "NetworkPolicy", "redis")["spec"]
        [rule] = redis["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": pod_labels}}]


def _seconds(duration: str) -> int:
    return int(re.fullmatch(r"(\d+)s", duration).group(1))


# --- istio ---------------------------------------------------------------------------------------

def test_istio_resources_carry_the_fields_we_rely_on():
    objs = build(OVERLAYS["istio"])
    deployment = by_kind(objs, "Deployment", "mcp-demo")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pod = deployment["spec"]["template"]["spec"]
    # istio-proxy is the Envoy
    assert [c["name"] for c in all_containers(pod)] == ["authz", "app"]
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
    assert to["operation"]["notPaths"] == [METADATA_PATH, METADATA_PATH + "/*",
                                           "/.well-known/oauth-authorization-server", "/oauth/*"]  # sign-in

    ef = by_kind(objs, "EnvoyFilter")["spec"]
    assert selects(ef["workloadSelector"]["labels"], labels)
    [patch] = ef["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER" and patch["patch"]["operation"] == "INSERT_BEFORE"
    assert patch["match"]["context"] == "SIDECAR_INBOUND"
    assert patch["match"]["listener"]["portNumber"] == app_port  # inbound: the container port
    typed = patch["patch"]["value"]["typed_config"]["extension_config"]["typed_config"]  # inside the matcher
    assert typed["grpc_service"]["envoy_grpc"]["cluster_name"] == f"outbound|{grpc_port}||{grpc['service']}"
    assert typed["failure_mode_allow"] is False and typed["allow_mode_override"] is True

    # The metadata goes to authz's HTTP port, everything else on port 80 to the app.
    vs = by_kind(objs, "VirtualService", "mcp-demo")["spec"]
    assert vs["hosts"] == [service["metadata"]["name"]] and vs["gateways"] == ["mesh"]
    routes = {r["name"]: r for r in vs["http"]}
    assert [r["name"] for r in vs["http"]] == ["resource-metadata", "app"]  # first match wins
    assert routes["resource-metadata"]["match"] == [
        {"port": service_ports["http"], "uri": {"exact": METADATA_PATH}},
        {"port": service_ports["http"], "uri": {"prefix": METADATA_PATH + "/"}},
        {"port": service_ports["http"], "uri": {"exact": "/.well-known/oauth-authorization-server"}},
        {"port": service_ports["http"], "uri": {"prefix": "/oauth/"}}]
    assert routes["app"]["match"] == [{"port": service_ports["http"]}]
    for route, target_port in (("resource-metadata", "metrics"), ("app", "http")):
        [dest] = routes[route]["route"]
        assert dest["destination"] == {"host": service["metadata"]["name"],
                                       "port": {"number": service_ports[target_port]}}


def test_istio_ext_proc_filter_is_the_reference_one_and_valid(tmp_path):
    """The EnvoyFilter's ext_proc is deploy/envoy/envoy.yaml's, matcher included (no stream for a
    request Check left no work for, none for Envoy's 431), only pointed at the ServiceEntry's
    cluster; swapped into the reference config, Envoy accepts it."""
    objs = build(OVERLAYS["istio"])
    typed = copy.deepcopy(by_kind(objs, "EnvoyFilter")["spec"]["configPatches"][0]["patch"]["value"]["typed_config"])
    reference = yaml.safe_load((ROOT / "deploy/envoy/envoy.yaml").read_text())
    hcm = reference["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    cluster = typed["extension_config"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    expected = copy.deepcopy(ext_proc["typed_config"])
    expected["extension_config"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster
    assert typed == expected
    assert [m["predicate"]["single_predicate"]["input"]["name"] for m in typed["xds_matcher"]["matcher_list"]["matchers"]] \
        == ["handoff", "response-status"]

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
    rules = load_docs(K8S / "components/monitoring/prometheusrule.yaml")[0]
    assert rules["kind"] == "PrometheusRule"
    exprs += [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\b(authz_[a-z0-9_]+)", e)}
    assert used
    missing = sorted(m for m in used if m not in names)
    assert not missing, f"dashboard/alerts use undefined metrics: {missing}"


def test_dashboard_is_scoped_by_namespace_and_pod_and_has_the_panels_an_operator_needs():
    dashboard = json.loads((ROOT / "deploy/grafana/authz-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= set(variables)
    assert variables["pod"]["includeAll"] and "$namespace" in variables["pod"]["definition"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for expr in exprs:
        # Every series a panel reads is one namespace's, and the chosen pods'.
        series = re.sub(r"by \([^)]*\)", "", expr)  # label names are not series
        for selector in re.findall(r"\b(?:authz|envoy)_[a-z0-9_]+(\{[^}]*\})?", series):
            assert 'namespace="$namespace"' in selector and 'pod=~"$pod"' in selector, expr
    used = {m for e in exprs for m in re.findall(r"\b((?:authz|envoy)_[a-z0-9_]+)\{", e)}
    for metric in ("authz_audit_refused_total", "authz_process_streams_total", "authz_limits_store_failures_total",
                   "authz_inflight_requests", "authz_config_reload_failing", "envoy_http_ext_authz_error",
                   "envoy_cluster_upstream_rq_timeout", "envoy_http_ext_proc_streams_failed"):
        assert metric in used, f"no panel shows {metric}"
    # Panels do not overlap.
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]]
    assert len(cells) == len(set(cells))
