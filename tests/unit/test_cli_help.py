"""Every command's --help: exits 0, prints to stdout, documents every option and the exit codes,
and reads as plain text (no reStructuredText markup)."""

from __future__ import annotations

import re

import pytest

from authz.cli import main

COMMANDS = [
    [], ["serve"], ["check-config"], ["dev-token"], ["explain"], ["limits"], ["limits", "show"], ["audit"],
    ["audit", "verify"], ["audit", "explain"], ["audit", "export"], ["audit", "export-stream"], ["audit", "keygen"],
    ["approvals"], ["approvals", "grant"], ["apikeys"], ["apikeys", "add"], ["apikeys", "revoke"],
    ["apikeys", "list"], ["keygen"],
]


def help_of(command: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code in (0, None), f"authz {' '.join(command)} --help exits {exit_.value.code}"
    out, _ = capsys.readouterr()
    return out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "authz")
def test_help_works_and_documents_exit_codes(command, capsys):
    out = help_of(command, capsys)
    assert out.startswith("usage: authz"), out
    assert "exit codes" in out.lower(), f"authz {' '.join(command)} --help says nothing of exit codes:\n{out}"
    assert "``" not in out and ":func:" not in out, out
    # Every option has a help text: argparse prints an option with none as a bare line.
    options = out.split("options:", 1)[1].split("\n\n", 1)[0] if "options:" in out else ""
    entries = re.split(r"\n  (?=-)", "\n" + options)
    bare = [e.strip() for e in entries if e.strip() and "  " not in e.strip() and "\n" not in e.strip()]
    assert not bare, f"options without help in authz {' '.join(command)}: {bare}"
