"""``authz approvals grant ID --config FILE``: an operator grants a held request."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Sequence
from typing import Any

from authz.cli.text import exit_codes, plain
from authz.config import load_config
from authz.errors import ConfigError
from authz.redaction.stage import grant
from authz.store import StoreUnavailable, build_store


async def _grant(config_path: str, approval_id: str, approver: str) -> dict[str, Any]:
    config, _ = load_config(config_path)
    store = build_store(config.store)
    try:
        return await grant(store, approval_id, approver=approver)
    finally:
        await store.close()


def main(argv: Sequence[str]) -> int:
    codes = exit_codes("0  granted", "1  no such pending approval, or the store is unreachable",
                       "2  the config is invalid, or the command line is wrong")
    p = argparse.ArgumentParser(prog="authz approvals", description=plain(__doc__), **codes)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grant", help="grant a held request (the user's retry then passes once)",
                       description="Grant a held request: the user's retry then passes once.", **codes)
    g.add_argument("approval_id", help="the id from the held answer's x-authz-approval-id")
    g.add_argument("--config", "-c", required=True, help="the config the sidecar runs (its store)")
    g.add_argument("--as", dest="approver", default=f"operator:{getpass.getuser()}",
                   help="who grants it, for the audit trail (default operator:$USER)")
    args = p.parse_args(list(argv))
    try:
        record = asyncio.run(_grant(args.config, args.approval_id, args.approver))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyError:
        print(f"authz approvals: no pending approval {args.approval_id} (expired, used or never issued)",
              file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"authz approvals: the store is unreachable: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"approval_id": args.approval_id, "status": "granted", "for": record["subject"],
                      "types": record["types"], "by": args.approver}))
    return 0
