"""The fidelity check: which cases a run re-times in fresh processes, and what their ratios say."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from bench import fidelity
from bench.run import fresh_check
from bench.schema import CaseRecord, Sizes, shape_id


def _record(strategy: str, batch: int, *, contender: bool = True, median: float = 1e-3, setup: float | None = None,
            sd: float = 0.02) -> CaseRecord:
    sizes = Sizes(batch, 64, 8, 8)
    return CaseRecord(strategy=strategy, model="mlp", device="cpu", dtype="float32", **sizes._asdict(), status="ok",
                      time_median_s=median, round_times_s=[median] * 7, process_rounds=[7], contender=contender,
                      setup_s=setup, log_time_sd=sd,
                      case_id=f"{strategy}-cpu-{shape_id('mlp', 'float32', sizes)}")


def _pending(records: list[CaseRecord]) -> set[tuple[str, str]]:
    return {(r.device, fresh_check._shape(r)) for r in records}


def test_the_sample_covers_every_strategy_largest_shapes_contenders_first():
    records = [_record(s, b, contender=(s != "slow")) for b in (8, 512, 64) for s in ("a", "b", "slow")]
    picks = fresh_check.pick(records, _pending(records), budget_s=100.0)
    picked = [r for rows in picks.values() for r in rows]
    assert {r.strategy for r in picked} == {"a", "b", "slow"}
    assert {r.batch for r in picked if r.strategy in ("a", "b")} == {512}  # the contenders of the largest shape
    assert [r.batch for r in picked if r.strategy == "slow"] == [512]  # no contender anywhere: at its largest shape
    assert len(picked) == 3  # each strategy once: the budget is not spent twice on one


def test_the_sample_stays_within_its_budget():
    records = [_record(s, b, setup=5.0 if s == "compiled" else None) for b in (8, 512) for s in ("a", "compiled")]
    cost_one_process = fresh_check.START_S + fresh_check.PER_STRATEGY_S + 3 * 1e-3
    picks = fresh_check.pick(records, _pending(records), budget_s=cost_one_process + 0.01)
    picked = [r for rows in picks.values() for r in rows]
    assert [r.strategy for r in picked] == ["a"]  # the compiled one (5 s of compiling) does not fit
    assert fresh_check.pick(records, _pending(records), budget_s=1.0) == {}  # not even one process


class _Clock:
    """A fresh process that takes `factor` x its estimated cost, on a clock of its own."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, factor: float):
        self.now = 0.0
        monkeypatch.setattr(fresh_check.time, "perf_counter", lambda: self.now)

        self.jobs: list[dict] = []

        def in_fresh_process(job: dict) -> dict:
            self.jobs.append(job)
            estimate = fresh_check.START_S + len(job["strategies"]) * (fresh_check.PER_STRATEGY_S + 3e-3)
            self.now += factor * estimate
            return {name: {"median_s": 1e-3} for name in job["strategies"]}

        monkeypatch.setattr(fresh_check.fresh, "in_fresh_process", in_fresh_process)


@pytest.mark.parametrize("factor, timed", [(1.0, [512, 8]), (2.0, [512])])
def test_a_check_that_costs_more_than_estimated_stops_before_its_budget(monkeypatch, factor, timed):
    records = [_record("a", 512), _record("b", 8)]
    one = fresh_check.cost_s(records[:1])
    pending = [("cpu", SimpleNamespace(shape_id=fresh_check._shape(r))) for r in records]  # (device, Case)
    check = fresh_check.Check(0.1, records, pending, 10 * 2.2 * one,
                              {"mlp": "mlp"}, threads=1)
    assert len(check.picks) == 2  # both fit the budget as estimated
    _Clock(monkeypatch, factor)
    for r in records:
        check.time_fresh("cpu", fresh_check._shape(r))
    assert [c["key"][4] for c in check.found] == timed
    assert check.spent_s <= check.budget_s  # the first process, twice its estimate, showed the second would not fit
    assert len(check.skipped) == 2 - len(timed)


