"""``authz keygen``: every private key a deployment mounts, and the command that stores them.

The Kubernetes manifests mount one Secret, ``authz-signing-keys``, holding two PEM files:

- ``assertion-signing-key.pem``: ES256 (P-256), signs the identity assertions handed to the app
  (``identity.assertion.key_files``); its public half is published at ``/.well-known/jwks.json``.
- ``audit-signing-key.pem``: Ed25519, signs audit checkpoints (``audit.signing_key_file``); keep
  ``audit-public-key.pem`` (written beside it) wherever audit logs are verified.

Private keys are written with mode 0600 and never overwritten: an existing file is an error, so a
second run cannot silently replace keys a cluster already uses.

Exit codes: 0 written; 1 a file already exists or cannot be written.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

ASSERTION_KEY = "assertion-signing-key.pem"
AUDIT_KEY = "audit-signing-key.pem"
AUDIT_PUBLIC_KEY = "audit-public-key.pem"
SECRET_NAME = "authz-signing-keys"

_PEM = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate(out: Path) -> dict[str, Path]:
    """Write both key pairs' files into ``out``; raise ``FileExistsError`` before writing any
    file if one of them is already there."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in (ASSERTION_KEY, AUDIT_KEY, AUDIT_PUBLIC_KEY)}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)}")
    audit = ed25519.Ed25519PrivateKey.generate()
    _write_new(paths[ASSERTION_KEY], ec.generate_private_key(ec.SECP256R1()).private_bytes(*_PEM), 0o600)
    _write_new(paths[AUDIT_KEY], audit.private_bytes(*_PEM), 0o600)
    _write_new(paths[AUDIT_PUBLIC_KEY], audit.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return paths


def secret_command(paths: dict[str, Path], *, name: str = SECRET_NAME, namespace: str = "") -> str:
    """The ``kubectl create secret`` line that stores the two private keys under the names the
    Deployment mounts."""
    argv = ["kubectl", "create", "secret", "generic", name]
    if namespace:
        argv += ["--namespace", namespace]
    argv += [f"--from-file={key}={paths[key]}" for key in (ASSERTION_KEY, AUDIT_KEY)]
    return shlex.join(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="authz keygen", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write every signing key the deployment mounts (an ES256 key for identity "
                    "assertions, an Ed25519 key pair for audit checkpoints) and print the kubectl "
                    "command that stores the private keys in the authz-signing-keys Secret.",
        epilog="exit codes:\n  0  keys written\n  1  a key file already exists or cannot be written")
    p.add_argument("--out", required=True, help="directory for the PEM files (created if missing)")
    p.add_argument("--namespace", "-n", default="", help="namespace to put in the printed kubectl command")
    p.add_argument("--secret-name", default=SECRET_NAME, help=f"Secret name in the printed command "
                                                              f"(default {SECRET_NAME})")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        paths = generate(Path(args.out))
    except OSError as exc:
        print(f"authz keygen: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {paths[ASSERTION_KEY]} (ES256, identity assertions)", file=sys.stderr)
    print(f"wrote {paths[AUDIT_KEY]} (Ed25519, audit checkpoints) and {paths[AUDIT_PUBLIC_KEY]} "
          "(keep it for `authz audit verify --public-key`)", file=sys.stderr)
    print(secret_command(paths, name=args.secret_name, namespace=args.namespace))
    return 0
