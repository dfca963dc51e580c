"""Engine features beyond the table: dry-run, model rewrite, conditions, tools/list filtering."""

import datetime
import json

import pytest

from authz.config import parse_config
from authz.errors import ConfigError, Forbidden
from authz.model import ANONYMOUS, Context, Exchange, Principal, Request
from authz.policy.engine import Policy
from authz.policy.stage import PolicyStage
from authz.request import Action
from authz.routing import RoutingStage

OSCAR = Principal(subject="oscar", roles=frozenset({"accounting"}), scopes=frozenset({"a"}),
                  client="chatgpt", tenant="acme", email="oscar@acme.com",
                  claims={"realm_access": {"department": "finance"}, "level": 3, "admin": True})


def policy(yaml_text: str) -> Policy:
    return Policy(parse_config(yaml_text, env={}).policy)


def req(path="/x", method="GET", body=b"", headers=None, source="10.0.0.5") -> Request:
    return Request(id="r", method=method, scheme="http", host="api.acme.com:443", path=path,
                   headers=headers or {}, body=body, source_address=source)


HTTP = Action(protocol="http", kind="GET")


def decide(p: Policy, principal=OSCAR, request=None, action=HTTP, now=None):
    return p.evaluate(principal, request or req(), action, now=now)


def test_first_match_wins_in_file_order():
    p = policy("""policy:
  rules:
    - {id: deny-admin, match: {paths: ["/admin*"]}, effect: deny, reason: policy.admin_blocked}
    - {id: all, match: {paths: ["/*"]}}
""")
    d = decide(p, request=req("/admin/x"))
    assert (d.allowed, d.rule, d.reason) == (False, "deny-admin", "policy.admin_blocked")
    assert decide(p, request=req("/other")).rule == "all"


def test_default_deny_and_default_allow():
    assert decide(policy("")).reason == "policy.no_rule"
    d = decide(policy("policy: {default: allow}"))
    assert d.allowed and d.reason == "policy.default_allow"


def test_global_dry_run_allows_but_reports():
    d = decide(policy("policy: {dry_run: true}"))
    assert d.allowed and d.dry_run and d.reason == "policy.no_rule"


def test_rule_dry_run_only_affects_that_rule():
    p = policy("""policy:
  rules:
    - {id: trial, match: {paths: ["/new"]}, require: {roles_any: [admin]}, dry_run: true}
    - {id: strict, match: {paths: ["/old"]}, require: {roles_any: [admin]}}
""")
    trial = decide(p, request=req("/new"))
    assert trial.allowed and trial.dry_run and trial.reason == "policy.role_required"
    assert not decide(p, request=req("/old")).allowed


@pytest.mark.parametrize("require, allowed, reason", [
    ("{clients: [chat*]}", True, None),
    ("{clients: [claude]}", False, "policy.client_not_allowed"),
    ("{tenants: [acme]}", True, None),
    ("{subjects: [alice, bob]}", False, "policy.subject_not_allowed"),
    ("{email_domains: ['@acme.com']}", True, None),
    ("{email_domains: [evil.com]}", False, "policy.email_domain_not_allowed"),
    ("{claims: {realm_access.department: finance}}", True, None),
    ("{claims: {realm_access.department: [hr, legal]}}", False, "policy.claim_mismatch"),
    ("{claims: {level: 3}}", True, None),
    ("{claims: {level: '3'}}", False, "policy.claim_mismatch"),
    ("{claims: {admin: 1}}", False, "policy.claim_mismatch"),
    ("{scopes_any: [a, b]}", True, None),
    ("{scopes_all: [a, b]}", False, "policy.insufficient_scope"),
    ("{roles_all: [accounting, vp]}", False, "policy.role_required"),
    ("{headers: {x-env: prod}}", False, "policy.header_mismatch"),
    ("{source_cidrs: [10.0.0.0/8]}", True, None),
    ("{source_cidrs: ['192.168.0.0/16']}", False, "policy.source_not_allowed"),
])
def test_conditions(require, allowed, reason):
    p = policy(f"policy:\n  rules:\n    - {{id: r, require: {require}}}\n")
    d = decide(p)
    assert d.allowed is allowed
    if reason:
        assert d.reason == reason


def test_insufficient_scope_names_every_required_scope():
    d = decide(policy("policy:\n  rules:\n    - {id: r, require: {scopes_all: [a, b, c]}}\n"))
    assert d.scopes == ("a", "b", "c") and "b c" in d.message


