"""``authz approvals grant ID --config FILE``: an operator grants a held request."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Sequence
from typing import Any

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
    p = argparse.ArgumentParser(prog="authz approvals", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grant", help="grant a held request (the user's retry then passes once)")
    g.add_argument("approval_id")
    g.add_argument("--config", "-c", required=True)
    g.add_argument("--as", dest="approver", default=f"operator:{getpass.getuser()}")
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
