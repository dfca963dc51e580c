"""``authz audit verify | explain | export | export-stream | keygen | trim | digest``.

explain and export read any file: a damaged line is reported on stderr (file:line) and skipped,
never raised.
"""

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
from authz.cli.text import USAGE_ERROR, exit_codes

# Which stage refuses with which reason (reason codes are "<area>.<what>", rate_limited aside).
_STAGES = (("approvals.", "approval"), ("redaction.approval_required", "approval"), ("redaction.", "redaction"),
           ("token.", "identity"), ("credentials.", "identity"), ("api_key.", "identity"), ("identity.", "identity"),
           ("policy.", "policy"), ("rate_limited", "limits"), ("budget.", "limits"), ("limits.", "limits"),
           ("audit.", "audit"), ("mcp.", "request reading"), ("llm.", "request reading"),
           ("body.", "request reading"), ("request.", "request reading"))


def deciding_stage(reason: str) -> str:
    return next((stage for prefix, stage in _STAGES if reason.startswith(prefix)), "sidecar")


def _records(paths: Sequence[str]) -> list[dict[str, Any]]:
    damaged: list[str] = []
    records = [rec for _, _, rec, _ in read_records(audit_files(paths), damaged=damaged) if rec is not None]
    for d in damaged:
        print(f"skipped {d}", file=sys.stderr)
    return records


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def explain(request_id: str, records: list[dict[str, Any]]) -> str | None:
    """One request's story in plain words, from its decision and outcome records; None when no
    record names it."""
    mine = [r for r in records if r.get("request_id") == request_id]
    if not mine:
        return None
    lines = [f"Request {request_id}"]
    for r in mine:
        try:
            lines += _story(r)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a record of an odd shape
            lines.append(f"  (record seq {r.get('seq')} could not be read: {type(exc).__name__})")
    allowed = any(r.get("type") == "decision" and r.get("decision") == "allow" for r in mine)
    if allowed and not any(r.get("type") == "outcome" for r in mine):
        lines.append("  No outcome record: Process had no work for it (nothing to scan, meter, filter or bind), "
                     "or its exchange has not ended; what the upstream answered is in Envoy's access log "
                     "under this request id.")
    lines.append(f"  (seq {', '.join(str(r.get('seq')) for r in mine)} on instance {mine[0].get('instance')})")
    return "\n".join(lines)


