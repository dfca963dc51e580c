"""The production image, without a container engine: the Dockerfile's contract read from the
file, and its Python environment rebuilt in a virtualenv exactly as the Dockerfile's RUN line
builds it (same files copied, same pip command, same lock), where the image's entrypoint and
default config are run for real.

- The default config is the production policy: it refuses to start, exit 2, naming what is
  missing (issuer, resource, redaction key, then the key files); no demo config, no dev keys.
- With them supplied and tracing configured, the server starts in that environment and exports
  a span per Check to an OTLP endpoint (the `otel` extra is in the image).
"""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from authz.dev.stack import ROOT

from .kustomize import build

DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"


def dockerfile() -> str:
    return DOCKERFILE.read_text()


def _json_list(instruction: str) -> list[str]:
    m = re.search(rf"^{instruction} (\[.*\])$", dockerfile(), re.M)
    assert m, f"no exec-form {instruction}"
    return yaml.safe_load(m.group(1))


def copies() -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context."""
    pairs = []
    for line in dockerfile().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, dest = line.split()[1:]
            pairs += [(s, dest) for s in sources]
    return pairs


def default_config_source() -> Path:
    """The context file the image's default --config is copied from."""
    config = _json_list("CMD")[_json_list("CMD").index("--config") + 1]
    [source] = [s for s, dest in copies() if dest == config]
    return ROOT / source


def image_env() -> dict[str, str]:
    """The ENV the final stage sets (PATH aside: the venv's bin is put first by the caller)."""
    final = dockerfile().rsplit("\nFROM ", 1)[1]
    m = re.search(r"^ENV ((?:.*\\\n)*.*)$", final, re.M)
    return dict(pair.split("=", 1) for pair in shlex.split(m.group(1).replace("\\\n", " ")))


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


# --- the Dockerfile, read --------------------------------------------------------------------

def test_dockerfile_contract():
    text = dockerfile()
    assert re.search(r"^USER 10001", text, re.M)
    assert _json_list("ENTRYPOINT") == ["authz"]
    cmd = _json_list("CMD")
    from authz.cli.main import build_parser

    build_parser().parse_args(cmd)
    assert "HEALTHCHECK" in text and "/healthz" in text
    # The default config is where the Deployment mounts the policy, and it is the production
    # policy, not the demo's (no debug headers, no dev fallbacks, no demo issuer).
    from .test_manifests import OVERLAYS, container, host_port, mount, pod_of, policy_of

    objs = build(OVERLAYS["base"])
    authz = container(pod_of(objs), "authz")
    assert authz["args"] == cmd
    config = cmd[cmd.index("--config") + 1]
    assert str(Path(config).parent) == mount(authz, "policy")
    assert default_config_source() == ROOT / "deploy/k8s/base/authz.yaml"
    baked = default_config_source().read_text()
    assert "debug_headers: true" not in baked and ":-dev" not in baked and "127.0.0.1:9400" not in baked
    assert not [s for s, _ in copies() if s.endswith((".pem", ".key")) or "deploy/authz" in s]
    # Every file the build copies from the context exists and is not excluded by .dockerignore.
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [s for s, _ in copies()]
    assert {"authz", "requirements.lock", "pyproject.toml"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source, patterns), f"{source} is copied but .dockerignore excludes it"
    assert _dockerignored("deploy/k8s/base/envoy.yaml", patterns)  # the matcher does match
    # The image exposes the ports the cluster policy listens on.
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
    _, policy = policy_of(objs)
    assert {host_port(policy["server"][k])[1] for k in ("grpc_address", "http_address")} <= exposed


