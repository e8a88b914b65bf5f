"""Readers never crash on what a run wrote: records with holes (missing, null, NaN or infinite ratios and intervals,
rounds that share no sweep, one ok strategy, every strategy wrong or unsupported, one case) go through the run's
finish, the report, compare, recommend and autotune's reading of results, and what is missing is said.

The property test writes record sets drawn by hypothesis; GENERATED counts them (the report back names it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench import stats
from bench.errors import BenchError
from bench.report.compare import build_compare
from bench.report.recommend import measured_at, recommend
from bench.report.run_report import build_report
from bench.results import append_case, append_line, read_verdicts, write_json
from bench.run.session import finish
from bench.schema import STATUSES, CaseRecord, VerdictRecord

NAMES = ["grad_loop", "vmap_jacrev", "jacobian_sum", "grad_summed", "analytic"]
HOLES = [None, math.nan, math.inf, -1.0, 0.0]  # what a reader may find where a number belongs
GENERATED: list[int] = []  # one entry per record set the property test rendered
# A fixed seed in CI (the same record sets on every run); HOLES_EXAMPLES=N draws N new ones, to hunt for holes.
EXAMPLES = int(os.environ.get("HOLES_EXAMPLES", "30"))
FIXED_SEED = "HOLES_EXAMPLES" not in os.environ


def _number(draw: st.DrawFn, scale: float) -> float | None:
    return draw(st.sampled_from(HOLES) | st.floats(0.5 * scale, 2 * scale))


def _rounds(draw: st.DrawFn, scale: float) -> dict:
    """Kept rounds, their processes and sweeps: consistent, mismatched, empty or with one round."""
    n = draw(st.integers(0, 6))
    times = [draw(st.floats(0.5 * scale, 2 * scale)) for _ in range(n)]
    split = draw(st.sampled_from(["one", "two", "empty-first", "wrong"]))
    process = {"one": [n], "two": [n // 2, n - n // 2], "empty-first": [0, n], "wrong": [n + 1]}[split]
    sweeps = draw(st.sampled_from(["own", "shifted", "none", "short"]))
    offset = {"own": 0, "shifted": 100}.get(sweeps, 0)
    round_sweeps = [] if sweeps == "none" else [i + offset for i in range(n)][: n - (sweeps == "short")]
    return {"round_times_s": times, "process_rounds": process, "round_sweeps": round_sweeps}


@st.composite
def case(draw: st.DrawFn, shape: dict, strategy: str) -> CaseRecord:
    status = draw(st.sampled_from(["ok", "ok", "ok", *STATUSES]))
    scale = 1e-4 * shape["batch"]
    timing = {"time_median_s": _number(draw, scale), "time_ci_low_s": _number(draw, scale),
              "time_ci_high_s": _number(draw, scale), "forward_median_s": _number(draw, scale / 10),
              "time_iqr_s": _number(draw, scale / 10), "log_time_sd": _number(draw, 0.05)}
    return CaseRecord(strategy=strategy, device="cpu", dtype="float32", status=status, **shape,
                      returns="output_sum" if strategy == "grad_summed" else "jacobian",
                      is_jacobian=strategy != "grad_summed" or shape["out_dim"] == 1,
                      closed_form=strategy == "analytic", contender=draw(st.sampled_from([None, True, False])),
                      message="" if status == "ok" else f"{status}: drawn", sweeps=["base", "batch"],
                      **timing, **_rounds(draw, scale))


@st.composite
def verdict(draw: st.DrawFn, shape: dict, names: list[str]) -> VerdictRecord:
    interval = st.sampled_from([None, [None, None, None], [math.nan] * 3, [1.3, None, math.inf], [1.0, 0.9, 1.2],
                                [2.0, 1.8, 2.4], []])
    others = [n for n in names[1:]]
    return VerdictRecord(**shape, best=names[0], verdict=draw(st.sampled_from(["winner", "tie"])),
                         tied_with=draw(st.lists(st.sampled_from(others), unique=True)) if others else [],
                         runner_up=draw(st.sampled_from([None, *others])), runner_up_ratio=draw(interval),
                         ratios={n: draw(interval) for n in others}, contenders=names, rounds=draw(st.integers(0, 9)))


@st.composite
def run_records(draw: st.DrawFn) -> tuple[list[CaseRecord], list[VerdictRecord]]:
    """One to three shapes (hidden 0 included: a model of fixed sizes), each with one to five strategies."""
    cases, verdicts = [], []
    for batch in draw(st.lists(st.sampled_from([1, 16, 256]), min_size=1, max_size=3, unique=True)):
        shape = {"model": draw(st.sampled_from(["mlp", "heat.factory"])), "batch": batch,
                 "hidden": draw(st.sampled_from([0, 32])), "in_dim": 3, "out_dim": draw(st.sampled_from([1, 2])),
                 "mode": draw(st.sampled_from(["jacobian", "train"]))}
        names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
        cases += [draw(case(shape, name)) for name in names]
        if draw(st.booleans()):
            verdicts.append(draw(verdict({**shape, "device": "cpu", "dtype": "float32"}, names)))
    return cases, verdicts


def write_run(folder: Path, cases: list[CaseRecord], verdicts: list[VerdictRecord]) -> Path:
    folder.mkdir(parents=True)
    for record in cases:
        append_case(folder / "cases.jsonl", record)  # NaN and inf become null, as a run writes them
    for v in verdicts:
        append_line(folder / "verdicts.jsonl", v.as_dict())
    write_json(folder / "env.json", {"run_id": folder.name, "torch": "2.4.0", "threads": 2,
                                     "devices": {"cpu": "Synthetic CPU"}, "planned_cases": len(cases)})
    return folder


def read_everything(folder: Path, twin: Path) -> None:
    """What a user does with a run folder: the report, a compare (with a rerun that wrote the same holes), recommend,
    autotune(results=)'s reading. A refusal is one line (a BenchError); anything else is a crash."""
    markdown = build_report(folder).read_text()
    assert "jacobench report" in markdown and (folder / "report.html").exists()
    assert "jacobench comparison" in build_compare([folder, twin], folder.parent / "compare", folder.parent / "plots") \
        .read_text()
    try:
        recommend([folder], 16, 0, 3, 2)
    except BenchError:
        pass  # nothing valid near that shape: one line, not a crash
    for mode in ("jacobian", "train"):
        measured_at([folder], "cpu", "float32", mode, 16, 3, 2)