def test_a_process_whose_start_and_one_strategy_fit_is_started_with_a_deadline_for_the_rest(monkeypatch):
    records = [_record("a", 512), *(_record(name, 8) for name in ("b", "c", "d"))]
    pending = [("cpu", SimpleNamespace(shape_id=fresh_check._shape(r))) for r in records[:2]]
    whole = fresh_check.cost_s(records[:1]) + fresh_check.cost_s(records[1:])
    check = fresh_check.Check(0.1, records, pending, 10 * whole, {"mlp": "mlp"}, threads=1)
    check.budget_s = fresh_check.cost_s(records[:1]) + fresh_check.cost_s(records[1:2]) + 0.1  # not all of b, c, d
    clock = _Clock(monkeypatch, 1.0)
    for _, case in pending:
        check.time_fresh("cpu", case.shape_id)
    assert len(clock.jobs) == 2 and clock.jobs[1]["strategies"] == ["b", "c", "d"]  # started: the deadline cuts
    assert clock.jobs[1]["deadline"] < clock.jobs[0]["deadline"]


def test_only_shapes_still_to_time_again_are_sampled():
    records = [_record("a", 512), _record("a", 8)]
    picks = fresh_check.pick(records, {("cpu", fresh_check._shape(records[1]))}, budget_s=100.0)
    assert [r.batch for rows in picks.values() for r in rows] == [8]


def _fresh(record: CaseRecord, seconds: float, iqr: float = 0.0) -> dict:
    return {"case_id": record.case_id, "strategy": record.strategy, "median_s": seconds, "iqr_s": iqr, "blocks": 10}


def test_ratios_per_case_and_geometric_mean_per_strategy():
    a1, a2, b1 = _record("a", 8, median=1.2e-3), _record("a", 64, median=0.95e-3), _record("b", 8, median=2e-3)
    checked = fidelity.summarize({"fresh": [_fresh(a1, 1e-3), _fresh(a2, 1e-3), _fresh(b1, 2e-3)]}, [a1, a2, b1])
    assert [c["ratio"] for c in checked["cases"]] == pytest.approx([1.2, 0.95, 1.0])
    a = checked["strategies"]["a"]
    assert a["ratio"] == pytest.approx(math.sqrt(1.2 * 0.95)) and a["cases"] == 2
    assert a["low"] < a["ratio"] < a["high"]
    assert checked["within_10pct"] == 2  # 0.95 and 1.0; 1.2 is off
    assert checked["off"] == []  # a's geometric mean is 1.07


def test_a_strategy_surely_off_by_more_than_ten_percent_in_two_fresh_processes_is_named():
    slow, slower = _record("linearize_batched", 32, median=1.4e-3), _record("linearize_batched", 8, median=1.4e-3)
    checked = fidelity.summarize({"fresh": [_fresh(slow, 1e-3), _fresh(slower, 0.98e-3)]}, [slow, slower])
    assert checked["off"] == ["linearize_batched"] and checked["unresolved"] == []
    assert checked["strategies"]["linearize_batched"]["processes"] == 2
    line = fidelity.summary_line(checked)
    assert "surely off by more than 10%: linearize_batched 1.41×" in line and "0 of 2 within ±10%" in line


def test_one_fresh_process_alone_does_not_name_a_strategy_off():
    """A fresh process's speed for a call is its own (here up to x1.8 between processes): one process reading
    x1.4 leaves the strategy unresolved, whatever its interval; the in-run check times one shape's cases in one."""
    slow = _record("linearize_batched", 32, median=1.4e-3)
    checked = fidelity.summarize({"fresh": [_fresh(slow, 1e-3)]}, [slow])
    assert checked["off"] == [] and checked["unresolved"] == ["linearize_batched"]
    assert "or one fresh process alone measured it): linearize_batched 1.4×" in fidelity.summary_line(checked)
    from bench.report.check import fidelity_lines

    assert fidelity_lines(checked)[-1].endswith("linearize_batched 1.4× [1.35×–1.46×], 1 case, 1 fresh process")


