"""Issue 17 through real Envoy: logs from real sessions (rotations, restarts, a reload and a key
rotation right before a stop) verify with exit 0; every kind of tampering on copies of them is
caught with the right exit code and file:line (or the missing file); with durability
``answered`` kill -9 under load loses no record of a request the sidecar answered."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from authz.audit.canonical import canonical
from authz.audit.log import checkpoint_message
from authz.dev.stack import REFERENCE_CONFIG, Stack

pytestmark = pytest.mark.e2e


def audit_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "authz", "audit", *args], capture_output=True, text=True,
                          timeout=120)


def write_config(path: Path, *, key_file: Path, **audit) -> dict:
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    cfg["log"] = {"format": "json", "level": "info"}
    cfg["server"]["instance_id"] = "e2e"
    cfg["reload"] = {"poll_seconds": 0.1}
    cfg["audit"].update({"checkpoint_every_records": 10, "checkpoint_every_seconds": 0.5, "rotate_bytes": 4096,
                         "signing_key_file": str(key_file), **audit})
    cfg["limits"] = {"rate_limits": [{"id": "per-user", "rate": "6000/min", "burst": 1000,
                                      "match": {"paths": ["/v1/*"]}}]}
    path.write_text(yaml.safe_dump(cfg))
    return cfg


def keygen(out: Path) -> tuple[Path, Path]:
    assert audit_cli("keygen", "--out", str(out)).returncode == 0
    return out / "audit-signing-key.pem", out / "audit-public-key.pem"


def traffic(stack: Stack, token: str) -> None:
    http = httpx.Client(base_url=stack.url, timeout=10)
    auth = {"authorization": f"Bearer {token}"}
    chat = {"model": "gpt-general", "messages": [{"role": "user", "content": "my card is 4111111111111111"}]}
    statuses = [http.post("/v1/chat/completions", headers=auth, json=chat).status_code,
                http.post("/v1/chat/completions", headers=auth, json={**chat, "model": "gpt-medical"}).status_code,
                http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).status_code]
    assert statuses == [200, 403, 401]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def verify(audit_dir: Path, *keys: Path, head: Path | str | None = None) -> subprocess.CompletedProcess:
    args = ["verify", str(audit_dir)]
    for k in keys:
        args += ["--public-key", str(k)]
    if head is not None:
        args += ["--head", str(head)]
    return audit_cli(*args)


@pytest.fixture(scope="module")
def clean_log(tmp_path_factory):
    """A log as real operation leaves it: sessions with rotations, a restart, a reload and a key
    rotation each followed by a stop within a second. Returns (dir, public keys, head file)."""
    from authz.dev.issuer import mint_token

    tmp = tmp_path_factory.mktemp("audit-integrity")
    key_file, old_pub = keygen(tmp / "keys-old")
    path = tmp / "authz.yaml"
    cfg = write_config(path, key_file=key_file)
    # One worker, one chain: these tests tamper with the files of one instance ("e2e");
    # tests/e2e/test_workers.py verifies several workers' chains together.
    stack = Stack(authz_config=path, workers=1).start()
    audit_dir = stack.workdir / "audit"
    try:
        token = mint_token(sub="oscar", roles=["accounting"], issuer=stack.issuer_url, dev_dir=stack.workdir / "dev")
        for _ in range(6):
            traffic(stack, token)
        stack.stop_authz()
        checks = {"session": verify(audit_dir, old_pub)}

        stack.start_authz()  # rotate-then-restart: continues from the true end of the chain
        for _ in range(3):
            traffic(stack, token)
        stack.stop_authz()
        checks["rotate-then-restart"] = verify(audit_dir, old_pub)

        stack.start_authz()  # reload-then-stop within 1 s
        traffic(stack, token)
        cfg["audit"]["block_ms"] = 51
        path.write_text(yaml.safe_dump(cfg))
        assert wait_for(lambda: "config reloaded" in stack.procs["authz"].output())
        stack.stop_authz()
        checks["reload-then-stop"] = verify(audit_dir, old_pub)

        stack.start_authz()  # key rotation (the README's procedure: replace the key file in place)
        traffic(stack, token)
        new_key = tmp / "keys-new"
        new_priv, new_pub = keygen(new_key)
        shutil.copy(new_priv, key_file)
        assert wait_for(lambda: "audit signing key rotated" in stack.procs["authz"].output())
        traffic(stack, token)
        head = httpx.get(f"{stack.authz_http}/audit/head").json()
        assert head["heads"] and head["heads"][0]["instance"] == "e2e"
        # While it runs, the chain reaches the head the sidecar serves (the open segment: exit 2).
        live = verify(audit_dir, old_pub, new_pub, head=f"{stack.authz_http}/audit/head")
        assert live.returncode == 2 and "TAMPERED" not in live.stdout, live.stdout + live.stderr
        proc = stack.procs["authz"]
        stack.stop_authz()
        checks["key-rotation"] = verify(audit_dir, old_pub, new_pub)
        # The decision log holds every head published, the final one last.
        decision_log = tmp / "authz-decision.log"
        decision_log.write_text(proc.output())
        checks["key-rotation-with-head"] = verify(audit_dir, old_pub, new_pub, head=decision_log)
        raw = b"".join(f.read_bytes() for f in audit_dir.rglob("audit-*.jsonl"))
        assert token.encode() not in raw and b"4111111111111111" not in raw
        kept = tmp / "clean"
        shutil.copytree(audit_dir, kept)
        yield kept, (old_pub, new_pub), decision_log, checks
    finally:
        stack.stop()


@pytest.mark.parametrize("stage", ["session", "rotate-then-restart", "reload-then-stop", "key-rotation",
                                   "key-rotation-with-head"])
def test_clean_logs_verify(clean_log, stage):
    result = clean_log[3][stage]
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_clean_log_spans_files_and_segments(clean_log):
    audit_dir = clean_log[0]
    files = sorted((audit_dir / "e2e").glob("audit-*.jsonl"))
    records = [json.loads(line) for f in files for line in f.read_bytes().splitlines()]
    assert len([f for f in files if f.stat().st_size]) >= 3
    assert [r["type"] for r in records].count("segment") == 4
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert {r["instance"] for r in records} == {"e2e"}
    # Every answer has its decision record; outcome records join them by request id for the
    # exchanges Process saw (the allowed chat, scanned and metered). A request Check refused
    # (401/403) opens no Process stream: its decision record, holding the status it was answered
    # with, is its whole story.
    decisions = {r["request_id"]: r for r in records if r["type"] == "decision"}
    outcomes = [r for r in records if r["type"] == "outcome"]
    assert outcomes and all(o["request_id"] in decisions for o in outcomes)
    assert {decisions[o["request_id"]]["status"] for o in outcomes} == {200}
    assert {d["status"] for d in decisions.values()} >= {200, 401, 403}
    refused = {rid for rid, d in decisions.items() if d["decision"] == "deny"}
    assert refused and not refused & {o["request_id"] for o in outcomes}


# --- the tamper matrix --------------------------------------------------------------------------------

def _lines(f: Path) -> list[bytes]:
    return f.read_bytes().splitlines(keepends=True)


def _nonempty(d: Path) -> list[Path]:
    return [f for f in sorted((d / "e2e").glob("audit-*.jsonl")) if f.stat().st_size]


def _decision_index(f: Path) -> int:
    return next(i for i, line in enumerate(_lines(f)) if b'"type":"decision"' in line and b'"decision":"allow"' in line)


def _set_line(f: Path, i: int, new: bytes) -> str:
    ls = _lines(f)
    ls[i] = new + b"\n"
    f.write_bytes(b"".join(ls))
    return f"{f}:{i + 1}"


def edit(d: Path) -> str:
    f = _nonempty(d)[1]
    i = _decision_index(f)
    rec = json.loads(_lines(f)[i])
    h = rec.pop("hash")
    rec["decision"] = "deny"
    return _set_line(f, i, canonical(rec)[:-1] + b',"hash":"' + h.encode() + b'"}')


def delete(d: Path) -> str:
    f = _nonempty(d)[1]
    ls = _lines(f)
    del ls[3]
    f.write_bytes(b"".join(ls))
    return f"{f}:4"


def insert(d: Path) -> str:
    f = _nonempty(d)[1]
    ls = _lines(f)
    ls.insert(3, ls[5])
    f.write_bytes(b"".join(ls))
    return f"{f}:4"


def swap(d: Path) -> str:
    f = _nonempty(d)[1]
    ls = _lines(f)
    ls[3], ls[4] = ls[4], ls[3]
    f.write_bytes(b"".join(ls))
    return f"{f}:4"


def duplicate(d: Path) -> str:
    f = _nonempty(d)[-1]
    ls = _lines(f)
    ls.append(ls[-2])
    f.write_bytes(b"".join(ls))
    return f"{f}:{len(ls)}"


def signature(d: Path) -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    f = _nonempty(d)[0]
    i = next(i for i, line in enumerate(_lines(f)) if b'"type":"checkpoint"' in line)
    rec = json.loads(_lines(f)[i])
    rec.pop("hash")
    rec["sig"] = base64.b64encode(ed25519.Ed25519PrivateKey.generate().sign(checkpoint_message(rec))).decode()
    body = canonical(rec)
    return _set_line(f, i, body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}')


def duplicate_key(d: Path) -> str:
    f = _nonempty(d)[1]
    i = _decision_index(f)
    line = _lines(f)[i].rstrip(b"\n")
    return _set_line(f, i, line.replace(b'"decision":"allow"', b'"decision":"allow","decision":"deny"', 1))


def nan(d: Path) -> str:
    f = _nonempty(d)[1]
    i = next(i for i, line in enumerate(_lines(f)) if b":null" in line)
    return _set_line(f, i, _lines(f)[i].rstrip(b"\n").replace(b":null", b":NaN", 1))


def escape(d: Path) -> str:
    f = _nonempty(d)[1]
    i = _decision_index(f)
    return _set_line(f, i, _lines(f)[i].rstrip(b"\n").replace(b'"decision":"allow"', b'"decision":"\\u0061llow"'))


def delete_first_file(d: Path) -> str:
    files = _nonempty(d)
    files[0].unlink()
    assert files[0].name == "audit-000000000001.jsonl"
    return f"{files[1]}:1: the head of the chain of instance e2e is missing: it starts at seq"


def delete_first_100_records(d: Path) -> str:
    f = _nonempty(d)[0]
    ls = _lines(f)
    assert len(ls) > 2  # a segment rotates at 4 KiB and idle checkpoints fill it too: up to 100 records, never the last
    f.write_bytes(b"".join(ls[min(100, len(ls) - 1):]))
    return f"{f}:1"


def delete_last_closed_file(d: Path) -> str:
    f = _nonempty(d)[-1]
    f.unlink()
    return f"(the file {f.name} and any after it)"


def move_last_file(d: Path) -> str:
    f = _nonempty(d)[-1]
    (d / "other").mkdir()
    shutil.move(f, d / "other" / f.name)
    return str(d / "other" / f.name)


def foreign_directory(d: Path) -> str:
    (d / "e2e").rename(d / "someone-else")
    return str(d / "someone-else")


def forged_without_key(d: Path) -> str:
    """Rewrite every record (a decision changed), re-hash the chain, drop what needs the key."""
    prev, n = "0" * 64, 0
    for f in _nonempty(d):
        out = []
        for line in _lines(f):
            rec = json.loads(line)
            if rec["type"] == "checkpoint":
                continue
            rec.pop("hash")
            n += 1
            rec["seq"], rec["prev"] = n, prev
            if rec["type"] == "segment":
                rec["first_seq"], rec["previous_hash"] = n, prev
            if rec.get("decision") == "deny":
                rec["decision"] = "allow"
            body = canonical(rec)
            prev = hashlib.sha256(body).hexdigest()
            out.append(body[:-1] + b',"hash":"' + prev.encode() + b'"}\n')
        f.write_bytes(b"".join(out))
    return "opening record is not signed"


TAMPERING = {
    "edit": (edit, "does not match its hash"),
    "delete": (delete, "does not follow the previous record"),
    "insert": (insert, "does not follow the previous record"),
    "swap": (swap, "does not follow the previous record"),
    "duplicate": (duplicate, "out of order"),
    "signature": (signature, "checkpoint signature is not valid"),
    "duplicate_key": (duplicate_key, "duplicate key 'decision'"),
    "nan": (nan, "NaN is not JSON"),
    "escape": (escape, "not the canonical encoding"),
    "delete_first_file": (delete_first_file, "head of the chain of instance e2e is missing"),
    "delete_first_100_records": (delete_first_100_records, "is missing"),
    "delete_last_closed_file": (delete_last_closed_file, "published head"),
    "move_last_file": (move_last_file, "holds records of instance e2e in the directory of instance other"),
    "foreign_directory": (foreign_directory, "in the directory of instance someone-else"),
    "forged_without_key": (forged_without_key, "signature is not valid"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_caught(clean_log, tmp_path, case):
    clean, keys, head, _ = clean_log
    work = tmp_path / "copy"
    shutil.copytree(clean, work)
    tamper, message = TAMPERING[case]
    where = tamper(work)
    result = verify(work, *keys, head=head)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "TAMPERED" in out and message in out, out
    assert where in out, (where, out)
    # explain and export read the damaged copy without crashing.
    assert audit_cli("export", str(work)).returncode == 0
    assert audit_cli("explain", "no-such-id", str(work)).returncode == 1


def test_deleting_the_newest_file_is_caught_without_head(clean_log, tmp_path):
    """Without --head, the instance directory's head file names the newest signed record: the
    newest file deleted (closed by its segment's final checkpoint) is exit 1, and so is the head
    file deleted with it (rolled back to a checkpoint that remains: tests/unit/audit/test_chain_ends.py)."""
    clean, keys, _, _ = clean_log
    work = tmp_path / "copy"
    shutil.copytree(clean, work)
    newest = _nonempty(work)[-1]
    newest.unlink()
    result = verify(work, *keys)
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "the newest records are missing: the head file" in out, out
    assert f"(the file {newest.name} and any after it)" in out, out
    (work / "e2e" / "head.json").unlink()
    result = verify(work, *keys)
    assert result.returncode == 1 and "head.json is missing" in result.stdout, result.stdout


def test_a_foreign_key_is_refused(clean_log, tmp_path):
    clean, _, _, _ = clean_log
    _, other = keygen(tmp_path / "other-keys")
    result = verify(clean, other)
    assert result.returncode == 1 and "not among the keys given" in result.stdout
    assert "unsigned" in result.stdout


def test_retention_trim_then_verify(clean_log, tmp_path):
    clean, keys, head, _ = clean_log
    work = tmp_path / "copy"
    shutil.copytree(clean, work)
    signing = Path(str(keys[1]).replace("audit-public-key", "audit-signing-key"))
    trimmed = audit_cli("trim", str(work / "e2e"), "--before", "2999-01-01", "--signing-key", str(signing))
    assert trimmed.returncode == 0 and "the chain now starts at seq" in trimmed.stdout, trimmed.stderr
    result = verify(work, *keys, head=head)
    assert result.returncode == 0 and "removed by the retention trim" in result.stdout, result.stdout


# --- durability: kill -9 under load --------------------------------------------------------------------

def _load(url: str, token: str, stop: threading.Event, answered: list[str], lock: threading.Lock,
          counter: list[int], worker: int) -> None:
    """Denied tool calls as fast as one client can: each answer the sidecar gave (it carries
    x-authz-reason; Envoy's own 503 for a dead sidecar does not) adds its x-request-id."""
    headers = {"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"}
    with httpx.Client(base_url=url, timeout=5) as http:
        n = 0
        while not stop.is_set():
            name = f"probe-{worker}-{n}"
            n += 1
            try:
                r = http.post("/mcp", headers=headers,
                              json={"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": name}})
            except httpx.HTTPError:
                continue
            with lock:
                counter[0] += 1
                if "x-authz-reason" in r.headers:  # the sidecar answered it (Envoy's own 503 has none)
                    answered.append(r.headers.get("x-request-id", ""))  # 403: no rule for the probe tool


@pytest.mark.parametrize("trial", [1, 2, 3])
def test_kill_9_under_load_loses_no_answered_record(tmp_path, trial):
    from authz.dev.issuer import mint_token

    key_file, pub = keygen(tmp_path / "keys")
    path = tmp_path / "authz.yaml"
    write_config(path, key_file=key_file, durability="answered", checkpoint_every_records=1000,
                 checkpoint_every_seconds=5, rotate_bytes=64 * 1024 * 1024)
    stack = Stack(authz_config=path, workers=1).start()  # kill -9 of the one process writing the chain
    try:
        token = mint_token(sub="oscar", roles=["accounting"], issuer=stack.issuer_url, dev_dir=stack.workdir / "dev")
        stop, lock, answered, counter = threading.Event(), threading.Lock(), [], [0]
        workers = [threading.Thread(target=_load, args=(stack.url, token, stop, answered, lock, counter, w))
                   for w in range(8)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        with lock:
            before = counter[0]
        time.sleep(2.0)
        with lock:
            rate = (counter[0] - before) / 2.0
        stack.procs["authz"].signal(signal.SIGKILL)
        stack.procs["authz"].proc.wait(10)
        time.sleep(0.3)  # requests in flight now get Envoy's 503
        stop.set()
        for w in workers:
            w.join(10)
        assert rate >= 150, f"only {rate:.0f} req/s through Envoy"
        records = [json.loads(line) for f in (stack.workdir / "audit" / "e2e").glob("audit-*.jsonl")
                   for line in f.read_bytes().splitlines() if line.endswith(b"}")]
        recorded = {r.get("request_id") for r in records if r.get("type") == "decision"}
        assert all(answered), "an answer of the sidecar without x-request-id"
        missing = [request_id for request_id in answered if request_id not in recorded]
        assert len(answered) > 300 and not missing, (len(answered), missing[:10])
        result = verify(stack.workdir / "audit", pub)
        assert result.returncode == 2 and "TAMPERED" not in result.stdout, result.stdout  # unsealed tail only
    finally:
        stack.stop()
