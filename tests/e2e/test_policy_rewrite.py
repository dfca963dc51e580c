"""Model rewrite and dry-run through real Envoy (the body rewrite happens in Process)."""

import httpx
import pytest
import yaml

from authz.dev.issuer import mint_token
from authz.dev.stack import REFERENCE_CONFIG, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rewriting(tmp_path_factory):
    cfg = yaml.safe_load(REFERENCE_CONFIG.read_text())
    rules = cfg["policy"]["rules"]
    medical = next(r for r in rules if r["id"] == "medical-models")
    medical["otherwise"] = {"rewrite_model": "gpt-general"}
    rules.insert(0, {"id": "trial-block", "match": {"paths": ["/v1/*"], "llm": {"models": ["gpt-trial"]}},
                     "effect": "deny", "reason": "policy.trial_closed", "dry_run": True})
    rules.insert(1, {"id": "trial-models", "match": {"paths": ["/v1/*"], "llm": {"models": ["gpt-trial"]}}})
    path = tmp_path_factory.mktemp("rewrite") / "authz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with Stack(authz_config=path) as stack, httpx.Client(base_url=stack.url, timeout=10) as http:
        token = mint_token(sub="oscar", roles=["accounting"], issuer=stack.issuer_url, dev_dir=stack.workdir / "dev")
        yield stack, http, {"authorization": f"Bearer {token}"}


def test_a_model_the_role_may_not_use_is_rewritten_in_the_body(rewriting):
    _, http, auth = rewriting
    r = http.post("/v1/chat/completions", headers=auth,
                  json={"model": "gpt-medical", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    received = r.json()["echo"]["body"]
    assert received["model"] == "gpt-general" and received["messages"][0]["content"] == "hi"
    assert r.headers["x-upstream"] == "general"


def test_dry_run_allows_and_counts_what_it_would_deny(rewriting):
    stack, http, auth = rewriting
    before = httpx.get(f"{stack.authz_http}/metrics").text
    r = http.post("/v1/chat/completions", headers=auth, json={"model": "gpt-trial", "messages": []})
    assert r.status_code == 200
    after = httpx.get(f"{stack.authz_http}/metrics").text
    line = 'authz_policy_dry_run_denials_total{reason="policy.trial_closed"}'
    assert line not in before and f"{line} 1.0" in after