def test_the_line_says_how_many_picked_cases_the_budget_left_out():
    a = _record("grad_batched", 32)
    checked = fidelity.summarize({"fresh": [_fresh(a, 1e-3)], "over_budget": ["x", "y"], "share": 0.1}, [a])
    assert "(2 picked cases more left out: the check's budget, 10% of the first pass's time, was spent)" in (
        fidelity.summary_line(checked))


def test_a_point_past_ten_percent_whose_interval_comes_back_is_not_resolved():
    """×1.2 with a run that moves ±20% from run to run: the interval reaches 1.1, so not surely off (a warning on the
    report's first screen would blame the strategy for the check's own noise)."""
    noisy = _record("vmap_jacfwd", 2048, median=1.2e-3, sd=0.2)
    checked = fidelity.summarize({"fresh": [_fresh(noisy, 1e-3)]}, [noisy])
    assert checked["off"] == [] and checked["unresolved"] == ["vmap_jacfwd"]
    assert "its interval reaches back inside" in fidelity.summary_line(checked)


def test_one_case_gets_an_interval_from_its_own_uncertainty():
    r = _record("a", 8, median=1e-3, sd=0.05)
    s = fidelity.summarize({"fresh": [_fresh(r, 1e-3, iqr=1.349e-4)]}, [r])["strategies"]["a"]
    assert s["low"] < 1 < s["high"]
    assert math.log(s["high"]) == pytest.approx(1.96 * math.hypot(0.05, 0.1 / math.sqrt(10)))


def test_fresh_timings_without_a_final_record_or_with_an_error_are_left_out():
    r = _record("a", 8)
    checked = fidelity.summarize({"fresh": [{"case_id": "gone", "median_s": 1.0},
                                            {"case_id": r.case_id, "error": "RuntimeError: boom"}]}, [r])
    assert checked["cases"] == [] and checked["strategies"] == {}
    assert "not judged: the fresh process failed: RuntimeError: boom" in fidelity.summary_line(checked)
    assert "no fresh timing matched" in fidelity.summary_line({"fresh": [{"case_id": "gone", "median_s": 1.0}]})
    assert "no case was re-timed" in fidelity.summary_line({"fresh": [], "problems": []})
    assert fidelity.summary_line(None) == ""


def test_a_check_whose_every_fresh_process_ran_slower_says_so_not_that_the_run_was_short():
    slow = _record("b", 8)
    checked = fidelity.summarize({"fresh": [_fresh(slow, 3e-3) | {"at_usual_speed": False}]}, [slow])
    assert checked["strategies"] == {}
    line = fidelity.summary_line(checked)
    assert "not judged: 1 case re-timed in fresh processes" in line and "too short" not in line


def test_a_strategy_left_joins_a_process_already_picked_before_starting_another():
    """Covering every strategy within the budget: one left over is timed in a shape's process that is starting
    anyway (its largest shape would cost another process start)."""
    records = [_record("a", 512), _record("b", 512, contender=False), _record("b", 2048, contender=False),
               _record("c", 2048, contender=False)]
    budget = fresh_check.START_S + 2 * (fresh_check.PER_STRATEGY_S + 3e-3) + 0.01  # one process, two strategies
    picks = fresh_check.pick(records, _pending(records), budget_s=budget)
    assert [(r.strategy, r.batch) for rows in picks.values() for r in rows] == [("a", 512), ("b", 512)]


class _Timer:
    """torch.utils.benchmark.Timer's stand-in: each turn's blocks take the next value of `levels`."""

    def __init__(self, levels: list[float]):
        self.levels = iter(levels)

    def blocked_autorange(self, min_run_time: float):
        return type("Measurement", (), {"times": [next(self.levels)] * 3, "number_per_run": 10})()

    def timeit(self, number: int):
        assert number == 10  # the blocks sized by the first turn
        return type("Measurement", (), {"times": [next(self.levels)]})()


def _calibrations(monkeypatch, levels: list[float]) -> None:
    import time

    from bench.harness import machine

    it = iter(levels)
    monkeypatch.setattr(machine, "calibration_now", lambda: next(it))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the waits for a slow episode to end