def test_time_window_with_timezone_and_midnight_wrap():
    p = policy("""policy:
  rules:
    - id: office
      require: {time: {days: [mon, tue, wed, thu, fri], from: "08:00", to: "18:00", timezone: Europe/Berlin}}
    - id: night
      match: {paths: ["/night"]}
      require: {time: {days: [fri], from: "22:00", to: "02:00"}}
""")
    monday_9_berlin = datetime.datetime(2026, 11, 23, 8, 0, tzinfo=datetime.UTC)   # 09:00 CET
    sunday = datetime.datetime(2026, 11, 22, 10, 0, tzinfo=datetime.UTC)
    monday_evening = datetime.datetime(2026, 11, 23, 17, 30, tzinfo=datetime.UTC)  # 18:30 CET
    assert decide(p, now=monday_9_berlin).allowed
    assert decide(p, now=sunday).reason == "policy.outside_time_window"
    assert not decide(p, now=monday_evening).allowed
    p_night = policy("""policy:
  rules:
    - {id: night, require: {time: {days: [fri], from: "22:00", to: "02:00"}}}
""")
    sat_1am = datetime.datetime(2026, 11, 28, 1, 0, tzinfo=datetime.UTC)
    sat_3am = datetime.datetime(2026, 11, 28, 3, 0, tzinfo=datetime.UTC)
    assert decide(p_night, now=sat_1am).allowed
    assert not decide(p_night, now=sat_3am).allowed


def test_host_and_method_matching():
    p = policy("""policy:
  rules:
    - {id: r, match: {hosts: ["*.acme.com"], methods: [get]}}
""")
    assert decide(p).allowed
    assert not decide(p, request=req(method="POST")).allowed
    assert not decide(p, request=Request(id="", method="GET", scheme="", host="evil.com", path="/",
                                         headers={})).allowed


REWRITE = """policy:
  rules:
    - id: medical
      match: {llm: {models: ["gpt-medical*"]}}
      require: {roles_any: [doctor]}
      otherwise: {rewrite_model: gpt-general}
    - {id: general, match: {llm: {models: [gpt-general]}}, require: {roles_any: [accounting]}}
"""


def test_model_rewrite_when_the_policy_says_so():
    p = policy(REWRITE)
    d = decide(p, action=Action(protocol="llm", kind="chat.completions", model="gpt-medical"))
    assert d.allowed and d.rewrite_model == "gpt-general" and d.reason == "policy.model_rewritten"
    assert d.rule == "general"


def test_model_rewrite_to_a_model_the_user_may_not_use_denies_with_the_first_reason():
    p = policy(REWRITE)
    nobody = Principal(subject="x")
    d = decide(p, principal=nobody, action=Action(protocol="llm", kind="chat.completions",
                                                   model="gpt-medical"))
    assert not d.allowed and d.reason == "policy.role_required" and d.rule == "medical"


def test_otherwise_requires_an_llm_match():
    with pytest.raises(ConfigError, match=r"otherwise\.rewrite_model needs a match\.llm"):
        policy("policy:\n  rules:\n    - {id: r, otherwise: {rewrite_model: m}}\n")


@pytest.mark.parametrize("yaml_text, path", [
    ("policy:\n  rules:\n    - {id: a}\n    - {id: a}\n", "policy.rules"),
    ("policy:\n  rules:\n    - {id: 'bad id!'}\n", "policy.rules[0].id"),
    ("policy:\n  rules:\n    - {id: a, require: {source_cidrs: [nope]}}\n", "policy.rules[0].require.source_cidrs"),
    ("policy:\n  rules:\n    - {id: a, require: {time: {timezone: Mars/Base}}}\n",
     "policy.rules[0].require.time.timezone"),
    ("policy:\n  rules:\n    - {id: a, reason: 'Not A Code'}\n", "policy.rules[0].reason"),
    ("policy:\n  rules:\n    - {id: a, match: {mcp: {tool: [x]}}}\n", "policy.rules[0].match.mcp.tool"),
])
def test_bad_policies_are_refused_with_the_key_path(yaml_text, path):
    with pytest.raises(ConfigError) as info:
        parse_config(yaml_text, env={})
    assert path in [p for p, _ in info.value.problems], info.value.problems


# --- the stage in Check and Process --------------------------------------------------------------

STAGE_POLICY = """policy:
  rules:
    - {id: list, match: {mcp: {methods: [tools/list]}}}
    - {id: cal, match: {mcp: {tools: [get_calendar]}}, require: {scopes_all: [tools:calendar]}}
    - {id: inv, match: {mcp: {tools: [delete_invoice]}}, require: {scopes_all: [invoices:write]}}
    - {id: dept, match: {mcp: {tools: [finance_report]}}, require: {claims: {dept: finance}}}
""" + REWRITE.replace("policy:\n  rules:\n", "")


def stage() -> PolicyStage:
    return PolicyStage(parse_config(STAGE_POLICY, env={}).policy)


