"""``authz audit verify``: check audit files offline, with only the public key.

Records are grouped by the instance they name (a file moved to another directory still belongs
to its chain, and is reported as misplaced). Per chain, files are read in chain order and every
line is checked: its bytes are the canonical encoding of what it parses to (no duplicate key,
``NaN`` or alternative escape), its hash is the hash of its content, it names the previous
record's hash, its ``seq`` follows, every segment opens with a signed record naming its first
seq and what it continues, and every checkpoint's Ed25519 signature and counts are good. Edited
fields, deleted, inserted, swapped or reordered records and replaced signatures all break one
of these, and the report names file:line and seq.

The ends of a chain: it must start at seq 1 from the genesis, unless a signed trim record
(``authz audit trim``) says where it now starts; it must reach the checkpoint named in its
directory's head file (``head.json``, replaced after every checkpoint; required once the chain
shows one was written); and with ``--head`` (the checkpoint the sidecar published outside the
directory, ``authz.audit.heads``) it must reach that checkpoint too. Only ``--head`` sees the
newest files deleted together with the head file rolled back to a checkpoint that remains.

What a crash leaves is told apart from tampering: records after a segment's last checkpoint are
*unsealed* (the segment was not closed), and a last line cut in half is reported as such.
Exit status: 0 intact and closed, 1 tampering, a missing end, unsigned or unreadable, 2 intact
but not closed: records after the last checkpoint, or a segment without its final checkpoint (a
running sidecar's files look like this; so do a crash's and a truncation's).
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

from authz.audit.lines import DamagedLine, check_line, parse_line
from authz.audit.log import FILE_PREFIX, GENESIS, HEAD_FILE, checkpoint_message, key_id
from authz.audit.trim import load_trims


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
        lines: list[str] = []
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


# (file, line number, the record or None when the line is damaged, the line's bytes or, for a
# damaged line, why it is)
Row = tuple[Path, int, dict[str, Any] | None, bytes]


def read_records(files: list[Path], report: Report | None = None,
                 damaged: list[str] | None = None) -> list[Row]:
    """Every line of ``files``: (file, line number, record or None when damaged, bytes). A
    damaged line is also described in ``damaged``; a last line cut off by a crash goes to the
    report's unsealed tail instead of the rows."""
    rows: list[Row] = []
    for f in files:
        data = f.read_bytes()
        lines = data.split(b"\n")
        complete = data.endswith(b"\n")
        for i, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                rows.append((f, i, parse_line(line), line))
            except DamagedLine as exc:
                partial = i == len(lines) and not complete
                if report is not None and partial:
                    report.unsealed.append(f"{f}:{i}: last line is cut off ({len(line)} bytes): a write "
                                           "interrupted by a crash")
                    continue
                if damaged is not None:
                    damaged.append(f"{f}:{i}: damaged line ({exc})")
                rows.append((f, i, None, str(exc).encode()))
    return rows


def _sign_ok(rec: dict[str, Any], keys: dict[str, ed25519.Ed25519PublicKey]) -> str | None:
    """None when ``rec`` carries a valid signature by one of ``keys``, else why not."""
    kid = rec.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        return (f"signed with key {kid}, which is not among the keys given ({', '.join(sorted(keys))}): pass "
                "that public key too if it was yours, else it is forged")
    sig = rec.get("sig")
    try:
        key.verify(base64.b64decode(sig if isinstance(sig, str) else "", validate=True), checkpoint_message(rec))
    except (InvalidSignature, ValueError, TypeError):
        return f"signature is not valid for key {kid}"
    return None


