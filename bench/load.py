"""Drive load with wrk (a Python client cannot push 30k req/s on two cores) and parse its output."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclasses.dataclass
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    errors: int


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: wrk is missing; installing it with apt-get (Debian package `wrk`)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("bench: wrk not found. Install it (Debian/Ubuntu: `apt-get install wrk`, macOS: "
                     "`brew install wrk`) and run `make bench` again.")


def lua_script(method: str, headers: dict[str, str], body: bytes) -> str:
    lines = [f'wrk.method = "{method}"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    if body:
        lines.append(f"wrk.body = {json.dumps(body.decode())}")
    return "\n".join(lines) + "\n"


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", value)
    if not m:
        raise ValueError(f"cannot read a latency from {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str) -> LoadResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return LoadResult(rps, p50, p99, total, int(non_2xx.group(1)) if non_2xx else 0,
                      sum(int(x) for x in errors.groups()) if errors else 0)


def run_wrk(url: str, *, seconds: float, connections: int, method: str = "GET",
            headers: dict[str, str] | None = None, body: bytes = b"") -> LoadResult:
    wrk = ensure_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua_script(method, headers or {}, body))
        script = f.name
    try:
        out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                              "-s", script, url], capture_output=True, text=True, check=True,
                             timeout=seconds + 60).stdout
    finally:
        Path(script).unlink(missing_ok=True)
    return parse(out)
