"""The policy table against the shipped reference policy, through the policy stage (unit)."""

from pathlib import Path

import pytest

from authz.config import load_config
from authz.errors import Deny
from authz.model import ANONYMOUS, Context, Principal, Request
from authz.policy.stage import PolicyStage

from .cases import CASES, Case

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def stage() -> PolicyStage:
    config, _ = load_config(ROOT / "deploy/authz/authz.yaml")
    return PolicyStage(config.policy)


def principal_for(case: Case) -> Principal:
    if case.who is None:
        return ANONYMOUS
    return Principal(subject=case.who.sub, issuer="test", client=case.who.client,
                     roles=frozenset(case.who.roles), scopes=frozenset(case.who.scopes))


def request_for(case: Case) -> Request:
    headers = {"content-type": "application/json", **dict(case.headers)}
    return Request(id="r", method=case.method, scheme="http", host="localhost:10000", path=case.path,
                   headers=headers, body=case.body_bytes())


def test_the_table_is_big_enough():
    assert len(CASES) >= 40
    assert sum(c.e2e for c in CASES) >= 12
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_policy_case(stage: PolicyStage, case: Case):
    ctx = Context(request=request_for(case), principal=principal_for(case))
    if case.status == 200:
        await stage.on_request(ctx)
        assert ctx.facts["policy"]["reason"] == case.reason
        assert ctx.facts["rule"] == (case.rule or "-")
        return
    with pytest.raises(Deny) as info:
        await stage.on_request(ctx)
    deny = info.value
    assert (deny.status, deny.reason) == (case.status, case.reason), deny.message
    if case.rule is not None:
        assert deny.details.get("rule") == case.rule