def _story(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    facts = _d(r.get("facts"))
    if r.get("type") == "decision":
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
        rule = facts.get("rule") or _d(facts.get("policy")).get("rule")
        reason = str(r.get("reason"))
        by_rule = rule and rule != "-" and deciding_stage(reason) == "policy"
        if r.get("decision") == "allow":
            lines.append("  It was ALLOWED" + (f" by rule {rule}" if rule and rule != "-" else "") + ".")
        elif r.get("decision") == "answer":
            lines.append(f"  The sidecar ANSWERED it itself with {r.get('status')}: {reason} "
                         f"(stage: {deciding_stage(reason)}).")
        else:
            lines.append(f"  It was DENIED with {r.get('status')}: {reason}"
                         + (f" (rule {rule})" if by_rule else "") + f" by the {deciding_stage(reason)} stage.")
        if facts.get("dry_run"):
            lines.append(f"  Dry-run: policy would have denied it ({facts['dry_run']}).")
        if r.get("decision") == "allow":
            # Process may still refuse it (an outcome "denied"): that line follows from the outcome.
            lines.append("  Check let it through" + (f" to the {facts['route']} upstream." if facts.get("route")
                                                      else " to the upstream."))
        else:
            lines.append("  It was not forwarded.")
        if facts.get("limits"):
            lines.append(f"  Limits: {json.dumps(facts['limits'], sort_keys=True)}.")
        if facts.get("redaction"):
            lines.append(f"  Redacted: {json.dumps(facts['redaction'], sort_keys=True)}.")
    elif r.get("type") == "outcome":
        if facts.get("outcome") == "denied":
            lines.append("  Process refused it (Process denials are in the decision log as process_denied): "
                         "it was not forwarded, or its answer was replaced.")
        lines.append(f"  It was answered {r.get('status') or 'with nothing (the exchange ended early)'}"
                     + f" ({facts.get('outcome', 'completed')}).")
        if facts.get("usage"):
            u = _d(facts["usage"])
            lines.append(f"  It used {u['input_tokens']} input and {u['output_tokens']} output tokens.")
        if facts.get("redaction"):
            lines.append(f"  Redacted before forwarding: {json.dumps(facts['redaction'], sort_keys=True)}.")
        if facts.get("tools_hidden"):
            lines.append(f"  {facts['tools_hidden']} tool(s) were hidden from the tools/list answer.")
        if facts.get("tools_list_refused"):
            lines.append(f"  The tools/list answer could not be filtered ({facts['tools_list_refused']}); "
                         "the caller got an error instead.")
    return lines


EXPORT_COLUMNS = ["seq", "ts", "instance", "type", "request_id", "decision", "status", "reason", "stage", "rule",
                  "subject", "tenant", "client", "issuer", "credential", "method", "host", "path", "protocol",
                  "kind", "name", "model", "route", "forwarded", "input_tokens", "output_tokens", "redactions",
                  "approval", "limits", "body_hmac", "forwarded_body_hmac"]


def _json(value: Any) -> str:
    return "" if value in (None, {}, []) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def export_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        if r.get("type") not in ("decision", "outcome"):
            continue
        facts = _d(r.get("facts"))
        p, a, u = _d(r.get("principal")), _d(r.get("action")), _d(facts.get("usage"))
        redaction = _d(facts.get("redaction"))
        approval = facts.get("approval_granted") or redaction.get("approval")
        decision = r.get("decision")
        rows.append({"seq": r.get("seq"), "ts": format_time(r.get("time_ms")), "instance": r.get("instance"),
                     "type": r.get("type"), "request_id": r.get("request_id"), "decision": decision,
                     "status": r.get("status"), "reason": r.get("reason"),
                     "stage": deciding_stage(str(r.get("reason"))) if decision in ("deny", "answer") else "",
                     "rule": facts.get("rule"), "subject": p.get("subject"), "tenant": p.get("tenant"),
                     "client": p.get("client"), "issuer": p.get("issuer"), "credential": p.get("credential"),
                     "method": r.get("method"), "host": r.get("host"), "path": r.get("path"),
                     "protocol": a.get("protocol"), "kind": a.get("kind"), "name": a.get("name"),
                     "model": facts.get("model") or a.get("model"), "route": facts.get("route"),
                     "forwarded": {"allow": "yes", "deny": "no", "answer": "no"}.get(str(decision), ""),
                     "input_tokens": u.get("input_tokens"), "output_tokens": u.get("output_tokens"),
                     "redactions": _json({k: v for k, v in redaction.items() if k != "approval"}),
                     "approval": _json(approval), "limits": _json(facts.get("limits")),
                     "body_hmac": r.get("body_hmac"), "forwarded_body_hmac": r.get("forwarded_body_hmac")})
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


def _verify(args: argparse.Namespace) -> int:
    from authz.audit.heads import load_heads
    try:
        keys = [k for path in args.public_key for k in load_public_keys(path)]
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        print(f"authz audit verify: cannot read the public key: {exc}", file=sys.stderr)
        return 1
    try:
        heads = load_heads(args.head) if args.head else None
    except (OSError, ValueError) as exc:
        print(f"authz audit verify: cannot read the head: {exc}", file=sys.stderr)
        return 1
    if args.head and not heads:
        print(f"authz audit verify: no signed checkpoint in {', '.join(args.head)}", file=sys.stderr)
        return 1
    report = verify(args.paths, keys, heads=heads)
    print(report.render())
    return report.status


def _trim(args: argparse.Namespace) -> int:
    from authz.audit.log import load_signing_key
    from authz.audit.trim import parse_when, trim
    try:
        before = parse_when(args.before)
        key = load_signing_key(args.signing_key)
        record = trim(Path(args.directory), before, key)
    except (OSError, ValueError) as exc:
        print(f"authz audit trim: {exc}", file=sys.stderr)
        return 1
    if record is None:
        print("nothing to trim: no whole file (other than the newest) is older than --before")
        return 0
    removed = record["removed"]
    print(f"removed {len(removed)} file(s), seq {removed[0]['first_seq']}..{removed[-1]['last_seq']}; the chain now "
          f"starts at seq {record['next_seq']} (signed trim record written)")
    return 0


def _digest(args: argparse.Namespace) -> int:
    from authz.audit.digests import body_digest, load_digest_key
    try:
        data = sys.stdin.buffer.read() if args.body == "-" else Path(args.body).read_bytes()
        key = load_digest_key(args.key_file)  # a PEM signing key: the key derived from it
    except (OSError, ValueError) as exc:
        print(f"authz audit digest: {exc}", file=sys.stderr)
        return 1
    print(body_digest(key, data))
    return 0


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="authz audit", description="Verify, explain and export audit logs offline.",
                                **exit_codes("0  success", "1  failure (see each command's --help)",
                                             "2  verify: intact but not closed; or the command line is wrong"))
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check canonical bytes, chain, signatures, counts, both ends, order and "
                       "truncation",
                       description="Check each line's canonical bytes, the hash chain, the checkpoint signatures "
                                   "and counts, both ends of every chain, gaps, order and truncation.",
                       **exit_codes("0  intact and closed: every segment sealed by its final checkpoint",
                                    "1  tampered (each problem with its file and line), a chain's head or tail "
                                    "missing, unsigned, or a key cannot be read",
                                    "2  intact up to the last checkpoint, but not closed: records not sealed yet "
                                    "(a running sidecar's newest ones, or a crash's or truncation's), or a "
                                    "segment still open; also a wrong command line"))
    v.add_argument("paths", nargs="+", help="audit files or directories (a directory's head.json, the newest "
                                            "signed record the sidecar synced, is checked too)")
    v.add_argument("--public-key", required=True, action="append",
                   help="Ed25519 public key: PEM, a JWK or a JWKS (every Ed25519 key in it); repeat it "
                        "for each key the sidecars signed with when the audit key was rotated")
    v.add_argument("--head", action="append", default=[],
                   help="the newest published checkpoint: a file (saved GET /audit/head, decision-log lines, "
                        "a Redis Stream export) or the sidecar's http(s)://.../audit/head URL; the chain must "
                        "reach it (repeatable). Without it, newest files deleted together with head.json "
                        "rolled back to a remaining checkpoint go unseen")
    e = sub.add_parser("explain", help="tell one request's story", description="Tell one request's story.",
                       **exit_codes("0  told", "1  no record names the request", USAGE_ERROR))
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
    t = sub.add_parser("trim", help="retention: remove whole files older than --before, leaving a signed "
                       "trim record that verify accepts", **exit_codes("0  trimmed (or nothing to trim)",
                                                                       "1  a file or key cannot be used",
                                                                       USAGE_ERROR))
    t.add_argument("directory", help="one instance's directory (audit.directory/<instance_id>)")
    t.add_argument("--before", required=True, help="ISO 8601 date/time (UTC unless stated), or 30d / 12h ago")
    t.add_argument("--signing-key", required=True, help="the audit signing key (audit.signing_key_file)")
    d = sub.add_parser("digest", help="the keyed digest (body_hmac) of a body, to match it with a record",
                       **exit_codes("0  printed", "1  the body or key cannot be read", USAGE_ERROR))
    d.add_argument("body", help="file holding the body as sent ('-': stdin)")
    d.add_argument("--key-file", required=True,
                   help="audit.digest_key_file, or the audit signing key when that is unset")
    args = p.parse_args(list(argv))
    try:
        return _run(args)
    except OSError as exc:  # a path that is not there, not readable, not writable
        print(f"authz audit {args.cmd}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "verify":
        return _verify(args)
    if args.cmd == "explain":
        story = explain(args.request_id, _records(args.paths))
        if story is None:
            print(f"no audit record for request {args.request_id}", file=sys.stderr)
            return 1
        print(story)
        return 0
    if args.cmd == "trim":
        return _trim(args)
    if args.cmd == "digest":
        return _digest(args)
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