def verify(paths: Iterable[str | Path],
           public_key: ed25519.Ed25519PublicKey | Iterable[ed25519.Ed25519PublicKey],
           *, heads: dict[str, dict[str, Any]] | None = None) -> Report:
    """Check every chain under ``paths``. Each signature is checked with the given key whose id
    matches its ``kid``: pass every key the sidecars signed with, old and new, when they rotated.
    ``heads``: the newest published checkpoint per instance (``authz.audit.heads``)."""
    report = Report()
    given = [public_key] if isinstance(public_key, ed25519.Ed25519PublicKey) else list(public_key)
    keys = {key_id(k): k for k in given}
    paths = [Path(p) for p in paths]
    files = audit_files(paths)
    chains: dict[str, list[Row]] = {}
    misplaced: set[Path] = set()
    for row in read_records(sorted(files, key=lambda f: (f.name, str(f))), report):
        f, _, rec, _ = row
        instance = rec.get("instance") if rec is not None else None
        if not isinstance(instance, str):
            instance = f.parent.name
        elif instance != f.parent.name and f not in misplaced:
            misplaced.add(f)
            report.problems.append(f"{f}: holds records of instance {instance} in the directory of instance "
                                   f"{f.parent.name} (files moved between instances)")
        chains.setdefault(instance, []).append(row)
    if not chains:
        report.problems.append("no audit files found")
    trims = load_trims([Path(p) for p in paths])
    dirs = [Path(p) for p in paths if Path(p).is_dir()]
    head_files = _head_files(dirs)
    for instance, rows in chains.items():
        chain = _Chain(instance, keys, report, trims, (heads or {}).get(instance))
        # The head file is looked for (and expected) only where a directory was given.
        home = rows[0][0].parent
        if any(d == home or d in home.parents for d in dirs):
            chain.head_file = head_files.get(home, (home / HEAD_FILE, None))
        chain.check(rows)
    for instance, head in sorted((heads or {}).items()):
        if instance not in chains:
            report.problems.append(f"instance {instance}: the published head names seq {head.get('seq')}, but "
                                   "there are no audit files of this instance (deleted, or not given)")
    return report


def _head_files(dirs: list[Path]) -> dict[Path, tuple[Path, dict[str, Any] | str]]:
    """Per instance directory under ``dirs``: its head file and the checkpoint it holds, or why
    it holds none."""
    found: dict[Path, tuple[Path, dict[str, Any] | str]] = {}
    for d in dirs:
        for path in d.rglob(HEAD_FILE):
            try:
                record = json.loads(path.read_bytes())
            except (OSError, ValueError) as exc:
                found[path.parent] = (path, f"unreadable ({exc})")
                continue
            if not isinstance(record, dict) or record.get("type") not in ("checkpoint", "segment"):
                found[path.parent] = (path, "holds no checkpoint or segment record")
            else:
                found[path.parent] = (path, record)
    return found


