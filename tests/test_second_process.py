"""How a shape's records take the second process's timing (bench/harness/runner.py `_combining`): a first timing
run under disturbance is replaced by an undisturbed second one, a disturbed second one is set aside, and the records
of one shape always keep the same processes (paired ratios are taken process by process)."""

import dataclasses

from bench.harness import runner, timing
from bench.run import host
from bench.schema import CaseRecord


def record(strategy: str, *, contender: bool = True, unstable: bool = False) -> CaseRecord:
    rounds = [2e-3] * 7
    return CaseRecord(strategy=strategy, model="mlp", device="cpu", dtype="float32", batch=32, hidden=64, in_dim=8,
                      out_dim=8, status="ok", time_median_s=2e-3, round_times_s=rounds, process_rounds=[7],
                      round_sweeps=list(range(7)), contender=contender, unstable=unstable, rounds_set_aside=1,
                      message="unstable: the machine ran ×1.7 slower than usual" if unstable else "",
                      forward_median_s=1e-4, forward_process_s=[1e-4], case_id=f"{strategy}-cpu-mlp-B32-H64-in8-out8")


def entry(name: str, seconds: float = 1e-3, unstable: str = "") -> timing.Entry:
    e = timing.Entry(name, lambda: None, one_call_s=seconds)
    e.rounds, e.round_sweeps, e.unstable = [seconds] * 9, list(range(9)), unstable
    e.raced = 3 if unstable else None  # timed on its own: its own rounds say whether they were disturbed
    return e


def combined(records, entries, result=None, failed=None, first_slow=""):
    by_name = {e.name: e for e in entries}
    combine = runner._combining(records, by_name, result or timing.ShapeTiming(entries), failed or {}, first_slow)
    return [combine(r, by_name.get(r.strategy), 9e-5) for r in records]


def test_a_first_timing_under_disturbance_is_replaced_by_an_undisturbed_second():
    records = [record("a", unstable=True), record("b", contender=False, unstable=True)]
    assert runner.to_retime(records) == records  # no-contenders too: the whole shape is timed again
    a, b = combined(records, [entry("a"), entry("b")])
    assert a.round_times_s == [1e-3] * 9 and a.process_rounds == [9] and a.time_median_s == 1e-3
    assert not a.unstable and a.rounds_set_aside == 1 + 7
    assert a.forward_process_s == [9e-5]
    assert "first having run under disturbance (7 rounds set aside)" in b.message and b.process_rounds == [9]


def test_a_disturbed_second_timing_is_set_aside_when_the_first_was_not():
    records = [record("a"), record("b")]
    result = timing.ShapeTiming([])
    result.unstable = "the machine ran ×1.5 slower than usual in this process (calibration)"
    a, b = combined(records, [entry("a"), entry("b")], result)
    assert a.round_times_s == [2e-3] * 7 and a.process_rounds == [7] and a.forward_process_s == [1e-4]
    assert "second process set aside: the machine ran ×1.5 slower" in a.message and a.rounds_set_aside == 1 + 9


def test_both_undisturbed_adds_the_second_process():
    records = [record("a"), record("b")]
    a, _ = combined(records, [entry("a"), entry("b")])
    assert a.process_rounds == [7, 9] and len(a.round_times_s) == 16


def test_a_strategy_the_second_process_could_not_time_keeps_the_shape_as_it_was_combined():
    # one record replaced and another not would pair one process's rounds with another's
    records = [record("a", unstable=True), record("b", unstable=True)]
    a, b = combined(records, [entry("a")], failed={"b": "second process: RuntimeError: boom"})
    assert a.process_rounds == [7, 9] and a.unstable
    assert b.process_rounds == [7] and "boom" in b.message


def test_a_first_timing_found_slow_in_hindsight_is_replaced_or_named():
    slow = "the machine ran ×1.70 slower than the run's usual speed"
    records = [record("a"), record("b", contender=False)]
    assert runner.to_retime(records, slow) == records
    a, b = combined(records, [entry("a"), entry("b")], first_slow=slow)
    assert a.process_rounds == [9] and b.process_rounds == [9] and not a.unstable
    result = timing.ShapeTiming([])
    result.unstable = "the machine ran ×1.5 slower than usual in this process (calibration)"
    a, _ = combined(records, [entry("a"), entry("b")], result, first_slow=slow)
    assert a.process_rounds == [7, 9] and a.unstable and f"unstable: first process: {slow}" in a.message


def test_the_shapes_a_first_pass_ran_slow_are_found_after_it():
    env = {"processes": [{"process": 1, "calibration": {"usual_s": 6e-4, "shapes": {
        "cpu-mlp-B1-H64-in8-out8": 1.05e-3, "cpu-mlp-B8-H64-in8-out8": 6.5e-4}}}]}
    slow = host._ran_slow(env, 6e-4)
    assert list(slow) == ["cpu-mlp-B1-H64-in8-out8"] and "×1.75 slower" in slow["cpu-mlp-B1-H64-in8-out8"]
    assert host._ran_slow(env, None) == {} and host._ran_slow({}, 6e-4) == {}


def test_a_whole_shape_timed_again_races_again_only_the_strategies_near_the_fastest():
    def timed(strategy: str, median: float, contender: bool) -> CaseRecord:
        return dataclasses.replace(record(strategy, contender=contender, unstable=True), is_jacobian=True,
                                   time_median_s=median)

    records = [timed("fast", 1e-3, True), timed("near", 2.9e-3, False), timed("far", 3.1e-3, False)]
    assert runner.to_retime(records) == records
    assert runner.far_behind(records) == {"far"}  # x3 the fastest contender or more: not raced again
    assert runner.far_behind([dataclasses.replace(r, is_jacobian=False) for r in records]) == set()  # none may win


def test_a_strategy_far_behind_whose_own_rounds_held_keeps_its_first_timing():
    # the contenders' blocks ran under disturbance; "far" was timed on its own, undisturbed, x3 behind
    fast = dataclasses.replace(record("fast", unstable=True), is_jacobian=True, time_median_s=1e-3)
    far = dataclasses.replace(record("far", contender=False), is_jacobian=True, time_median_s=3.1e-3)
    near = dataclasses.replace(record("near", contender=False), is_jacobian=True, time_median_s=2.9e-3)
    assert runner.to_retime([fast, near, far]) == [fast, near]
    shaken = dataclasses.replace(far, unstable=True)  # its own rounds kept under disturbance: timed again
    assert runner.to_retime([fast, near, shaken]) == [fast, near, shaken]
    slow = "the machine ran ×1.70 slower than the run's usual speed"  # every calibration of the shape: all again
    assert runner.to_retime([fast, near, far], slow) == [fast, near, far]
