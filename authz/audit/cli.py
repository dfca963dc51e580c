"""``authz audit verify | explain | export | export-stream | keygen``."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from authz.audit.log import format_time
from authz.audit.verify import audit_files, load_public_keys, read_records, verify
from authz.cli_text import USAGE_ERROR, exit_codes


def _records(paths: Sequence[str]) -> list[dict[str, Any]]:
    return [rec for _, _, rec, _ in read_records(audit_files(paths)) if rec is not None]


def explain(request_id: str, records: list[dict[str, Any]]) -> str:
    """One request's story in plain words, from its decision and outcome records."""
    mine = [r for r in records if r.get("request_id") == request_id]
    if not mine:
        return f"no audit record for request {request_id}"
    lines = [f"Request {request_id}"]
    for r in mine:
        facts = r.get("facts", {})
        if r["type"] == "decision":
            p = r.get("principal")
            who = "an anonymous caller" if not p else (
                f"user {p['subject']}" + (f" of tenant {p['tenant']}" if p.get("tenant") else "")
                + (f" via client {p['client']}" if p.get("client") else "")
                + f" (verified by {p.get('issuer') or p.get('credential')})")
            action = r.get("action") or {}
            what = f"{r['method']} {r['host']}{r['path']}"
            if action.get("protocol") == "mcp":
                what += f", MCP {action.get('kind')}" + (f" of {action['name']}" if action.get("name") else "")
            elif action.get("model"):
                what += f", model {action['model']} ({action.get('kind')})"
            lines.append(f"  at {format_time(r.get('time_ms'))}: {who} asked for {what}.")
            rule = facts.get("rule") or (facts.get("policy") or {}).get("rule")
            if r["decision"] == "allow":
                lines.append("  It was ALLOWED" + (f" by rule {rule}" if rule and rule != "-" else "") + ".")
            else:
                lines.append(f"  It was DENIED with {r['status']}: {r['reason']}"
                             + (f" (rule {rule})" if rule and rule != "-" else "") + ".")
            if facts.get("dry_run"):
                lines.append(f"  Dry-run: policy would have denied it ({facts['dry_run']}).")
            if facts.get("route"):
                lines.append(f"  It was routed to the {facts['route']} upstream.")
            if facts.get("limits"):
                lines.append(f"  Limits: {json.dumps(facts['limits'], sort_keys=True)}.")
            if facts.get("redaction"):
                lines.append(f"  Redacted: {json.dumps(facts['redaction'], sort_keys=True)}.")
        elif r["type"] == "outcome":
            lines.append(f"  The upstream answered {r['status'] or 'nothing (the exchange ended early)'}"
                         + f" ({facts.get('outcome', 'completed')}).")
            if facts.get("usage"):
                u = facts["usage"]
                lines.append(f"  It used {u['input_tokens']} input and {u['output_tokens']} output tokens.")
            if facts.get("redaction"):
                lines.append(f"  Redacted before forwarding: {json.dumps(facts['redaction'], sort_keys=True)}.")
            if facts.get("tools_hidden"):
                lines.append(f"  {facts['tools_hidden']} tool(s) were hidden from the tools/list answer.")
            if facts.get("tools_list_refused"):
                lines.append(f"  The tools/list answer could not be filtered ({facts['tools_list_refused']}); "
                             "the caller got an error instead.")
    lines.append(f"  (seq {', '.join(str(r['seq']) for r in mine)} on instance {mine[0]['instance']})")
    return "\n".join(lines)


EXPORT_COLUMNS = ["seq", "ts", "instance", "type", "request_id", "decision", "status", "reason", "rule", "subject",
                  "tenant", "client", "method", "host", "path", "protocol", "kind", "name", "model", "route",
                  "input_tokens", "output_tokens"]


def export_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        if r.get("type") not in ("decision", "outcome"):
            continue
        facts = r.get("facts", {})
        p = r.get("principal") or {}
        a = r.get("action") or {}
        u = facts.get("usage") or {}
        rows.append({"seq": r["seq"], "ts": format_time(r.get("time_ms")), "instance": r["instance"], "type": r["type"],
                     "request_id": r.get("request_id"), "decision": r.get("decision"), "status": r.get("status"),
                     "reason": r.get("reason"), "rule": facts.get("rule"), "subject": p.get("subject"),
                     "tenant": p.get("tenant"), "client": p.get("client"), "method": r.get("method"),
                     "host": r.get("host"), "path": r.get("path"), "protocol": a.get("protocol"),
                     "kind": a.get("kind"), "name": a.get("name"), "model": facts.get("model") or a.get("model"),
                     "route": facts.get("route"), "input_tokens": u.get("input_tokens"),
                     "output_tokens": u.get("output_tokens")})
    return rows


