"""``bench.inprocess`` measures what it names: each scenario's own pipeline answers its own
request (the audit scenarios write one decision record per Check), and the report compares a
scenario with its target's baseline."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from bench import inprocess
from bench.scenarios import SCENARIOS

KNOWN = {s.name: s for s in SCENARIOS}


def decisions(directory: Path) -> list[dict]:
    return [r for path in sorted(directory.rglob("audit-*.jsonl"))
            for r in map(json.loads, path.read_text().splitlines()) if r["type"] == "decision"]


async def test_each_scenario_answers_its_own_request_through_its_own_pipeline(tmp_path):
    bursts, checks = 2, 12
    collector = gc.get_threshold()
    subjects = await inprocess.measure([KNOWN["policy"], KNOWN["policy+audit-queued"]], bursts=bursts,
                                       checks=checks, concurrency=4, workdir=tmp_path)
    assert gc.get_threshold() == collector and gc.get_freeze_count() == 0  # the test process's, as it was
    assert [(len(s.bursts), len(s.process)) for s in subjects] == [(bursts, bursts), (bursts, bursts)]
    assert all(0 < us <= total for s in subjects for us, total in zip(s.bursts, s.process, strict=True))
    # The probe, the warm-up burst and the measured ones: every Check allowed and recorded.
    records = decisions(tmp_path / "policy-audit-queued")
    assert len(records) == 1 + (1 + bursts) * checks
    assert {(r["decision"], r["path"], r["action"]["name"]) for r in records} == {("allow", "/mcp", "whoami")}
    assert {r["principal"]["subject"] for r in records} == {"oscar"}
    assert decisions(tmp_path / "policy") == []  # no audit in the baseline's config

    lines = inprocess.report(subjects)
    assert lines[2].startswith("policy ") and "over" not in lines[2]
    assert lines[3].startswith("policy+audit-queued ") and " over policy (" in lines[3]


def test_only_scenarios_that_end_at_check_are_taken(capsys):
    whole_path = next(s.name for s in SCENARIOS if s.upstream is not None and s.backend == "authz")
    with pytest.raises(SystemExit) as exc:
        inprocess.main(["--scenario", whole_path])
    assert exc.value.code == 2
    assert "whole-path scenario" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inprocess.main(["--scenario", "floor"])  # the do-nothing servicer: no pipeline
