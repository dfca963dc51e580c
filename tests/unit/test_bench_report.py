"""The bench's verdicts: ratios taken round by round, so the machine's drift cancels out."""

from bench import report
from bench.scenarios import SCENARIOS


def run(*rounds: int) -> dict:
    ordered = sorted(rounds)
    return {"status": "ok", "requests_per_second": ordered[(len(ordered) - 1) // 2],
            "rounds_requests_per_second": list(rounds)}


def test_a_ratio_is_the_median_of_the_per_round_ratios():
    # Round 2 ran on a slow minute for both: its pair still says 80%.
    assert report.ratio(run(800, 400, 880), run(1000, 500, 1100)) == 0.8
    # The medians of the two columns alone would say 800/1000 as well, but not here:
    assert round(report.ratio(run(800, 500, 700), run(1000, 1000, 700)), 2) == 0.8


def test_without_matching_rounds_the_reported_numbers_are_compared():
    assert report.ratio(run(900), run(1000, 1000)) == 0.9
    assert report.ratio({"status": "failed"}, run(1000)) is None


def test_targets_are_judged_on_per_round_ratios():
    scenarios = [s for s in SCENARIOS if s.name in ("floor", "floor+token", "identity")]
    results = {"floor": run(1000, 1000, 1000), "floor+token": run(1000, 600, 1000),
               "identity": {**run(860, 520, 850), "non_2xx": 0, "errors": 0}}
    report.compare(scenarios, results)
    judged = results["identity"]["target"]
    assert judged["percent_of_baseline"] == 86.0 and judged["met"] is True


# -- the whole path and the steadier figures (issue 22) ----------------------------------------

def path_run(**cpu: float) -> dict:
    return {"status": "ok", "requests_per_second": 500, "p50_ms": 10.0, "p99_ms": 20.0, "non_2xx": 0,
            "errors": 0, **{f"{k}_cpu_us_per_request": v for k, v in cpu.items()}}


def test_a_cpu_target_judges_the_sidecar_the_path_and_a_ratio_to_its_baseline():
    from bench.scenarios import by_name

    scenarios = by_name(["llm-chat", "mcp-call-noprocess"])
    names = [s.name for s in scenarios]
    assert "path-floor" in names and "mcp-call-checkonly" in names and "floor" not in names
    results = {"path-floor": path_run(sidecar=400, envoy=300, path=700),
               "llm-chat": path_run(sidecar=950, envoy=250, redis=80, path=1280),
               "mcp-call-checkonly": path_run(sidecar=600, envoy=200, redis=50, path=850),
               "mcp-call-noprocess": path_run(sidecar=800, envoy=250, redis=50, path=1100)}
    report.compare(scenarios, results)
    assert results["llm-chat"]["cpu_target"]["met"] is True
    assert results["llm-chat"]["percent_of_floor"] == 100.0   # against the whole path's floor
    noprocess = results["mcp-call-noprocess"]["cpu_target"]
    assert noprocess["of_baseline"] == 1.29 and noprocess["met"] is False
    assert any("mcp-call-noprocess: CPU per request" in line for line in report.summary(scenarios, results))
    results["llm-chat"]["path_cpu_us_per_request"] = 1301
    report.compare(scenarios, results)
    assert results["llm-chat"]["cpu_target"]["met"] is False
    table = report.table(scenarios, results)
    assert "whole path" in table and "1,301" in table


def test_a_cpu_target_without_its_figures_is_not_judged():
    from bench.scenarios import by_name

    scenarios = by_name(["mcp-call-noprocess"])
    results = {"mcp-call-noprocess": path_run(sidecar=800, envoy=250, path=1050),
               "mcp-call-checkonly": {"status": "failed", "error": "x"}}
    report.compare(scenarios, results)
    assert "met" not in results["mcp-call-noprocess"]["cpu_target"]


def test_the_default_group_has_the_whole_path_and_the_core_check():
    from bench.scenarios import by_group

    names = {s.name for s in by_group("default")}
    assert {"floor", "ratelimit", "path-floor", "llm-chat", "llm-chat-sse", "mcp-call", "mcp-list"} <= names
    assert "chat-4k" not in names
    assert {s.name for s in by_group("all")} == {s.name for s in SCENARIOS}


def test_cpu_is_summed_over_a_process_and_its_children(tmp_path):
    """A sidecar with workers (server.workers) is measured whole: a child's CPU counts."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from bench import cpu

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\ntime.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys, time\np = subprocess.Popen([sys.executable, '-c', {burn!r}])\n"
                               "time.sleep(30)"], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            alone, tree = cpu.process_seconds(parent.pid), cpu.tree_seconds(parent.pid)
            if tree is not None and alone is not None and tree - alone >= 0.35:
                break
            time.sleep(0.1)
        assert tree is not None and alone is not None and tree - alone >= 0.35, (alone, tree)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)   # the parent and its child: their own group
        parent.wait()


def test_instructions_raise_envoys_timeouts_for_a_sidecar_under_valgrind():
    import yaml

    from authz.dev.stack import Ports, render_envoy_config
    from bench import envoy_bench, instructions

    cfg = yaml.safe_load(envoy_bench.render_path(Ports.free(), 12345))
    instructions.slow_sidecar_edit(cfg)
    text = yaml.safe_dump(cfg)
    assert text.count(instructions.SLOW_TIMEOUT) == 3   # Check's timeout, Process's and its per-message one
    assert "timeout: 0.5s" not in text and "message_timeout: 2s" not in text
    assert "port_value: 12345" in text
    without = yaml.safe_load(render_envoy_config(Ports.free(), edit=envoy_bench.path_edit(ext_proc=False)))
    filters = [f["name"] for f in envoy_bench._connection_manager(without)["http_filters"]]
    assert filters == [envoy_bench.EXT_AUTHZ, "envoy.filters.http.router"]


def test_instruction_totals_are_summed_over_the_dumps(tmp_path):
    from bench import instructions

    (tmp_path / "callgrind.out.11.1").write_text("events: Ir\nsummary: 1000\n")
    (tmp_path / "callgrind.out.12.1").write_text("events: Ir\ntotals: 234\n")
    assert instructions._totals(tmp_path) == 1234
