"""Issue 7 through real Envoy: a mixed session leaves records that verify and explain; the
chain survives kill -9 with the unsealed tail reported precisely."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
import pytest
import yaml

from authz.audit.verify import audit_files, read_records
from authz.dev.stack import REFERENCE_CONFIG, Stack

pytestmark = pytest.mark.e2e


def audit_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "authz", "audit", *args], capture_output=True, text=True,
                          timeout=60)


def config(tmp_path, redis_url=None, **audit) -> str:
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    cfg["log"] = {"format": "json"}
    cfg["server"]["instance_id"] = "e2e"  # the default (host-pid) would start a new chain on restart
    cfg["audit"].update({"checkpoint_every_records": 10, "checkpoint_every_seconds": 0.5, **audit})
    cfg["limits"] = {"rate_limits": [{"id": "per-user", "rate": "100/min", "burst": 3, "match": {"paths": ["/v1/*"]}}]}
    path = tmp_path / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def save_public_key(stack: Stack, tmp_path) -> str:
    jwks = httpx.get(f"{stack.authz_http}/.well-known/jwks.json").json()
    path = tmp_path / "audit-key.json"
    path.write_text(json.dumps({"keys": [k for k in jwks["keys"] if k.get("crv") == "Ed25519"]}))
    return str(path)


def test_a_mixed_session_verifies_and_each_story_is_told(tmp_path):
    from authz.dev.issuer import mint_token

    stack = Stack(authz_config=config(tmp_path)).start()
    try:
        http = httpx.Client(base_url=stack.url, timeout=10)
        tok = mint_token(sub="oscar", roles=["accounting"], scopes=["tools:calendar"], client="chatgpt",
                         issuer=stack.issuer_url, dev_dir=stack.workdir / "dev")
        auth = {"authorization": f"Bearer {tok}"}
        chat = {"model": "gpt-general", "messages": [{"role": "user", "content": "my card is 4111111111111111"}]}
        # First, a tool name JSON can carry but Unicode cannot: once, it stopped the audit writer
        # (and with it every later request). Refused; the records after it prove the writer on.
        hostile = http.post("/mcp", headers={**auth, "content-type": "application/json"},
                            content=b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800x"}}')
        assert (hostile.status_code, hostile.headers["x-authz-reason"]) == (400, "mcp.invalid_json")
        allowed = http.post("/v1/chat/completions", headers=auth, json=chat)
        denied = http.post("/v1/chat/completions", headers=auth, json={**chat, "model": "gpt-medical"})
        anonymous = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        limited = [http.post("/v1/chat/completions", headers=auth, json=chat) for _ in range(5)][-1]
        assert (allowed.status_code, denied.status_code, anonymous.status_code, limited.status_code) == \
            (200, 403, 401, 429)
        key = save_public_key(stack, tmp_path)
        audit_dir = stack.workdir / "audit"
        stack.stop_authz()  # a clean stop writes the final checkpoint
        result = audit_cli("verify", str(audit_dir), "--public-key", key)
        assert result.returncode == 0, result.stdout + result.stderr
        records = [r for _, _, r, _ in read_records(audit_files([audit_dir])) if r]
        raw = b"".join(f.read_bytes() for f in audit_files([audit_dir]))
        assert tok.encode() not in raw and b"4111111111111111" not in raw

        decisions = [r for r in records if r.get("type") == "decision"]
        by_status = {r["status"]: r for r in decisions}
        assert {200, 400, 401, 403, 429} <= set(by_status)
        s200 = audit_cli("explain", by_status[200]["request_id"], str(audit_dir)).stdout
        assert "user oscar" in s200 and "ALLOWED by rule general-models" in s200 and "answered 200" in s200
        assert "It used" in s200
        s403 = audit_cli("explain", by_status[403]["request_id"], str(audit_dir)).stdout
        assert "DENIED with 403: policy.role_required (rule medical-models)" in s403
        s401 = audit_cli("explain", by_status[401]["request_id"], str(audit_dir)).stdout
        assert "anonymous caller" in s401 and "DENIED with 401: token.missing" in s401
        s429 = audit_cli("explain", by_status[429]["request_id"], str(audit_dir)).stdout
        assert "DENIED with 429: rate_limited" in s429 and "per-user" in s429
        csv_out = audit_cli("export", str(audit_dir)).stdout
        assert csv_out.splitlines()[0].startswith("seq,ts,instance,type,request_id")
    finally:
        stack.stop()


def test_kill_9_under_load_then_restart(tmp_path):
    from authz.dev.issuer import mint_token

    # A configured key (as in production): the chain stays verifiable across restarts.
    assert audit_cli("keygen", "--out", str(tmp_path / "keys")).returncode == 0
    # queued: what kill -9 loses is the unsealed tail, and verify names it exactly.
    cfg = config(tmp_path, checkpoint_every_records=25, checkpoint_every_seconds=30, durability="queued",
                 signing_key_file=str(tmp_path / "keys" / "audit-signing-key.pem"))
    key = str(tmp_path / "keys" / "audit-public-key.pem")
    # One worker: this follows one chain through a kill -9 of the process writing it (each
    # worker's chain behaves so when that worker is killed; tests/e2e/test_workers.py).
    stack = Stack(authz_config=cfg, workers=1).start()
    try:
        tok = mint_token(sub="oscar", roles=["accounting"], issuer=stack.issuer_url, dev_dir=stack.workdir / "dev")
        http = httpx.Client(base_url=stack.url, timeout=10)
        headers = {"authorization": f"Bearer {tok}", "accept": "application/json, text/event-stream"}
        for i in range(60):
            http.post("/mcp", headers=headers, json={"jsonrpc": "2.0", "id": i, "method": "tools/list"})
        stack.procs["authz"].signal(signal.SIGKILL)
        stack.procs["authz"].proc.wait(10)
        audit_dir = stack.workdir / "audit"
        result = audit_cli("verify", str(audit_dir), "--public-key", key)
        assert result.returncode == 2, result.stdout  # intact, but with an unsealed tail
        assert "signed through seq" in result.stdout and "after the last checkpoint" in result.stdout
        sealed = int(result.stdout.split("signed through seq ")[1].split()[0])
        assert sealed >= 25
        # Nothing before the last checkpoint is lost: every seq up to it is on disk, in order.
        seqs = [r["seq"] for _, _, r, _ in read_records(audit_files([audit_dir])) if r]
        assert seqs[:sealed] == list(range(1, sealed + 1))
        # ... and the unsealed tail is named exactly: every record on disk after the checkpoint.
        if seqs[-1] > sealed:
            tail = f"the newest {seqs[-1] - sealed} record(s) (seq {sealed + 1}..{seqs[-1]}) are not sealed yet"
            assert tail in result.stdout, result.stdout

        # Restart: the new segment links to what the crashed one left, and closes cleanly.
        stack.start_authz()
        http.post("/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        stack.stop_authz()
        files = audit_files([audit_dir])
        new_segment = [r for _, _, r, _ in read_records(files) if r and r["seq"] > max(seqs)]
        assert new_segment[0]["type"] == "segment" and new_segment[0]["continues"] is True
        last_before = next(r for _, _, r, _ in read_records(files) if r and r["seq"] == max(seqs))
        assert new_segment[0]["prev"] == last_before["hash"]
        after = audit_cli("verify", str(audit_dir), "--public-key", key)
        # The whole chain verifies; the crashed segment's unsealed records are still named.
        assert after.returncode == 2 and "TAMPERED" not in after.stdout, after.stdout
        assert f"signed through seq {new_segment[-1]['seq']}" in after.stdout
        assert "never sealed" in after.stdout or "after its last checkpoint" in after.stdout
    finally:
        stack.stop()


def test_records_reach_a_redis_stream_that_an_auditor_exports_and_verifies(tmp_path, redis_url):
    from authz.dev.issuer import mint_token

    stream = f"authz:audit:e2e:{tmp_path.name}"
    stack = Stack(authz_config=config(tmp_path, redis_stream={"url": redis_url, "stream": stream})).start()
    try:
        http = httpx.Client(base_url=stack.url, timeout=10)
        tok = mint_token(sub="oscar", roles=["accounting"], issuer=stack.issuer_url, dev_dir=stack.workdir / "dev")
        chat = {"model": "gpt-general", "messages": [{"role": "user", "content": "hello"}]}
        statuses = [http.post("/v1/chat/completions", headers={"authorization": f"Bearer {tok}"}, json=chat)
                    .status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        key = save_public_key(stack, tmp_path)
        stack.stop_authz()  # the final checkpoint goes to the file and then to the stream
        out = tmp_path / "from-stream"
        exported = audit_cli("export-stream", "--redis-url", redis_url, "--stream", stream, "--out", str(out))
        assert exported.returncode == 0, exported.stdout + exported.stderr
        result = audit_cli("verify", str(out), "--public-key", key)
        assert result.returncode == 0, result.stdout + result.stderr
        streamed = [r for _, _, r, _ in read_records(audit_files([out])) if r]
        allowed = [r for r in streamed if r.get("type") == "decision" and r.get("status") == 200]
        assert len(allowed) == 3 and all(r["principal"]["subject"] == "oscar" for r in allowed)
        # The stream holds exactly the lines the file holds: the file stays the source of truth.
        file_lines = b"".join(f.read_bytes() for f in audit_files([stack.workdir / "audit"])).splitlines()
        stream_lines = b"".join(f.read_bytes() for f in audit_files([out])).splitlines()
        assert sorted(stream_lines) == sorted(file_lines)
    finally:
        stack.stop()
