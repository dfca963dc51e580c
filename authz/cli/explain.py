"""``authz explain``: evaluate the policy in a config file against a sample request, offline.

The identity is given directly (``--sub``, ``--roles`` ...) instead of a token, so an operator
can ask "what would happen if Oscar called delete_invoice?" without an IdP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from authz.cli.text import exit_codes, plain
from authz.config import load_config
from authz.errors import ConfigError, Deny
from authz.model import ANONYMOUS, Context, Principal, Request
from authz.policy.stage import PolicyStage
from authz.request import Reader
from authz.responses import render_denial
from authz.routing import RoutingStage


def _split(values: Sequence[str] | None) -> frozenset[str]:
    out: set[str] = set()
    for v in values or ():
        out.update(x for x in v.replace(",", " ").split() if x)
    return frozenset(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="authz explain", description=plain(__doc__),
                                **exit_codes("0  the request would be allowed", "1  it would be denied",
                                             "2  the config is invalid, or the command line is wrong"))
    p.add_argument("--config", "-c", required=True, help="the config to evaluate")
    p.add_argument("--method", default="POST", help="HTTP method (default POST)")
    p.add_argument("--path", required=True, help="request path, e.g. /mcp")
    p.add_argument("--host", default="localhost", help="the :authority (default localhost)")
    p.add_argument("--header", "-H", action="append", default=[], help="NAME: VALUE")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", help="request body (text)")
    body.add_argument("--body-file", type=Path, help="request body from a file")
    p.add_argument("--sub", help="subject; omit for an anonymous request")
    p.add_argument("--roles", action="append", help="comma- or space-separated; repeatable")
    p.add_argument("--scopes", action="append", help="comma- or space-separated; repeatable")
    p.add_argument("--client", help="the LLM client")
    p.add_argument("--tenant", help="the tenant claim")
    p.add_argument("--email", help="the email claim")
    p.add_argument("--claims", help="extra claims as a JSON object")
    return p


async def explain(config_path: str, request: Request, principal: Principal) -> dict[str, Any]:
    config, _ = load_config(config_path)
    ctx = Context(request=request, view=Reader(config.policy.protocols).read(request), principal=principal)
    out: dict[str, Any] = {"request": {"method": request.method, "host": request.host,
                                       "path": request.path}}
    try:
        await PolicyStage(config.policy, explain=True).on_request(ctx)
        await RoutingStage(config.routing).on_request(ctx)
    except Deny as deny:
        denial = render_denial(deny, None, protocol=ctx.view.protocol, action=ctx.view.action)
        out.update(decision="deny", status=deny.status, reason=deny.reason, message=deny.message,
                   response_headers=denial.headers, policy=ctx.facts.get("policy"))
        return out
    out.update(decision="allow", status=200, policy=ctx.facts.get("policy"),
               route=ctx.facts.get("route"), upstream_headers=ctx.mutations.set_headers,
               removed_headers=sorted(ctx.mutations.remove_headers))
    return out


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            print(f"authz explain: --header needs NAME: VALUE, got {h!r}", file=sys.stderr)
            return 2
        headers[name.strip().lower()] = value.strip()
    body = (args.body or "").encode() if args.body_file is None else args.body_file.read_bytes()
    if body and "content-type" not in headers:
        headers["content-type"] = "application/json"
    request = Request(id="explain", method=args.method.upper(), scheme="https", host=args.host,
                      path=args.path, headers=headers, body=body)
    principal = ANONYMOUS
    if args.sub:
        try:
            claims = json.loads(args.claims) if args.claims else {}
        except ValueError as exc:
            print(f"authz explain: --claims is not JSON: {exc}", file=sys.stderr)
            return 2
        principal = Principal(subject=args.sub, issuer="explain", client=args.client, tenant=args.tenant,
                              email=args.email, roles=_split(args.roles), scopes=_split(args.scopes),
                              claims=claims)
    try:
        result = asyncio.run(explain(args.config, request, principal))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2, default=str)
    print()
    return 0 if result["decision"] == "allow" else 1
