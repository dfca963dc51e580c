"""``authz audit verify``: check audit files offline, with only the public key.

Per instance, files are read in chain order and every line is checked: it parses, its hash is
the hash of its content, it names the previous record's hash, its ``seq`` follows, and every
checkpoint's Ed25519 signature is good. Edited fields, deleted, inserted, swapped or reordered
records and replaced signatures all break one of these, and the report names file:line and seq.

What a crash leaves is told apart from tampering: records after a segment's last checkpoint are
*unsealed* (the segment was not closed), and a last line cut in half is reported as such.
Exit status: 0 intact and closed, 1 tampering or unreadable, 2 intact but not closed: records after
the last checkpoint, or a segment without its final checkpoint (a running sidecar's files look
like this; so do a crash's and a truncation's).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from authz.audit.log import FILE_PREFIX, GENESIS, checkpoint_message, key_id, record_hash


@dataclasses.dataclass
class Report:
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    records: int = 0
    sealed_through: dict[str, int] = dataclasses.field(default_factory=dict)
    unsealed: list[str] = dataclasses.field(default_factory=list)
    # Segments with every record sealed but no closing checkpoint: a running sidecar, or a file
    # cut exactly after a checkpoint (the two look the same, so both keep exit status 2).
    still_open: list[str] = dataclasses.field(default_factory=list)

    @property
    def status(self) -> int:
        if self.problems:
            return 1
        return 2 if self.unsealed or self.still_open else 0

    def render(self) -> str:
        lines = []
        if self.problems:
            lines.append(f"TAMPERED: {len(self.problems)} problem(s)")
            lines += [f"  - {p}" for p in self.problems]
        for instance, seq in self.sealed_through.items():
            lines.append(f"instance {instance}: chain intact and signed through seq {seq}")
        if self.unsealed:
            lines.append("UNSEALED (after the last checkpoint: while a sidecar still writes these files its newest "
                         "records are simply not sealed yet, and its next checkpoint seals them; otherwise a crash "
                         "or a truncation):")
            lines += [f"  - {u}" for u in self.unsealed]
        if self.still_open:
            lines.append("OPEN (every record sealed, but the segment has no final checkpoint: a sidecar still "
                         "running, or a file truncated right after a checkpoint):")
            lines += [f"  - {u}" for u in self.still_open]
        lines += self.notes
        lines.append(f"{self.records} records checked; "
                     + ("FAIL" if self.problems else "OK" if not (self.unsealed or self.still_open)
                        else "OK up to the last checkpoint"))
        return "\n".join(lines)


def load_public_keys(path: str | Path) -> list[ed25519.Ed25519PublicKey]:
    """The Ed25519 keys in a PEM file (one) or a JWK / JWKS file (every Ed25519 key in it, as
    published on ``/.well-known/jwks.json``: the current audit key and the ones it replaced)."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"{"):
        doc = json.loads(data)
        jwks = doc["keys"] if "keys" in doc else [doc]
        keys = [ed25519.Ed25519PublicKey.from_public_bytes(
                    base64.urlsafe_b64decode(k["x"] + "=" * (-len(k["x"]) % 4)))
                for k in jwks if isinstance(k, dict) and k.get("crv") == "Ed25519"]
        if not keys:
            raise ValueError(f"{path} holds no Ed25519 key")
        return keys
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return [key]


def load_public_key(path: str | Path) -> ed25519.Ed25519PublicKey:
    return load_public_keys(path)[0]


def audit_files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.rglob(f"{FILE_PREFIX}*.jsonl"))
        else:
            out.append(p)
    return out


Row = tuple[Path, int, dict[str, Any] | None, bytes]


def read_records(files: list[Path], report: Report | None = None) -> list[Row]:
    rows = []
    for f in files:
        data = f.read_bytes()
        lines = data.split(b"\n")
        complete = data.endswith(b"\n")
        for i, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                rows.append((f, i, json.loads(line), line))
            except ValueError:
                partial = i == len(lines) and not complete
                if report is not None and partial:
                    report.unsealed.append(f"{f}:{i}: last line is cut off ({len(line)} bytes): a write "
                                           "interrupted by a crash")
                    continue
                rows.append((f, i, None, line))
    return rows


