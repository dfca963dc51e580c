"""Config reload on a running sidecar behind Envoy: a good change takes effect without a
restart; a bad file is refused with the path of the bad key and the old config keeps serving."""

import re
import time

import httpx
import pytest
import yaml

from authz.dev.stack import REFERENCE_CONFIG, Stack

pytestmark = pytest.mark.e2e


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_reload_good_then_bad_config(tmp_path):
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    cfg["reload"] = {"poll_seconds": 0.2}
    cfg["log"] = {"format": "json"}
    path = tmp_path / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with Stack(authz_config=path) as stack, httpx.Client(base_url=stack.url, timeout=10) as http:
        from authz.dev.issuer import mint_token

        token = mint_token(sub="oscar", roles=["accounting"], issuer=stack.issuer_url, dev_dir=stack.workdir / "dev")
        auth = {"authorization": f"Bearer {token}"}

        def chat(model):
            return http.post("/v1/chat/completions", headers=auth,
                             json={"model": model, "messages": [{"role": "user", "content": "hi"}]})

        assert chat("gpt-medical").status_code == 403

        # A good change: accountants may now use the medical model. No restart.
        cfg["policy"]["rules"].insert(0, {"id": "accounting-medical", "match": {"llm": {"models": ["gpt-medical"]}},
                                          "require": {"roles_any": ["accounting"]}})
        path.write_text(yaml.safe_dump(cfg))
        assert wait_for(lambda: chat("gpt-medical").status_code == 200), stack.logs()

        # A bad file: refused, the path of the bad key is logged, the last good config serves on.
        bad = yaml.safe_load(path.read_text())
        bad["policy"]["rules"][0]["requires"] = bad["policy"]["rules"][0].pop("require")
        path.write_text(yaml.safe_dump(bad))
        assert wait_for(lambda: "policy.rules[0].requires: unknown key" in stack.procs["authz"].output())
        assert chat("gpt-medical").status_code == 200
        ready = httpx.get(f"{stack.authz_http}/readyz").json()
        assert ready["ready"] is True
        assert "policy.rules[0].requires: unknown key" in ready["components"]["config"]["last_reload_error"]
        text = httpx.get(f"{stack.authz_http}/metrics").text
        assert metric(text, "authz_config_reloads_total", '{result="failure"}') >= 1
        assert metric(text, "authz_config_reloads_total", '{result="success"}') >= 2
        # And the same file is refused by check-config with the same message.
        from authz.cli import main

        assert main(["check-config", str(path)]) == 1


def test_metrics_move_with_traffic(stack):
    before = httpx.get(f"{stack.stack.authz_http}/metrics").text
    token = stack.token("oscar", roles=["accounting"])
    for _ in range(3):
        stack.http.post("/v1/chat/completions", headers=stack.auth(token),
                        json={"model": "gpt-medical", "messages": []})
    after = httpx.get(f"{stack.stack.authz_http}/metrics").text
    label = '{decision="deny",reason="policy.role_required"}'
    assert metric(after, "authz_decisions_total", label) - metric(before, "authz_decisions_total", label) == 3
    assert metric(after, "authz_rpc_duration_seconds_count", '{rpc="check"}') > \
        metric(before, "authz_rpc_duration_seconds_count", '{rpc="check"}')
    assert 'authz_stage_duration_seconds_bucket{le="0.001",phase="on_request",stage="policy"}' in after