# no shrinking: a report per example takes about a second, and shrinking a failure took minutes (the failing record
# set is printed whole instead)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=FIXED_SEED,
          phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@pytest.mark.slow  # about 3 s per record set: a report, a compare and a finish each
@given(records=run_records())
def test_readers_survive_records_with_holes(records, tmp_path_factory):
    cases, verdicts = records
    root = tmp_path_factory.mktemp("holes")
    read_everything(write_run(root / "written", cases, verdicts), write_run(root / "rerun", cases, verdicts))
    finished = write_run(root / "finished", cases, [])
    finish(finished)  # the run's own finish: noise model, intervals and verdicts from these records
    for v in read_verdicts(finished / "verdicts.jsonl"):
        assert all(x is None or math.isfinite(x) for r in v.ratios.values() for x in r), v
    read_everything(finished, root / "written")
    GENERATED.append(len(cases))


def test_how_many_record_sets_were_generated():
    """Runs after the property test (file order): it rendered EXAMPLES record sets, or it would have failed."""
    if GENERATED:
        print(f"\nrecord sets generated and rendered: {len(GENERATED)} ({sum(GENERATED)} case records)")
        assert len(GENERATED) == EXAMPLES


# ---- the causes, one at a time ---------------------------------------------------------------------------------------

def test_a_contender_re_timed_apart_gets_an_unpaired_ratio_not_null():
    """Its rounds share no sweep with the best's (re-timed in sweeps the best did not run): the ratio of the two
    medians with both medians' noise, marked unpaired, instead of NaN (written as null, which crashed reports)."""
    best = ([1.0, 1.01, 0.99, 1.0], [4], [0, 1, 2, 3])
    apart = ([1.5, 1.52, 1.49, 1.5], [4], [10, 11, 12, 13])
    name, spreads = stats.ratio_spreads({"best": best, "apart": apart})
    s = spreads["apart"]
    estimate, low, high = stats.confidence_interval(s, 0.0)
    assert name == "best" and not s.paired and estimate == pytest.approx(1.5, rel=0.02)
    assert all(math.isfinite(v) for v in (estimate, low, high)) and low > stats.TIE_MARGIN


def test_a_process_that_kept_no_round_does_not_shift_the_pairing():
    """[0, n] rounds per process: the contender's second process pairs with the best's second, not its first."""
    best = ([1.0] * 4 + [2.0] * 4, [4, 4], [0, 1, 2, 3, 0, 1, 2, 3])
    late = ([2.4, 2.4, 2.4, 2.4], [0, 4], [0, 1, 2, 3])
    ratios, counts = stats.paired_log_ratios(late, best)
    assert counts == [0, 4] and ratios == pytest.approx([1.2] * 4)


def test_the_tie_rule_reads_null_and_nan_as_unknown():
    v = stats.verdict_of("a", {"b": [None, None, None], "c": (math.nan,) * 3, "d": [2.0, 1.8, 2.2], "e": [1.1, 1.0]})
    assert v.verdict == "tie" and v.tied_with == ["e", "b", "c"] and v.runner_up == "e"
    assert stats.verdict_of("a", {"d": [2.0, 1.8, 2.2]}).verdict == "winner"


def test_finish_says_which_ratio_is_unpaired(tmp_path):
    shape = {"model": "mlp", "device": "cpu", "dtype": "float32", "batch": 4, "hidden": 8, "in_dim": 3, "out_dim": 2}
    for name, times, sweeps in (("grad_loop", [1e-3] * 6, [0, 1, 2, 3, 4, 5]),
                                ("vmap_jacrev", [1.02e-3] * 6, [6, 7, 8, 9, 10, 11])):
        append_case(tmp_path / "cases.jsonl", CaseRecord(strategy=name, status="ok", round_times_s=times,
                                                         process_rounds=[6], round_sweeps=sweeps, **shape))
    finish(tmp_path)
    (v,) = read_verdicts(tmp_path / "verdicts.jsonl")
    assert "no rounds paired" in v.message and all(x is not None for x in v.ratios["vmap_jacrev"])
    assert json.loads((tmp_path / "verdicts.jsonl").read_text())["verdict"] == "tie"


def test_a_run_of_one_wrong_case_says_so(tmp_path):
    shape = {"model": "heat.factory", "device": "cpu", "dtype": "float32", "batch": 16, "hidden": 0, "in_dim": 3,
             "out_dim": 2}
    folder = write_run(tmp_path / "one", [CaseRecord(strategy="grad_loop", status="wrong", max_abs_error=0.3,
                                                     tolerance=1e-4, message="over tolerance", **shape)], [])
    finish(folder)
    text = build_report(folder).read_text()
    assert "1 of 1 shapes have no valid strategy" in text and "heat.factory-B16-in3-out2 (cpu)" in text
    assert "| hidden" not in text  # not an axis of a model of fixed sizes
