"""The README's Kubernetes quick start, held against what it tells people to run: every value it
says to supply is every value the manifests read, the Secrets it creates are every Secret (and
key) the production pod mounts, `authz keygen` prints exactly the kubectl line the README shows,
and every file, target and overlay it names exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from authz.dev.stack import ROOT

from .kustomize import build
from .test_manifests import K8S, OVERLAYS, all_containers, container, mount, pod_of, policy_of

README = (ROOT / "README.md").read_text()


def quick_start() -> str:
    return README.split("### Quick start", 1)[1].split("### How the pod behaves", 1)[0]


def commands() -> list[str]:
    """The shell block's commands, continuation lines joined, comments dropped."""
    block = quick_start().split("```sh\n", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", "", block)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_values_to_supply_are_the_settings_the_manifests_read():
    named = set(re.findall(r"`(AUTHZ_[A-Z]+)`", quick_start().split("```sh", 1)[0]))
    settings = {line.split("=", 1)[0] for line in (K8S / "base/settings.env").read_text().splitlines()
                if line and not line.startswith("#")}
    assert named == settings == {"AUTHZ_IMAGE", "AUTHZ_ISSUER", "AUTHZ_RESOURCE"}


def test_the_secrets_it_creates_are_the_secrets_the_pod_reads():
    created: dict[str, set[str]] = {}
    for command in commands():
        argv = shlex.split(command.replace('"$(openssl rand -hex 32)"', "x"))
        if argv[:4] == ["kubectl", "create", "secret", "generic"]:
            keys = {a.split("=", 2)[1] for a in argv if a.startswith(("--from-file=", "--from-literal="))}
            created[argv[4]] = keys
    objs = build(OVERLAYS["production"])
    pod = pod_of(objs)
    _, policy = policy_of(objs)
    authz = container(pod, "authz")
    read: dict[str, set[str]] = {}
    for v in pod["volumes"]:
        if "secret" in v:
            # The files the policy reads from where this volume is mounted.
            where = mount(authz, v["name"])
            files = policy["identity"]["assertion"]["key_files"] + [policy["audit"]["signing_key_file"]]
            read[v["secret"]["secretName"]] = {Path(f).name for f in files if str(Path(f).parent) == where}
    for c in all_containers(pod):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                read.setdefault(ref["name"], set()).add(ref["key"])
    assert created == read


def test_keygen_prints_the_line_the_readme_shows(tmp_path):
    [keygen_command] = [c for c in commands() if c.startswith("authz keygen")]
    [shown] = [c for c in commands() if c.startswith("kubectl create secret generic authz-signing-keys")]
    result = subprocess.run([sys.executable, "-m", "authz", *shlex.split(keygen_command)[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == shlex.split(shown)


def test_what_it_names_exists():
    makefile = (ROOT / "Makefile").read_text()
    for command in commands():
        argv = shlex.split(command.split("&&")[0]) if command.startswith("make") else shlex.split(
            command.replace('"$(openssl rand -hex 32)"', "x"))
        if argv[0] == "make":
            for target in (a for a in argv[1:] if "=" not in a):
                assert re.search(rf"^{target}:", makefile, re.M), f"make {target}: no such target"
        if "-k" in argv:
            assert (ROOT / argv[argv.index("-k") + 1] / "kustomization.yaml").exists(), command
    assert (K8S / "base/settings.env").exists()
    assert any(c.startswith("kubectl rollout status") and "deployment/mcp-demo" in c for c in commands())
