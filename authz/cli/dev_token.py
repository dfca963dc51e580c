"""``authz dev-token``: mint an access token from the local dev issuer's key (``make run``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from authz.cli.text import exit_codes
from authz.dev import issuer


def _items(values: Sequence[str] | None) -> list[str]:
    """Comma- or space-separated values from repeatable flags, in order, without duplicates."""
    out: list[str] = []
    for value in values or ():
        out += [x for x in value.replace(",", " ").split() if x not in out]
    return out


def dev_token_main(argv: Sequence[str]) -> int:
    """``authz dev-token``: print an access token from the dev issuer's key, and nothing else."""
    p = argparse.ArgumentParser(prog="authz dev-token",
                                description="Mint an access token from the local dev issuer (make run).",
                                **exit_codes("0  the token printed", "2  the command line is wrong"))
    p.add_argument("--sub", required=True, help="the user, e.g. oscar")
    p.add_argument("--roles", action="append", metavar="A,B", help="comma or space separated; repeatable")
    p.add_argument("--scopes", action="append", metavar="A,B", help="comma or space separated; repeatable")
    p.add_argument("--client", default="demo-cli", help="the LLM client (azp and client_id)")
    p.add_argument("--tenant", help="the tenant claim")
    p.add_argument("--email", help="the email claim")
    p.add_argument("--aud", action="append", help=f"audience (default {issuer.DEFAULT_AUDIENCE}); repeatable")
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    p.add_argument("--issuer", default=os.environ.get("AUTHZ_DEV_ISSUER", issuer.DEFAULT_ISSUER),
                   help=f"the iss claim (default $AUTHZ_DEV_ISSUER or {issuer.DEFAULT_ISSUER})")
    p.add_argument("--dev-dir", help="where the issuer key lives (default $AUTHZ_DEV_DIR or .dev)")
    args = p.parse_args(list(argv))
    if args.ttl <= 0:
        p.error("--ttl must be positive")
    if not args.sub.strip():
        p.error("--sub must not be empty")
    print(issuer.mint_token(sub=args.sub, roles=_items(args.roles), scopes=_items(args.scopes), client=args.client,
                     tenant=args.tenant, email=args.email, issuer=args.issuer,
                     audience=args.aud or (issuer.DEFAULT_AUDIENCE,), ttl=args.ttl, dev_dir=args.dev_dir))
    return 0