def keygen(out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = out / "audit-signing-key.pem", out / "audit-public-key.pem"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="authz audit", description="Verify, explain and export audit logs offline.",
                                **exit_codes("0  success", "1  failure (see each command's --help)",
                                             "2  verify: intact but not closed; or the command line is wrong"))
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check chain, signatures, gaps, order and truncation",
                       description="Check the hash chain, the checkpoint signatures, gaps, order and truncation.",
                       **exit_codes("0  intact and closed: every segment sealed by its final checkpoint",
                                    "1  tampered (each problem with its file and line), or a key cannot be read",
                                    "2  intact up to the last checkpoint, but not closed: records not sealed yet "
                                    "(a running sidecar's newest ones, or a crash's or truncation's), or a "
                                    "segment still open; also a wrong command line"))
    v.add_argument("paths", nargs="+", help="audit files or directories")
    v.add_argument("--public-key", required=True, action="append",
                   help="Ed25519 public key: PEM, a JWK or a JWKS (every Ed25519 key in it); repeat it "
                        "for each key the sidecars signed with when the audit key was rotated")
    e = sub.add_parser("explain", help="tell one request's story", description="Tell one request's story.",
                       **exit_codes("0  told (or said that no record names the request)", USAGE_ERROR))
    e.add_argument("request_id", help="the x-request-id of the request")
    e.add_argument("paths", nargs="+", help="audit files or directories")
    x = sub.add_parser("export", help="CSV for spreadsheets", description="Write the records as CSV.",
                       **exit_codes("0  written", USAGE_ERROR))
    x.add_argument("paths", nargs="+", help="audit files or directories")
    x.add_argument("--out", help="file (default: stdout)")
    xs = sub.add_parser("export-stream", help="write the Redis Stream (audit.redis_stream) as per-instance "
                        "files that verify checks",
                        **exit_codes("0  written", "1  Redis unreachable or the stream empty", USAGE_ERROR))
    xs.add_argument("--redis-url", required=True, help="the Redis holding the stream")
    xs.add_argument("--stream", default="authz:audit", help="the stream's key (default authz:audit)")
    xs.add_argument("--instance", help="only this instance (default: all)")
    xs.add_argument("--out", required=True, help="directory: one sub-directory per instance")
    k = sub.add_parser("keygen", help="write an Ed25519 key pair for checkpoint signing (`authz keygen` "
                                      "writes every key a deployment mounts)",
                       description="Write an Ed25519 key pair for checkpoint signing.",
                       **exit_codes("0  written", "1  a key file already exists", USAGE_ERROR))
    k.add_argument("--out", required=True, help="directory for audit-signing-key.pem and audit-public-key.pem")
    args = p.parse_args(list(argv))
    if args.cmd == "verify":
        try:
            keys = [k for path in args.public_key for k in load_public_keys(path)]
        except (OSError, ValueError, KeyError, StopIteration) as exc:
            print(f"authz audit verify: cannot read the public key: {exc}", file=sys.stderr)
            return 1
        report = verify(args.paths, keys)
        print(report.render())
        return report.status
    if args.cmd == "explain":
        print(explain(args.request_id, _records(args.paths)))
        return 0
    if args.cmd == "export":
        rows = export_rows(_records(args.paths))
        out = open(args.out, "w", newline="") if args.out else sys.stdout
        try:
            w = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        finally:
            if args.out:
                out.close()
        return 0
    if args.cmd == "export-stream":
        from authz.audit.redis_stream import export_stream
        from authz.store.resp import RespError
        try:
            summary = export_stream(args.redis_url, args.stream, Path(args.out), instance=args.instance)
        except (OSError, TimeoutError, ValueError, RespError) as exc:
            print(f"authz audit export-stream: {exc}", file=sys.stderr)
            return 1
        if not summary:
            print(f"authz audit export-stream: no records in stream {args.stream}", file=sys.stderr)
            return 1
        print("\n".join(summary))
        print(f"verify with: authz audit verify {args.out} --public-key KEY")
        return 0
    private, public = keygen(Path(args.out))
    print(f"wrote {private} (mount as a secret; audit.signing_key_file) and {public} (give to auditors)")
    return 0
