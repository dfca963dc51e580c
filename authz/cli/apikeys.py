"""``authz apikeys add | revoke | list``: API keys kept in Redis (``identity.api_keys.store: redis``).

Only a key's SHA-256 digest is stored, in the record format ``authz.identity.apikeys`` reads;
``add`` prints the key itself once.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any

from authz.cli.text import exit_codes, plain
from authz.config import load_config
from authz.errors import ConfigError
from authz.identity.apikeys import INDEX_KEY, check_key_syntax, record_key
from authz.identity.config import hash_api_key
from authz.store import StoreUnavailable, build_store

APIKEYS_USAGE = """usage: authz apikeys add --config FILE --name N --subject S [--roles R] [--scopes S]
                          [--client C] [--tenant T] [--email E] [--expires-in SECONDS]
       authz apikeys revoke --config FILE (--name N | --sha256 DIGEST)
       authz apikeys list --config FILE [--json]"""


APIKEYS_EXIT_CODES = exit_codes("0  done", "1  Redis is unreachable, or no such key to revoke",
                                "2  the config is invalid, no Redis is configured, or the command line is wrong")
APIKEYS_HELP = {"add": "create a key for a subject and print it once (only its SHA-256 is stored)",
                "revoke": "revoke a key by name or digest", "list": "list keys (names, subjects, digests, expiry)"}


def build_parser(action: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"authz apikeys {action}", description=APIKEYS_HELP[action].capitalize() + ".",
                                **APIKEYS_EXIT_CODES)
    p.add_argument("--config", "-c", required=True, help="the config the sidecar runs (its Redis)")
    if action == "add":
        p.add_argument("--name", required=True, help="label for logs and audit (1-64 of A-Za-z0-9_.-)")
        p.add_argument("--subject", required=True, help="the subject the key authenticates as")
        for opt in ("--roles", "--scopes"):
            p.add_argument(opt, action="append", help="comma- or space-separated; repeatable")
        for opt in ("--client", "--tenant", "--email"):
            p.add_argument(opt, help=f"the principal's {opt[2:]}")
        p.add_argument("--expires-in", type=float, metavar="SECONDS", help="lifetime (default: no expiry)")
    elif action == "revoke":
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--name", help="the name given at add")
        which.add_argument("--sha256", help="the key's SHA-256 hex digest")
    else:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _words(values: Sequence[str] | None) -> str:
    return " ".join(sorted({w for v in values or () for w in v.replace(",", " ").split()}))


async def run(action: str, args: argparse.Namespace) -> int:
    config, _ = load_config(args.config)
    url = config.store.redis_url or os.environ.get("REDIS_URL", "")
    if not url:
        print("authz apikeys: no Redis: set store.redis_url in the config or REDIS_URL", file=sys.stderr)
        return 2
    ak = config.identity.api_keys
    store = build_store(config.store.model_copy(update={
        "redis_url": url, "timeout_ms": max(config.store.timeout_ms, 2000)}))
    try:
        if action == "add":
            if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", args.name):
                print("authz apikeys: --name takes 1-64 letters, digits, '_', '.' or '-'", file=sys.stderr)
                return 2
            if not args.subject.strip():
                print("authz apikeys: --subject must not be empty", file=sys.stderr)
                return 2
            if args.expires_in is not None and args.expires_in <= 0:
                print("authz apikeys: --expires-in must be positive", file=sys.stderr)
                return 2
            if args.name in await store.hgetall(INDEX_KEY) or any(k.name == args.name for k in ak.keys):
                print(f"authz apikeys: a key named {args.name} exists; revoke it first", file=sys.stderr)
                return 1
            key = secrets.token_urlsafe(32)
            check_key_syntax(key)
            digest = hash_api_key(key)
            record = {"name": args.name, "subject": args.subject.strip(), "roles": _words(args.roles),
                      "scopes": _words(args.scopes), "client": args.client or "",
                      "tenant": args.tenant or "", "email": args.email or "",
                      "created_at": str(int(time.time()))}
            if args.expires_in is not None:
                record["expires_at"] = str(int(time.time() + args.expires_in))
            await store.hset(record_key(digest), record)
            await store.hset(INDEX_KEY, {args.name: digest})
            print(key)
            print(f"stored API key {args.name} for {record['subject']} (sha256 {digest[:12]}...); "
                  "the key is shown only this once", file=sys.stderr)
            if ak.store != "redis":
                print("note: identity.api_keys.store is not redis in this config, so the sidecar "
                      "does not look keys up in Redis", file=sys.stderr)
            return 0
        index = {n: v.decode() for n, v in (await store.hgetall(INDEX_KEY)).items()}
        if action == "revoke":
            target = index.get(args.name) if args.name else args.sha256.strip().lower().removeprefix("sha256:")
            names = [n for n, d in index.items() if d == target]
            existed = await store.delete(record_key(target)) if target else False
            if names:
                await store.hdel(INDEX_KEY, *names)
            if not existed and not names:
                print("authz apikeys: no such key", file=sys.stderr)
                return 1
            print(f"revoked {', '.join(names) or target}; sidecars refuse it within "
                  f"identity.api_keys.cache_seconds ({ak.cache_seconds:g} s)")
            return 0
        rows: list[dict[str, Any]] = []
        now = time.time()
        for name, digest in sorted(index.items()):
            rec = {k: v.decode(errors="replace") for k, v in (await store.hgetall(record_key(digest))).items()}
            exp = float(rec["expires_at"]) if rec.get("expires_at") else None
            state = "missing" if not rec else "expired" if exp is not None and exp <= now else "active"
            rows.append({"name": name, "subject": rec.get("subject", ""), "roles": rec.get("roles", ""),
                         "scopes": rec.get("scopes", ""), "client": rec.get("client", ""),
                         "tenant": rec.get("tenant", ""), "state": state, "sha256": digest,
                         "expires_at": None if exp is None else datetime.datetime.fromtimestamp(
                             exp, datetime.UTC).isoformat()})
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print("no API keys in Redis")
        for r in rows:
            print(f"{r['name']:<24} {r['subject']:<24} {r['state']:<8} roles [{r['roles']}] "
                  f"scopes [{r['scopes']}] expires {r['expires_at'] or 'never'} sha256 {r['sha256'][:12]}")
        return 0
    finally:
        await store.close()


def main(argv: Sequence[str]) -> int:
    if list(argv[:1]) in (["-h"], ["--help"]):
        top = argparse.ArgumentParser(prog="authz apikeys", description=plain(__doc__), **APIKEYS_EXIT_CODES)
        actions = top.add_subparsers(dest="action")
        for action, text in APIKEYS_HELP.items():
            actions.add_parser(action, help=text)
        top.parse_args(["--help"])
    if not argv or argv[0] not in ("add", "revoke", "list"):
        print(APIKEYS_USAGE, file=sys.stderr)
        return 2
    args = build_parser(argv[0]).parse_args(argv[1:])
    try:
        return asyncio.run(run(argv[0], args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"authz apikeys: Redis is unreachable: {exc}", file=sys.stderr)
        return 1
