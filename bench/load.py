"""The load generator: wrk, driven with a Lua script for the request, and its report parsed.

A Python client cannot push the ~30k req/s Envoy alone answers on two cores; wrk (C, one
event loop per thread) can, with a fraction of a core.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

# wrk prints durations with the largest unit that keeps the number >= 1 (its stats.c/units.c).
_MS_PER_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
# And counts with metric suffixes (Req/Sec per thread, never Requests/sec, but be lenient).
_COUNT_SUFFIX = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed something we cannot read (the message quotes it)."""


@dataclasses.dataclass(frozen=True)
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    non_2xx: int      # wrk counts non-2xx *and* non-3xx here
    errors: int       # socket errors: connect + read + write + timeout


def ensure_wrk(*, install: bool = True) -> str:
    """The wrk binary; installed with apt-get when missing and we are root on Debian/Ubuntu."""
    found = shutil.which("wrk")
    if found:
        return found
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: wrk is not on PATH; running `apt-get install -y wrk`", flush=True)
        done = subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, text=True)
        found = shutil.which("wrk")
        if found:
            return found
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        print(f"bench: apt-get could not install wrk (exit {done.returncode}):\n{tail}", flush=True)
    raise WrkError("wrk (the HTTP load generator) is not installed. Install it and run `make bench` again: "
                   "Debian/Ubuntu `sudo apt-get install wrk` (after `apt-get update`), Fedora "
                   "`sudo dnf install wrk`, macOS `brew install wrk`, or build it from "
                   "https://github.com/wg/wrk")


def lua_string(data: bytes) -> str:
    """A Lua string literal holding exactly ``data``.

    wrk runs LuaJIT (Lua 5.1 syntax): no ``\\u{...}`` and no ``\\xNN`` escapes, so anything that
    is not printable ASCII goes in as a decimal escape, always three digits so that a digit
    following it cannot be read as part of it.
    """
    out = []
    for byte in data:
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def lua_script(method: str, headers: Mapping[str, str], body: bytes) -> str:
    """The wrk script sending one fixed request (wrk adds Content-Length for the body)."""
    lines = [f"wrk.method = {lua_string(method.encode())}"]
    lines += [f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode())}" for k, v in headers.items()]
    if body:
        lines.append(f"wrk.body = {lua_string(body)}")
    return "\n".join(lines) + "\n"


def duration_ms(text: str) -> float:
    """``'812.00us'``, ``'8.37ms'``, ``'1.02s'``, ``'2.00m'`` in milliseconds."""
    m = re.fullmatch(r"\s*([\d.]+)\s*(us|ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _MS_PER_UNIT[m.group(2)]


def count(text: str) -> float:
    """``'3537.21'``, ``'3.54k'``, ``'1.20M'`` as a number."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kMG]?)\s*", text)
    if not m:
        raise ValueError(f"not a wrk count: {text!r}")
    return float(m.group(1)) * _COUNT_SUFFIX[m.group(2)]


def parse(output: str) -> LoadResult:
    """Read wrk's report (run with ``--latency``). Raises WrkError quoting the output when a
    figure we need is missing, rather than reporting a number we did not see."""
    def find(pattern: str, what: str) -> re.Match[str]:
        m = re.search(pattern, output, re.M)
        if m is None:
            raise WrkError(f"wrk's report has no {what}; it said:\n{output.strip() or '(nothing)'}")
        return m

    rps = count(find(r"^Requests/sec:\s*(\S+)", "Requests/sec line").group(1))
    requests = int(find(r"^\s*(\d+) requests in ", "request count").group(1))
    percentiles = {}
    for p in ("50", "90", "99"):
        percentiles[p] = duration_ms(find(rf"^\s*{p}(?:\.0+)?%\s+(\S+)\s*$",
                                          f"{p}% latency (was it run with --latency?)").group(1))
    non_2xx = re.search(r"^\s*Non-2xx or 3xx responses:\s*(\d+)", output, re.M)
    sockets = re.search(r"Socket errors:\s*connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return LoadResult(
        requests_per_second=rps, p50_ms=percentiles["50"], p90_ms=percentiles["90"],
        p99_ms=percentiles["99"], requests=requests, non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(x) for x in sockets.groups()) if sockets else 0)


def wrk_argv(wrk: str, url: str, script: Path, *, seconds: float, connections: int, threads: int
             ) -> list[str]:
    # wrk takes whole seconds; its --timeout (default 2s) counts a slower answer as a socket
    # error, which the report shows.
    return [wrk, f"-t{threads}", f"-c{max(connections, threads)}", f"-d{max(1, round(seconds))}s",
            "--latency", "-s", str(script), url]


def run_wrk(url: str, *, seconds: float, connections: int, threads: int = 1, method: str = "GET",
            headers: Mapping[str, str] | None = None, body: bytes = b"") -> LoadResult:
    """Run wrk against ``url`` for ``seconds`` and return what it measured. If we are interrupted,
    subprocess.run kills wrk before the exception propagates."""
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="authz-bench-wrk-") as tmp:
        script = Path(tmp) / "request.lua"
        script.write_text(lua_script(method, headers or {}, body))
        argv = wrk_argv(wrk, url, script, seconds=seconds, connections=connections, threads=threads)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        except subprocess.TimeoutExpired as exc:
            raise WrkError(f"wrk did not finish within {seconds + 60:.0f}s: {shlex.join(argv)}") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {shlex.join(argv)}\n{done.stdout}{done.stderr}")
    return parse(done.stdout)
