"""`make bench`'s whole-path scenarios start, are answered as they should be (the runner's probe
checks each answer: the chat completion, the SSE stream's end, the filtered tools/list) and give a
row with per-process CPU: one second of load each, so they cannot rot unnoticed.

wrk comes from Debian's `wrk` package (`make test` installs it when it can, as the bench does);
without it these tests are skipped with a message saying so."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.runner import Settings, run_scenario
from bench.scenarios import PATH, SCENARIOS

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None,
                                reason="wrk is not installed (apt-get install wrk): the bench smoke tests need it")

PATH_SCENARIOS = [s for s in SCENARIOS if s.group == PATH]
SHORT = Settings(duration=1, warmup=0, connections=4)
RESULTS: dict[str, dict[str, Any]] = {}


def test_every_whole_path_scenario_is_in_the_default_run():
    assert {s.name for s in PATH_SCENARIOS} >= {"path-floor", "llm-chat", "llm-chat-sse", "mcp-call", "mcp-list",
                                               "mcp-call-checkonly", "mcp-call-noprocess"}
    assert all(s.default for s in PATH_SCENARIOS)


@pytest.mark.parametrize("sc", PATH_SCENARIOS, ids=lambda s: s.name)
def test_a_whole_path_scenario_runs_and_measures_every_process(sc, tmp_path: Path):
    r = run_scenario(sc, SHORT, tmp_path / "run")
    assert r["status"] == "ok" and r["requests"] > 0
    assert report.clean(r), r
    for who in ("sidecar", "envoy", "upstream", "path"):
        assert r[f"{who}_cpu_us_per_request"] > 0, (who, r)
    assert r["path_cpu_us_per_request"] >= r["sidecar_cpu_us_per_request"] + r["envoy_cpu_us_per_request"]
    if sc.redis:
        assert "redis_cpu_us_per_request" in r
    # Envoy's own count: every request of the floor and of the LLM chat opens a Process stream
    # (they have work for it), none does without the ext_proc filter.
    if sc.name in ("path-floor", "llm-chat", "llm-chat-sse", "mcp-list"):
        assert r["ext_proc_streams_per_request"] >= 0.99, r
    if not sc.ext_proc:
        assert r["ext_proc_streams_per_request"] == 0
    RESULTS[sc.name] = {**r, "about": sc.about}


def test_the_whole_path_table_has_a_row_per_scenario():
    if len(RESULTS) != len(PATH_SCENARIOS):
        pytest.skip("runs after the scenarios above (run the module as a whole)")
    report.compare(PATH_SCENARIOS, RESULTS)
    text = report.table(PATH_SCENARIOS, RESULTS)
    lines = text.splitlines()
    for sc in PATH_SCENARIOS:
        row = next(line for line in lines if line.startswith(sc.name + " "))
        assert "FAILED" not in row
    # the CPU targets are judged (whatever the verdict on a one-second run)
    assert "met" in RESULTS["mcp-call-noprocess"]["cpu_target"]
    assert "met" in RESULTS["llm-chat"]["cpu_target"]
