"""`make plan`: what a run will do before it does it, from a cost model fitted to run folders; nothing measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bench.run import costs
from bench.schema import Sizes
from tests.helpers import REPO, bench_env, run_bench


def test_plan_predicts_without_measuring_or_writing(tmp_path):
    proc = run_bench(tmp_path, "plan", "--grid", "quick")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "grid quick on cpu: 18 shapes, 300 cases" in out
    assert "cost model: fitted from the committed reference runs in results/reference" in out
    assert "vmap_jacrev_compiled" in out and "mlp_batchnorm" in out  # per strategy and per model
    assert "total: 300 cases, 0 over budget" in out and "predicted" in out
    assert not (tmp_path / "results").exists()


def test_plan_json_and_shards(tmp_path):
    proc = run_bench(tmp_path, "plan", "--grid", "quick", "--shards", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["cases"] == data["plan_cases"] == 300 and data["shard"] is None
    assert sum(s["cases"] for s in data["settings"]) == sum(s["cases"] for s in data["strategies"]) == 300
    assert [s["shard"] for s in data["shards"]] == ["1/3", "2/3", "3/3"]
    assert sum(s["cases"] for s in data["shards"]) == 300
    total = data["predicted_s"]
    assert total["total"] == pytest.approx(total["cases"] + total["playoffs"] + total["start"] + total["run"]
                                           + total["report"], abs=0.5)
    assert data["cost_model"]["cases"] > 0 and data["cost_model"]["runs"]


def test_plan_of_the_full_grid_is_quick(tmp_path):
    proc = run_bench(tmp_path, "plan", "--grid", "full", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["cases"] == 16436 and data["predicted_s"]["total"] > 3600


def test_the_plans_skip_list_is_what_the_run_skips(tmp_path):
    args = ("--grid", "smoke", "--strategies", "grad_loop,jacobian_diagonal,vmap_jacfwd", "--memory-budget", "3KiB")
    plan = run_bench(tmp_path, "plan", *args, "--json")
    assert plan.returncode == 0, plan.stderr
    planned = {o["case_id"]: o["message"] for o in json.loads(plan.stdout)["over_budget"]}
    run = run_bench(tmp_path, "run", *args, "--run", "budget", "--no-report")
    assert run.returncode == 0, run.stderr
    from bench.results import read_cases

    records = read_cases(tmp_path / "results" / "budget" / "cases.jsonl")
    skipped = {r.case_id: r.message for r in records if r.status == "over_budget"}
    assert planned == skipped and 0 < len(skipped) < len(records)


def test_plan_from_an_earlier_run_says_so(tmp_path):
    proc = run_bench(tmp_path, "plan", "--grid", "smoke", "--mode", "train", "--from",
                     str(REPO / "results/reference/cpu-published"))
    assert proc.returncode == 0, proc.stderr
    assert "cost model: fitted from" in proc.stdout and "cpu-published: 28 cases" in proc.stdout
    assert "no fitted run measured" in proc.stdout  # published measured the Jacobian alone: train falls back


def test_plan_for_a_gpu_from_a_machine_without_one(tmp_path):
    proc = run_bench(tmp_path, "plan", "--grid", "smoke", "--devices", "cuda")
    assert proc.returncode == 0, proc.stderr
    assert "memory budget: cuda unknown here" in proc.stdout
    assert "measured no cuda device" in proc.stdout


def test_plan_refuses_bad_input_in_one_line(tmp_path):
    for args in (("--grid", "nope"), ("--from", "results/none"), ("--grid", "smoke", "--shards", "0")):
        proc = run_bench(tmp_path, "plan", *args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (args, proc.stderr)


# ---- the cost model --------------------------------------------------------------------------------------------------

def _query(strategy: str = "grad_loop", mode: str = "jacobian", batch: int = 32, target_s: float = 0.1,
           time_s: float = 1.5) -> costs.Query:
    return costs.Query(strategy, mode, "mlp", "float32", "cpu", Sizes(batch, 64, 8, 8), target_s, time_s)


def test_a_measured_case_is_predicted_as_measured():
    model = costs.fit([REPO / "results/reference/cpu-quick"])
    sample = next(s for s in model.samples if s.strategy == "grad_loop" and s.sizes == Sizes(32, 64, 8, 8))
    (estimate,) = model.predict([_query()])
    assert estimate.basis == "measured" and estimate.seconds == pytest.approx(sample.wall_s, rel=1e-6)


def test_more_timing_effort_costs_more_and_larger_shapes_cost_more():
    model = costs.default()
    low, high = model.predict([_query(target_s=0.1), _query(target_s=1.0)])
    assert high.seconds == pytest.approx(low.seconds + 0.9, rel=0.05)  # the measured neighbour was ok: timed
    small, large = model.predict([_query("jacobian_diagonal", batch=8), _query("jacobian_diagonal", batch=512)])
    assert large.seconds > small.seconds


def test_a_smaller_shape_that_timed_out_predicts_a_timeout_scaled_to_the_budget():
    model = costs.fit([REPO / "results/reference/cpu-quick"])
    timed_out = next(s for s in model.samples if s.status == "timeout")
    query = costs.Query(timed_out.strategy, timed_out.mode, timed_out.model, timed_out.dtype, "cpu",
                        Sizes(*(2 * v for v in timed_out.sizes)), 0.1, 2 * timed_out.time_s)
    (estimate,) = model.predict([query])
    assert estimate.status == "timeout" and estimate.seconds == pytest.approx(2 * timed_out.wall_s)


def test_fallbacks_for_an_unseen_strategy_and_for_no_data():
    model = costs.default()
    (unseen,) = model.predict([_query("a_new_strategy")])
    assert unseen.basis == "other strategies" and math.isfinite(unseen.seconds) and unseen.seconds > 0
    empty = costs.CostModel(source="none", runs=[], samples=[], playoffs=[])
    (guess,) = empty.predict([_query(target_s=0.25)])
    assert guess.basis == "no data" and guess.seconds == pytest.approx(costs.NO_DATA_CASE_S + 0.25)


def test_the_overheads_outside_cases_come_from_env(tmp_path):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(REPO / "results/reference/cpu-published", run)
    env = json.loads((run / "env.json").read_text())
    env["phases"] = {"start": 3.0, "report": 7.0, "timed rounds": 20.0}
    (run / "env.json").write_text(json.dumps(env))
    model = costs.fit([run])
    assert (model.start_s, model.report_s, model.phases_recorded) == (3.0, 7.0, True)
    assert costs.fit([REPO / "results/reference/cpu-published"]).phases_recorded is False


def test_leave_one_out_scores_every_run():
    found = costs.leave_one_out(costs.reference_folders(), hide="shape")
    assert {r["run"] for r in found} == {f.name for f in costs.reference_folders()}
    assert all(r["predicted_s"] > 0 and r["measured_s"] > 0 and r["case_factor_median"] >= 1 for r in found)


SHARED = """
import sys
import bench.neighbours, bench.run.costs
print(sorted(m for m in ("torch", "pandas", "bench.report", "strategies") if m in sys.modules))
"""


def test_the_cost_model_imports_neither_torch_nor_pandas():
    proc = subprocess.run([sys.executable, "-c", SHARED], cwd=REPO, env=bench_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