def mcp_request(msg) -> Request:
    return Request(id="r", method="POST", scheme="http", host="h", path="/mcp", headers={"content-type": "application/json"},
                   body=json.dumps(msg).encode())


async def test_insufficient_scope_is_a_403_challenge_with_a_jsonrpc_error():
    s = stage()
    ctx = Context(request=mcp_request({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                                       "params": {"name": "delete_invoice"}}), principal=OSCAR)
    with pytest.raises(Forbidden) as info:
        await s.on_request(ctx)
    deny = info.value
    assert deny.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", error_description="missing scope(s): invoices:write", '
        'scope="invoices:write"')
    assert deny.details["jsonrpc_id"] == 9 and deny.details["required_scopes"] == ["invoices:write"]


TOOLS = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [
    {"name": "get_calendar", "inputSchema": {}}, {"name": "delete_invoice", "inputSchema": {}},
    {"name": "finance_report"}, {"name": "unlisted"}]}}


async def filtered_tools(body: bytes, content_type: str, principal: Principal) -> tuple[list[str], Exchange]:
    s = stage()
    ctx = Context(request=mcp_request({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
                  principal=principal)
    await s.on_request(ctx)
    assert ctx.handoff.response_body == "buffered" and "accept-encoding" in ctx.mutations.remove_headers
    from authz.envoy import handoff

    ex = Exchange(request=ctx.request, handoff=handoff.decode(handoff.encode(ctx.handoff)[handoff.FIELD]),
                  response_headers={"content-type": content_type}, response_body=body,
                  response_chunk=body, response_end=True)
    await s.on_response_body(ex)
    new = ex.mutations.body if ex.mutations.body is not None else body
    if content_type == "text/event-stream":
        data = [line[6:] for line in new.decode().split("\n") if line.startswith("data: ")]
        return [t["name"] for t in json.loads(data[0])["result"]["tools"]], ex
    return [t["name"] for t in json.loads(new)["result"]["tools"]], ex


async def test_tools_list_shows_only_callable_tools_json():
    p = Principal(subject="u", scopes=frozenset({"tools:calendar"}), claims={"dept": "finance"})
    names, ex = await filtered_tools(json.dumps(TOOLS).encode(), "application/json", p)
    assert names == ["get_calendar", "finance_report"]
    assert ex.facts["tools_hidden"] == 2


async def test_tools_list_filtering_in_an_sse_answer():
    body = f"event: message\ndata: {json.dumps(TOOLS)}\n\n".encode()
    p = Principal(subject="u", scopes=frozenset({"invoices:write"}))
    names, _ = await filtered_tools(body, "text/event-stream", p)
    assert names == ["delete_invoice"]


async def test_model_rewrite_in_the_request_body():
    s = stage()
    body = json.dumps({"model": "gpt-medical", "messages": [{"role": "user", "content": "héllo"}]}).encode()
    ctx = Context(request=Request(id="r", method="POST", scheme="http", host="h",
                                  path="/v1/chat/completions", headers={}, body=body), principal=OSCAR)
    await s.on_request(ctx)
    assert ctx.model == "gpt-general" and ctx.outgoing.changed
    rewritten = json.loads(ctx.outgoing.encode())
    assert rewritten["model"] == "gpt-general" and rewritten["messages"][0]["content"] == "héllo"


ROUTING = """routing:
  enabled: true
  routes:
    - {route: medical, when: {roles_any: [doctor]}}
    - {route: financial, when: {roles_any: [analyst]}, models: ["gpt-fin*"]}
  default: general
"""


@pytest.mark.parametrize("principal, model, path, route", [
    (Principal(subject="d", roles=frozenset({"doctor"})), "gpt-x", "/v1/chat/completions", "medical"),
    (Principal(subject="a", roles=frozenset({"analyst"})), "gpt-fin-1", "/v1/chat/completions", "financial"),
    (Principal(subject="a", roles=frozenset({"analyst"})), "gpt-x", "/v1/chat/completions", "general"),
    (ANONYMOUS, "gpt-x", "/v1/chat/completions", "general"),
    (Principal(subject="d", roles=frozenset({"doctor"})), None, "/mcp", None),
])
async def test_routing_by_identity(principal, model, path, route):
    s = RoutingStage(parse_config(ROUTING, env={}).routing)
    ctx = Context(request=Request(id="", method="POST", scheme="", host="", path=path,
                                  headers={"x-authz-route": "medical"}), principal=principal)
    ctx.view.action = Action(protocol="llm", kind="chat.completions", model=model)
    await s.on_request(ctx)
    if route is None:
        assert "x-authz-route" in ctx.mutations.remove_headers
        assert "x-authz-route" not in ctx.mutations.set_headers
    else:
        assert ctx.mutations.set_headers["x-authz-route"] == route
        assert ctx.facts["route"] == route