def verify(paths: Iterable[str | Path],
           public_key: ed25519.Ed25519PublicKey | Iterable[ed25519.Ed25519PublicKey]) -> Report:
    """Check every chain under ``paths``. Each checkpoint is checked with the given key whose id
    matches its ``kid``: pass every key the sidecars signed with, old and new, when they rotated."""
    report = Report()
    given = [public_key] if isinstance(public_key, ed25519.Ed25519PublicKey) else list(public_key)
    keys = {key_id(k): k for k in given}
    by_instance: dict[str, list[Path]] = {}
    for f in audit_files(paths):
        by_instance.setdefault(f.parent.name, []).append(f)
    if not by_instance:
        report.problems.append("no audit files found")
    for instance, files in by_instance.items():
        _verify_chain(instance, sorted(files), keys, report)
    return report


def _verify_chain(instance: str, files: list[Path], keys: dict[str, ed25519.Ed25519PublicKey],
                  report: Report) -> None:
    prev, expected_seq = GENESIS, None
    last_sealed_seq, since_seal = 0, []
    segment_open: str | None = None
    where = ""
    for f, line_no, rec, _ in read_records(files, report):
        where = f"{f}:{line_no}"
        if rec is None:
            report.problems.append(f"{where}: not a JSON record (edited or corrupted)")
            continue
        report.records += 1
        seq = rec.get("seq")
        if expected_seq is None:
            expected_seq = seq if isinstance(seq, int) else 1
            if rec.get("prev") != GENESIS and seq != 1:
                report.notes.append(f"{where}: gap: the files start at seq {seq}, not at the beginning of the chain "
                                    f"(seq 1..{seq - 1 if isinstance(seq, int) else '?'} are missing: rotated "
                                    "away, or trimmed from a Redis Stream by MAXLEN)")
                prev = rec.get("prev")
        if rec.get("hash") != record_hash(rec):
            report.problems.append(f"{where} (seq {seq}): content does not match its hash (edited)")
        if rec.get("prev") != prev:
            report.problems.append(f"{where} (seq {seq}): does not follow the previous record "
                                   "(a record was deleted, inserted or moved before it)")
        if seq != expected_seq:
            gap = isinstance(seq, int) and seq > expected_seq
            report.problems.append(f"{where}: seq {seq} where {expected_seq} was expected "
                                   f"({'gap: records missing' if gap else 'out of order'})")
        if rec.get("type") == "segment":
            if segment_open is not None and since_seal:
                report.unsealed.append(f"segment {segment_open}: {len(since_seal)} record(s) after its last checkpoint "
                                       f"(seq {since_seal[0]}..{since_seal[-1]}) were never sealed; it was not "
                                       "closed (crash)")
            segment_open, since_seal = rec.get("segment"), []
        elif rec.get("type") == "checkpoint":
            kid = rec.get("kid")
            key = keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                report.problems.append(f"{where} (seq {seq}): checkpoint signed with key {kid}, which is not "
                                       f"among the keys given ({', '.join(sorted(keys))}): pass that public key too "
                                       "if it was yours, else the checkpoint is forged")
            else:
                try:
                    key.verify(base64.b64decode(rec.get("sig", "")), checkpoint_message(rec))
                    last_sealed_seq, since_seal = seq, []
                    if rec.get("final"):
                        segment_open = None
                except (InvalidSignature, ValueError, TypeError):
                    report.problems.append(f"{where} (seq {seq}): checkpoint signature is not valid for key {kid}")
        else:
            since_seal.append(seq)
        prev = rec.get("hash")
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
    if segment_open is not None and since_seal:
        report.unsealed.append(f"instance {instance}, segment {segment_open}: the newest {len(since_seal)} record(s) "
                               f"(seq {since_seal[0]}..{since_seal[-1]}) are not sealed yet, nothing after the last "
                               f"checkpoint (seq {last_sealed_seq}) signs them; the chain ends at {where} and the "
                               "segment has no final checkpoint. If the sidecar is still running, run verify again "
                               "after its next checkpoint; if it stopped, it crashed or the file was truncated")
    elif segment_open is not None:
        report.still_open.append(f"instance {instance}, segment {segment_open}: every record is sealed (through "
                                 f"seq {last_sealed_seq}); the chain ends at {where}")
    report.sealed_through[instance] = last_sealed_seq