class _Chain:
    """One instance's chain, checked record by record."""

    def __init__(self, instance: str, keys: dict[str, ed25519.Ed25519PublicKey], report: Report,
                 trims: list[tuple[Path, dict[str, Any]]], head: dict[str, Any] | None) -> None:
        self.instance, self.keys, self.report, self.trims, self.head = instance, keys, report, trims, head
        self.prev: Any = GENESIS
        self.expected_seq: int | None = None
        self.last_sealed_seq = 0
        self.since_seal: list[Any] = []
        self.segment_open: str | None = None
        self.segment_count: int | None = None  # records of the open segment so far (None: its start was trimmed)
        self.signed = False
        self.signed_hashes: dict[Any, Any] = {}  # seq -> hash of each signed record (a head is one)
        self.where = ""
        self.last_seq = 0
        # (path, its checkpoint or why none, or None: absent) when the chain was read from a
        # directory; None when only files were given.
        self.head_file: tuple[Path, dict[str, Any] | str | None] | None = None
        self.keeps_head_file = False  # the last segment says its writer keeps one
        self.since_segment = 0  # records after the last segment's opening one (synced, with its head file, first)

    def problem(self, text: str) -> None:
        self.report.problems.append(text)

    def check(self, rows: list[Row]) -> None:
        for f, line_no, rec, line in rows:
            self.where = f"{f}:{line_no}"
            if rec is None:
                self.problem(f"{self.where}: not a well-formed record: {line.decode()} (edited or corrupted)")
                if self.segment_count is not None:
                    self.segment_count += 1
                if self.expected_seq is not None:
                    self.expected_seq += 1  # it took a place in the chain; what follows is checked on
                continue
            self.record(rec, line)
        self.end()

    def record(self, rec: dict[str, Any], line: bytes) -> None:
        self.report.records += 1
        where, seq = self.where, rec.get("seq")
        if self.expected_seq is None:
            self.start(rec)
        not_canonical, content_hash = check_line(line, rec)
        if not_canonical:
            self.problem(f"{where} (seq {seq}): {not_canonical}")
        elif rec.get("hash") != content_hash:
            self.problem(f"{where} (seq {seq}): content does not match its hash (edited)")
        if rec.get("prev") != self.prev:
            self.problem(f"{where} (seq {seq}): does not follow the previous record "
                         "(a record was deleted, inserted or moved before it)")
        expected = self.expected_seq if self.expected_seq is not None else 1
        if seq != expected:
            gap = isinstance(seq, int) and seq > expected
            self.problem(f"{where}: seq {seq} where {expected} was expected "
                         f"({'gap: records missing' if gap else 'out of order'})")
        if self.segment_count is not None:
            self.segment_count += 1
        kind = rec.get("type")
        self.since_segment += 1
        if kind == "segment":
            self.segment(rec)
        elif kind == "checkpoint":
            self.checkpoint(rec)
        else:
            self.since_seal.append(seq)
        if kind in ("checkpoint", "segment"):
            self.signed_hashes[seq] = rec.get("hash")
        self.prev = rec.get("hash")
        self.expected_seq = (seq if isinstance(seq, int) else expected) + 1
        if isinstance(seq, int):
            self.last_seq = seq

    def start(self, rec: dict[str, Any]) -> None:
        """The chain's first record: the genesis, or where a signed trim record says it starts."""
        raw_seq = rec.get("seq")
        seq = raw_seq if isinstance(raw_seq, int) else 1
        self.expected_seq = seq
        if seq == 1 and rec.get("prev") == GENESIS:
            return
        self.prev = rec.get("prev")
        for path, trim in self.trims:
            if (trim.get("instance"), trim.get("next_seq"), trim.get("next_prev")) == (self.instance, seq, self.prev):
                why = _sign_ok(trim, self.keys)
                if why is None:
                    # The first segment kept may have lost its opening record: its records still
                    # name it, so an unsealed tail of it is reported like any other.
                    self.segment_open = rec.get("segment") if isinstance(rec.get("segment"), str) else "?"
                    self.report.notes.append(f"instance {self.instance}: seq 1..{seq - 1} were removed by the "
                                             f"retention trim recorded in {path} (signed)")
                    return
                self.problem(f"{path}: trim record {why}")
                return
        self.problem(f"{self.where}: the head of the chain of instance {self.instance} is missing: it starts at "
                     f"seq {seq}, not at seq 1 from the genesis (seq 1..{seq - 1 if isinstance(seq, int) else '?'} "
                     f"deleted, starting with file {FILE_PREFIX}{1:012d}.jsonl, or trimmed from a Redis Stream by "
                     "MAXLEN), and no signed trim record (authz audit trim) explains it")

    def segment(self, rec: dict[str, Any]) -> None:
        where, seq = self.where, rec.get("seq")
        if self.segment_open is not None and self.since_seal:
            self.report.unsealed.append(
                f"segment {self.segment_open}: {len(self.since_seal)} record(s) after its last checkpoint "
                f"(seq {self.since_seal[0]}..{self.since_seal[-1]}) were never sealed; it was not closed (crash)")
        self.segment_open, self.since_seal, self.segment_count = rec.get("segment"), [], 1
        self.keeps_head_file = rec.get("head_file") == HEAD_FILE
        self.since_segment = 0
        why = _sign_ok(rec, self.keys)
        if why is not None:
            self.problem(f"{where} (seq {seq}): the segment's opening record is not signed: {why}")
        elif rec.get("first_seq") != seq or rec.get("previous_hash") != rec.get("prev"):
            self.problem(f"{where} (seq {seq}): the segment's opening record names first seq "
                         f"{rec.get('first_seq')} and previous hash {rec.get('previous_hash')}, not its own")
        else:
            self.signed = True

    def checkpoint(self, rec: dict[str, Any]) -> None:
        where, seq = self.where, rec.get("seq")
        why = _sign_ok(rec, self.keys)
        if why is not None:
            self.problem(f"{where} (seq {seq}): checkpoint {why}")
            return
        self.signed = True
        if rec.get("total") != seq:
            self.problem(f"{where} (seq {seq}): checkpoint counts {rec.get('total')} records in the chain, "
                         f"its seq says {seq}")
        if self.segment_count is not None and rec.get("segment_records") != self.segment_count:
            self.problem(f"{where} (seq {seq}): checkpoint counts {rec.get('segment_records')} records in its "
                         f"segment, the files hold {self.segment_count} (records removed or added)")
        self.last_sealed_seq, self.since_seal = seq if isinstance(seq, int) else 0, []
        if rec.get("final"):
            self.segment_open = None

    def end(self) -> None:
        report, where = self.report, self.where
        if self.segment_open is not None and self.since_seal:
            report.unsealed.append(
                f"instance {self.instance}, segment {self.segment_open}: the newest {len(self.since_seal)} record(s) "
                f"(seq {self.since_seal[0]}..{self.since_seal[-1]}) are not sealed yet, nothing after the last "
                f"checkpoint (seq {self.last_sealed_seq}) signs them; the chain ends at {where} and the segment has "
                "no final checkpoint. If the sidecar is still running, run verify again after its next checkpoint; "
                "if it stopped, it crashed or the file was truncated")
        elif self.segment_open is not None:
            report.still_open.append(f"instance {self.instance}, segment {self.segment_open}: every record is sealed "
                                     f"(through seq {self.last_sealed_seq}); the chain ends at {where}")
        if self.expected_seq is not None and not self.signed:
            self.problem(f"instance {self.instance}: unsigned: no record of this chain carries a valid signature by "
                         "the keys given (a chain rewritten without the key, or the wrong public key)")
        if self.head is not None:
            self.check_head(self.head)
        if self.head_file is not None:
            self.check_head_file(*self.head_file)
        report.sealed_through[self.instance] = self.last_sealed_seq

    def check_head_file(self, path: Path, head: dict[str, Any] | str | None) -> None:
        """The directory's head file names the newest signed record synced (a segment's opening
        record, a checkpoint): the chain must reach it. A writer that keeps one writes it after
        its segment's opening record and before anything else, so it may be absent only while
        that record is the chain's last (or when the writer keeps none: an older sidecar)."""
        if head is None:
            if self.keeps_head_file and self.since_segment:
                self.problem(f"instance {self.instance}: the head file {path} is missing: the writer of the "
                             "last segment keeps one (its opening record says so) and wrote it before the "
                             "records that follow, so it was deleted (with the newest files, if any were)")
            return
        if isinstance(head, str):
            self.problem(f"instance {self.instance}: the head file {path} {head} (edited or corrupted)")
            return
        if head.get("instance") != self.instance:
            self.problem(f"instance {self.instance}: the head file {path} names instance {head.get('instance')} "
                         "(files moved between instances)")
            return
        self.check_head(head, source=f"the head file {path}")

    def check_head(self, head: dict[str, Any], *, source: str = "the published head") -> None:
        seq = head.get("seq")
        why = _sign_ok(head, self.keys)
        if why is not None:
            self.problem(f"instance {self.instance}: {source} (seq {seq}) is not trusted: {why}")
        elif isinstance(seq, int) and seq > self.last_seq:
            self.problem(f"instance {self.instance}: the newest records are missing: {source} names "
                         f"seq {seq} (hash {str(head.get('hash'))[:16]}...), the chain on disk ends at seq "
                         f"{self.last_seq} ({self.where}): seq {self.last_seq + 1}..{seq} deleted (the file "
                         f"{FILE_PREFIX}{self.last_seq + 1:012d}.jsonl and any after it) or cut short")
        elif self.signed_hashes.get(seq) != head.get("hash"):
            self.problem(f"instance {self.instance}: the record at seq {seq} is not {source} "
                         "(the chain was rewritten after it was published)")
        else:
            self.report.notes.append(f"instance {self.instance}: the chain reaches {source} (seq {seq})")
