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