def test_a_fresh_turn_while_the_machine_ran_slow_is_set_aside_and_timed_once_the_episode_ended(monkeypatch):
    from bench.harness import fresh

    # calibrations around the turns: the second turn ends in a slow moment, which two polls later has passed
    _calibrations(monkeypatch, [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    waits = fresh.Waits()
    found = fresh._at_usual_speed(_Timer([5.0, 9.0, 5.0, 5.0, 5.0]), 0.0, None, waits)
    assert found["set_aside"] == 1 and found["median_s"] == 5.0 and found["at_usual_speed"]
    assert found["blocks"] == 3 + (fresh.TURNS - 1)  # the first turn's 3 blocks, then one block a turn
    assert waits.polls_left == fresh.WAIT_POLLS - 2  # the next turn started after the episode, not in it


def test_a_fresh_process_slower_than_the_run_throughout_says_so(monkeypatch):
    from bench.harness import fresh

    _calibrations(monkeypatch, [2.0] * (fresh.MAX_TURNS + 1 + 5))  # the run's usual speed: 1.0
    waits = fresh.Waits(polls=5)  # the process's waits run out: its turns are timed in the episode
    found = fresh._at_usual_speed(_Timer([7.0] * fresh.MAX_TURNS), 0.0, run_usual_s=1.0, waits=waits)
    assert found["median_s"] == 7.0 and not found["at_usual_speed"] and found["blocks"] == 3 + fresh.MAX_TURNS - 1
    assert waits.polls_left == 0


def test_a_fresh_process_waits_for_the_usual_speed_only_before_another_turn(monkeypatch):
    from bench.harness import fresh

    # every turn ends in a slow moment that one poll later has passed: a wait after each turn but the last
    _calibrations(monkeypatch, [1.0] + [2.0, 1.0] * (fresh.MAX_TURNS - 1) + [2.0])
    waits = fresh.Waits()
    found = fresh._at_usual_speed(_Timer([7.0] * fresh.MAX_TURNS), 0.0, run_usual_s=1.0, waits=waits)
    assert not found["at_usual_speed"] and waits.polls_left == fresh.WAIT_POLLS - (fresh.MAX_TURNS - 1)


def test_a_fresh_process_at_another_machine_speed_is_not_judged_but_named():
    ok, slow = _record("a", 8), _record("b", 8)
    checked = fidelity.summarize({"fresh": [_fresh(ok, 1e-3), _fresh(slow, 3e-3) | {"at_usual_speed": False}]},
                                 [ok, slow])
    assert [c["case_id"] for c in checked["cases"]] == [ok.case_id] and list(checked["strategies"]) == ["a"]
    assert checked["slower_machine"] == [slow.case_id] and checked["off"] == []
    assert "1 case more not judged: the machine ran slower than in the run" in fidelity.summary_line(checked)


def test_the_deep_check_compares_with_the_fresh_processes_at_the_run_speed():
    r = _record("a", 8, median=1e-3)
    row = fresh_check._row(r, [{"median_s": 1e-3}, {"median_s": 5e-3, "at_usual_speed": False},
                               {"median_s": 1.1e-3}])
    assert row["fresh_s"] == pytest.approx(1.05e-3) and row["judged"]
    assert not fresh_check._row(r, [{"median_s": 5e-3, "at_usual_speed": False}])["judged"]


def test_the_fresh_timer_keeps_the_garbage_collector_on_as_a_program_does():
    from bench.harness import fresh

    seen = []
    timer = fresh.collected_timer(lambda model, x: seen.append(__import__("gc").isenabled()), None, None)
    timer.timeit(3)
    assert len(seen) >= 3 and all(seen)  # timeit alone turns it off


def test_the_deep_check_shows_how_far_the_fresh_processes_disagree(capsys):
    import json

    a, b = _record("a", 2048, median=1.2e-3), _record("b", 2048, median=1.3e-3)
    rows = [fresh_check._row(a, [{"median_s": 1.0e-3}, {"median_s": 1.25e-3}, {"median_s": 1.05e-3}]),
            fresh_check._row(b, [{"median_s": 1.0e-3}, {"median_s": 1.02e-3}])]
    fresh_check._print_rows(rows)
    out = capsys.readouterr().out.splitlines()
    assert "outside ±10% (inside the fresh processes' range)" in out[1]  # 1.2 / 1.05: the fresh ones span 1.0-1.25
    assert out[2].endswith("outside ±10%")
    assert out[3].startswith("per strategy, the geometric mean of run/fresh: a ×1.143, b ×1.287")
    # each of a's three fresh processes against the median of the other two: 1.0/1.15, 1.25/1.025, 1.05/1.125
    # the per-strategy rule on a plain program: only a has three fresh processes, each of them off by over 5%
    assert out[4] == ("strategies within ×0.95–1.05: the run 0 of 2; a plain program held to the same rule (one "
                      "fresh process against the median of the others, each in turn): 0, 0, 0 of 1")
    assert out[5] == ("a plain program held to the same yardstick (each fresh process against the median of the "
                      "others): 1 of 3 within ±10% (33%); the run: 0 of 2 (0%)")
    summary = json.loads(out[-1])
    assert summary["inside_fresh_range"] == 1 and summary["fresh_within_10pct"] == 1
    assert summary["plain_processes"] == 3 and summary["plain_within_10pct"] == 1
    assert summary["median_fresh_spread"] == pytest.approx((1.25 + 1.02) / 2)
    assert (summary["strategies"], summary["strategies_within_5pct"]) == (2, 0)
    assert (summary["plain_strategies"], summary["plain_strategies_within_5pct"]) == (1, [0, 0, 0])


def test_the_deep_check_holds_a_plain_program_to_the_per_strategy_rule():
    """Per strategy, fresh process k against the median of the others, geometric mean over the strategy's cases:
    a strategy whose cases disagree in opposite directions can still be within x0.95-1.05."""
    rows = [fresh_check._row(_record("a", 8, median=1e-3), [{"median_s": t} for t in (1.0e-3, 1.02e-3, 1.2e-3)]),
            fresh_check._row(_record("a", 2048, median=1e-3), [{"median_s": t} for t in (1.0e-3, 0.98e-3, 0.85e-3)]),
            fresh_check._row(_record("b", 8, median=1e-3), [{"median_s": t} for t in (1.0e-3, 1.0e-3, 1.01e-3)])]
    counts, strategies = fresh_check.plain_close_strategies(rows)
    # a, process 0: 1.0/1.11 and 1.0/0.915 -> x0.993; process 1: 1.02/1.1 and 0.98/0.925 -> x0.991;
    # process 2: 1.2/1.01 and 0.85/0.99 -> x1.010; b is within 1% in every process
    assert (counts, strategies) == ([2, 2, 2], 2)


def test_the_deep_check_names_a_miss_the_run_timed_under_disturbance_and_counts_the_steady_cases_apart(capsys):
    import dataclasses
    import json

    steady = _record("a", 2048, median=1.0e-3)
    disturbed = dataclasses.replace(_record("b", 2048, median=1.5e-3), unstable=True)
    fresh_check._print_rows([fresh_check._row(steady, [{"median_s": 1.0e-3}]),
                             fresh_check._row(disturbed, [{"median_s": 1.0e-3}])])
    out = capsys.readouterr().out.splitlines()
    assert out[2].endswith("outside ±10% (the run kept it as unstable: timed under disturbance)")
    summary = json.loads(out[-1])
    assert (summary["cases"], summary["within_10pct"]) == (2, 1)
    assert (summary["steady_cases"], summary["steady_within_10pct"]) == (1, 1)


def test_a_fresh_process_past_the_checks_deadline_starts_no_further_strategy():
    from bench.harness import fresh

    record = _record("grad_batched", 8)
    job = fresh.spec(record, "mlp", 1, ["grad_batched", "vmap_jacrev", "grad_loop"]) | {"min_run_time": 0.02}
    timed = fresh.time_here(job | {"deadline": 0.0})  # long past: one strategy is timed, the others are not
    assert sum("median_s" in t for t in timed.values()) == 1
    assert sum(t.get("over_budget", False) for t in timed.values()) == 2
    assert all("median_s" in t for t in fresh.time_here(job).values())  # no deadline: every strategy
