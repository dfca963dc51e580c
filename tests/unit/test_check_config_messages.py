"""check-config as a person reads it: warnings for valid configs that protect nothing, and a bad
pattern reported as one readable line (not RE2's C++ log lines or a bytes repr). Run as a
subprocess: RE2 logs to the process's stderr directly, below Python."""

from __future__ import annotations

import subprocess
import sys

from authz.dev.stack import ROOT


def check_config(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "authz", "check-config", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_no_issuers_and_no_rules_are_warned_about(tmp_path):
    path = tmp_path / "authz.yaml"
    path.write_text("version: 1\n")
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if ": warning: " in line]
    assert len(warnings) == 2, result.stderr
    assert "identity: no issuers and no API keys" in warnings[0] and "anonymous" in warnings[0]
    assert "policy: no rules" in warnings[1] and "deny" in warnings[1]


def test_the_reference_configs_draw_no_warning():
    for path in (ROOT / "deploy/authz/authz.yaml",):
        result = check_config(path)
        assert result.returncode == 0 and ": warning: " not in result.stderr, result.stderr


def test_a_pattern_re2_refuses_is_one_readable_line(tmp_path):
    path = tmp_path / "authz.yaml"
    path.write_text('version: 1\nredaction:\n  enabled: true\n  hmac_key: k\n'
                    '  patterns:\n    - {name: emp, regex: "(?<=a)b"}\n')
    result = check_config(path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"{path}: 1 problem(s)",
                     "  redaction.patterns[0].regex: not a pattern RE2 accepts (linear-time engine): "
                     "invalid perl operator: (?<="], result.stderr