def test_base_image_is_pinned_by_digest():
    [arg] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile(), re.M)
    assert re.fullmatch(r"python:3\.\d+-slim-\w+@sha256:[0-9a-f]{64}", arg), arg
    assert re.findall(r"^FROM (\S+)", dockerfile(), re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def build_steps() -> list[str]:
    """The shell commands of the build stage's RUN that installs into /opt/authz."""
    m = re.search(r"^RUN (/opt/authz/bin/pip install (?:.*\\\n)*.*)$", dockerfile(), re.M)
    return [step.strip() for step in m.group(1).replace("\\\n", " ").split("&&")]


def pip_install_line() -> list[str]:
    """The arguments of the build stage's first `pip install`."""
    return shlex.split(build_steps()[0])[2:]


def test_image_installs_from_the_lock_with_the_otel_extra():
    args = pip_install_line()
    assert args[:2] == ["-c", "requirements.lock"]
    extras = re.fullmatch(r"\.\[(.+)\]", args[2]).group(1).split(",")
    assert "otel" in extras and "demo" in extras and "dev" not in extras
    makefile = (ROOT / "Makefile").read_text()
    assert "-c requirements.lock -e '.[dev]'" in makefile
    # opentelemetry-proto's files win over xds-protos' old copy of them, in both.
    reinstall = "--force-reinstall --no-deps \"$(grep '^opentelemetry-proto==' requirements.lock)\""
    assert any(step.endswith(reinstall) for step in build_steps())
    assert reinstall.replace("$(", "$$(") in makefile


def test_the_lock_pins_every_dependency_installed_here():
    """requirements.lock was made from this dependency set: every distribution the dev venv holds
    (authz itself aside) is pinned there at the installed version."""
    from importlib import metadata

    pins = dict(line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#"))
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in metadata.distributions()}
    installed = {n: v for n, v in installed.items() if n not in ("authz", "pip", "setuptools", "wheel")}
    unpinned = sorted(n for n in installed if n not in pins)
    assert not unpinned, f"installed but not in requirements.lock (run `make lock`): {unpinned}"
    drifted = sorted(n for n, v in installed.items() if pins[n] != v)
    assert not drifted, f"installed versions differ from requirements.lock: {drifted}"


# --- the image's Python environment, rebuilt -------------------------------------------------

@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """A virtualenv built as the Dockerfile's build stage builds /opt/authz: the copied files
    only, then the same pip install line."""
    context = tmp_path_factory.mktemp("context")
    for source, _ in copies():
        if source in ("pyproject.toml", "README.md", "requirements.lock", "authz"):
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, context / source)
    venv = tmp_path_factory.mktemp("image") / "authz"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    for step in build_steps():
        assert step.startswith("/opt/authz/bin/"), step
        command = step.replace("/opt/authz/", f"{venv}/")
        result = subprocess.run(["bash", "-c", command], cwd=context, capture_output=True, text=True, timeout=900,
                                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        if result.returncode != 0:
            pytest.fail(f"the image's build step failed: {command}\n{result.stderr[-3000:]}")
    return venv


def _run_image(venv: Path, args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    full = {**image_env(), **env, "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
    return subprocess.Popen([str(venv / "bin" / _json_list("ENTRYPOINT")[0]), *args], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_default_config_refuses_to_start_without_issuer_and_keys(image_venv, tmp_path):
    cmd = _json_list("CMD")
    args = [*cmd[:cmd.index("--config") + 1], str(default_config_source())]
    proc = _run_image(image_venv, args, {}, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    assert "refusing to start" in err
    for name in ("AUTHZ_ISSUER", "AUTHZ_RESOURCE", "AUTHZ_REDACTION_KEY"):
        assert f"environment variable {name} is not set" in err
    assert "authz keygen" in err  # the hint says how to make the keys

    env = {"AUTHZ_ISSUER": "https://sso.invalid/realms/main", "AUTHZ_RESOURCE": "https://mcp.invalid/mcp",
           "AUTHZ_REDACTION_KEY": "k"}
    proc = _run_image(image_venv, args, env, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    assert "cannot read /etc/authz/keys/assertion-signing-key.pem" in err


class _Collector(http.server.BaseHTTPRequestHandler):
    posts: list[tuple[str, int]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Collector.posts.append((self.path, len(body)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tracing_starts_in_the_image_environment(image_venv, tmp_path):
    """The production policy with its keys (from the image's own `authz keygen`), its values and
    an OTLP endpoint: the server starts, answers a Check, and the span reaches the collector."""
    keys = tmp_path / "keys"
    result = subprocess.run([str(image_venv / "bin/authz"), "keygen", "--out", str(keys)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    grpc_port, http_port = _free_port(), _free_port()
    text = default_config_source().read_text()
    text = text.replace("/etc/authz/keys", str(keys)).replace("/var/lib/authz/audit", str(tmp_path / "audit"))
    text = text.replace("127.0.0.1:9001", f"127.0.0.1:{grpc_port}").replace("0.0.0.0:9002", f"127.0.0.1:{http_port}")
    text += (f"tracing:\n  otlp_endpoint: http://127.0.0.1:{collector.server_port}/v1/traces\n"
             "  service_name: authz-image-test\n")
    config = tmp_path / "authz.yaml"
    config.write_text(text)
    env = {"AUTHZ_ISSUER": "https://sso.invalid/realms/main", "AUTHZ_RESOURCE": "https://mcp.invalid/mcp",
           "AUTHZ_REDACTION_KEY": "k"}
    proc = _run_image(image_venv, ["serve", "--config", str(config)], env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                # Live, not ready: the issuer's keys cannot be fetched here (sso.invalid), and a
                # sidecar that can verify no issuer's tokens is not ready (identity readiness).
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)

        import grpc
        from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
        from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc

        request = auth_pb2.CheckRequest()
        http_req = request.attributes.request.http
        http_req.method, http_req.path, http_req.host = "POST", "/mcp", "mcp.invalid"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            answer = auth_grpc.AuthorizationStub(channel).Check(request, timeout=10)
        assert answer.denied_response.status.code == 401  # no token: the policy answered
        deadline = time.monotonic() + 20
        while not any(path == "/v1/traces" and size for path, size in _Collector.posts):
            assert time.monotonic() < deadline, f"no span reached the collector: {_Collector.posts}"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        collector.shutdown()
    assert os.path.isdir(tmp_path / "audit")
