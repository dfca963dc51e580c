import json
from pathlib import Path

from authz.cli import main

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = str(ROOT / "deploy/authz/authz.yaml")


def test_check_config_accepts_the_reference_config(capsys):
    assert main(["check-config", REFERENCE]) == 0
    assert "ok (sha256" in capsys.readouterr().out


def test_check_config_lists_every_problem_with_its_path(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("store:\n  timeout_ms: 0\npolicy:\n  rules:\n    - {id: a, match: {pathz: [x]}}\n")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "store.timeout_ms" in err and "policy.rules[0].match.pathz: unknown key" in err


def test_explain_allow_and_deny(capsys):
    call = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_calendar","arguments":{}}}'
    assert main(["explain", "-c", REFERENCE, "--path", "/mcp", "--sub", "oscar",
                 "--scopes", "tools:calendar", "--body", call]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == "allow" and out["policy"]["rule"] == "calendar"

    assert main(["explain", "-c", REFERENCE, "--path", "/v1/chat/completions", "--sub", "oscar",
                 "--roles", "accounting", "--body", '{"model":"gpt-medical","messages":[]}']) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["reason"] == "policy.role_required" and out["policy"]["rule"] == "medical-models"


def test_explain_routes_a_doctor_to_the_medical_upstream(capsys):
    assert main(["explain", "-c", REFERENCE, "--path", "/v1/chat/completions", "--sub", "dana",
                 "--roles", "doctor", "--body", '{"model":"gpt-medical","messages":[]}']) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["route"] == "medical" and out["upstream_headers"]["x-authz-route"] == "medical"


def test_serve_runs_on_the_configured_event_loop():
    import asyncio

    from authz.cli.main import run_loop

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_loop(loop_module(), "uvloop").startswith("uvloop")
    assert run_loop(loop_module(), "asyncio").startswith("asyncio")


def test_apikeys_uses_redis_url_from_the_environment(tmp_path, capsys, monkeypatch, redis_url):
    import uuid

    cfg = tmp_path / "authz.yaml"
    cfg.write_text(f"store: {{key_prefix: 'cli-env-{uuid.uuid4().hex[:8]}:'}}\n")
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["apikeys", "list", "-c", str(cfg)]) == 0
    assert "no API keys in Redis" in capsys.readouterr().out
    assert main(["apikeys", "add", "-c", str(cfg), "--name", "svc", "--subject", "svc-a"]) == 0
    out = capsys.readouterr()
    assert "not redis in this config" in out.err  # the sidecar would not look it up
    assert main(["apikeys", "list", "-c", str(cfg), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["subject"], r["state"]) for r in rows] == [("svc", "svc-a", "active")]
    assert out.out.strip() not in json.dumps(rows)
    assert main(["apikeys", "revoke", "-c", str(cfg), "--sha256", rows[0]["sha256"]]) == 0
    assert main(["apikeys", "bogus"]) == 2
