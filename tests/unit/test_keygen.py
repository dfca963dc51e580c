"""`authz keygen`: both keys the manifests mount, private ones 0600, never an overwrite, and a
kubectl line a shell runs as printed."""

from __future__ import annotations

import shlex
import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from authz.cli import keygen, main


def test_writes_both_keys_and_prints_the_secret_command(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keygen", "--out", str(out), "--namespace", "mcp"]) == 0
    assertion = serialization.load_pem_private_key((out / keygen.ASSERTION_KEY).read_bytes(), None)
    audit = serialization.load_pem_private_key((out / keygen.AUDIT_KEY).read_bytes(), None)
    assert isinstance(assertion, ec.EllipticCurvePrivateKey) and assertion.curve.name == "secp256r1"  # ES256
    assert isinstance(audit, ed25519.Ed25519PrivateKey)
    public = serialization.load_pem_public_key((out / keygen.AUDIT_PUBLIC_KEY).read_bytes())
    assert public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == \
        audit.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for name in (keygen.ASSERTION_KEY, keygen.AUDIT_KEY):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    printed = capsys.readouterr().out.strip()
    argv = shlex.split(printed)
    assert argv[:5] == ["kubectl", "create", "secret", "generic", "authz-signing-keys"]
    assert argv[5:7] == ["--namespace", "mcp"]
    assert argv[7:] == [f"--from-file={keygen.ASSERTION_KEY}={out / keygen.ASSERTION_KEY}",
                        f"--from-file={keygen.AUDIT_KEY}={out / keygen.AUDIT_KEY}"]


def test_never_overwrites_and_writes_nothing_when_one_file_exists(tmp_path, capsys):
    (tmp_path / keygen.AUDIT_KEY).write_text("the key a cluster already uses")
    assert main(["keygen", "--out", str(tmp_path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / keygen.AUDIT_KEY).read_text() == "the key a cluster already uses"
    assert not (tmp_path / keygen.ASSERTION_KEY).exists()


def test_paths_with_spaces_are_quoted(tmp_path):
    paths = keygen.generate(tmp_path / "my keys")
    argv = shlex.split(keygen.secret_command(paths))
    assert f"--from-file={keygen.ASSERTION_KEY}={tmp_path / 'my keys' / keygen.ASSERTION_KEY}" in argv
