"""Every Envoy config in the repo passes `envoy --mode validate` (a broken one fails the test)."""

import subprocess
from pathlib import Path

import pytest

from authz.devstack import ROOT, Ports, envoy_binary, render_envoy_config

CONFIGS = sorted(p for p in (ROOT / "deploy").rglob("*.yaml") if p.name.startswith("envoy"))


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                          capture_output=True, text=True, timeout=120)


def test_the_reference_config_exists():
    assert ROOT / "deploy/envoy/envoy.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_envoy_config_is_valid(path: Path):
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_config_is_valid(tmp_path):
    out = tmp_path / "envoy.yaml"
    out.write_text(render_envoy_config(Ports.free()))
    result = validate(out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_config_is_refused(tmp_path):
    broken = tmp_path / "envoy.yaml"
    broken.write_text((ROOT / "deploy/envoy/envoy.yaml").read_text().replace("failure_mode_allow: false",
                                                                           "failure_mode_allowed: false", 1))
    assert validate(broken).returncode != 0
