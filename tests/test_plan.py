"""`make plan`: what a run will do before it does it, from a cost model fitted to run folders; nothing measured."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.scale import cost_check, costs, spent
from bench.schema import Sizes
from tests.helpers import ONE_PROCESS, REPO, bench_env, bench_main, run_bench


def test_plan_predicts_without_measuring_or_writing(tmp_path, monkeypatch, capsys):
    code, out, err = bench_main(tmp_path, "plan", "--grid", "quick", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert "grid quick on cpu: 18 shapes, 300 cases" in out
    assert "cost model: fitted from the committed reference runs in results/reference" in out
    assert "vmap_jacrev_compiled" in out and "mlp_batchnorm" in out  # per strategy and per model
    assert "total: 300 cases, 0 over budget" in out and "predicted" in out
    assert not (tmp_path / "results").exists()


def test_plan_json_and_shards(tmp_path, monkeypatch, capsys):
    code, out, err = bench_main(tmp_path, "plan", "--grid", "quick", "--shards", "3", "--json",
                                monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["cases"] == data["plan_cases"] == 300 and data["shard"] is None
    assert sum(s["cases"] for s in data["settings"]) == sum(s["cases"] for s in data["strategies"]) == 300
    assert [s["shard"] for s in data["shards"]] == ["1/3", "2/3", "3/3"]
    assert sum(s["cases"] for s in data["shards"]) == 300
    total = data["predicted_s"]
    assert total["total"] == pytest.approx(total["cases"] + total["shapes"] + total["start"] + total["finish"]
                                           + total["report"], abs=0.5)
    assert sum(s["seconds"] for s in data["shards"]) >= total["total"]  # every shard starts, finishes, reports
    assert data["cost_model"]["cases"] > 0 and data["cost_model"]["runs"]


def test_plan_of_the_full_grid_is_quick(tmp_path, monkeypatch, capsys):
    start = time.perf_counter()
    code, out, err = bench_main(tmp_path, "plan", "--grid", "full", "--json", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert time.perf_counter() - start < 60
    data = json.loads(out)
    assert data["cases"] == 16436 and data["predicted_s"]["total"] > 3600


@pytest.mark.slow
def test_the_plans_skip_list_is_what_the_run_skips(tmp_path):
    args = ("--grid", "smoke", "--strategies", "grad_loop,jacobian_diagonal,vmap_jacfwd", "--memory-budget", "3KiB",
            *ONE_PROCESS)
    plan = run_bench(tmp_path, "plan", *args, "--json")
    assert plan.returncode == 0, plan.stderr
    planned = {o["case_id"]: o["message"] for o in json.loads(plan.stdout)["over_budget"]}
    run = run_bench(tmp_path, "run", *args, "--run", "budget", "--no-report")
    assert run.returncode == 0, run.stderr
    from bench.results import read_cases

    records = read_cases(tmp_path / "results" / "budget" / "cases.jsonl")
    skipped = {r.case_id: r.message for r in records if r.status == "over_budget"}
    assert planned == skipped and 0 < len(skipped) < len(records)


def test_plan_from_an_earlier_run_says_so(tmp_path, monkeypatch, capsys):
    code, out, err = bench_main(tmp_path, "plan", "--grid", "smoke", "--mode", "train", "--from",
                                str(REPO / "results/reference/cpu-published"), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert "cost model: fitted from" in out and "cpu-published: 28 cases" in out
    assert "no fitted run measured" in out  # published measured the Jacobian alone: train falls back


def test_plan_for_a_gpu_from_a_machine_without_one(tmp_path, monkeypatch, capsys):
    code, out, err = bench_main(tmp_path, "plan", "--grid", "smoke", "--devices", "cuda", monkeypatch=monkeypatch,
                                capsys=capsys)
    assert code == 0, err
    assert "memory budget: cuda unknown here" in out
    assert "measured no cuda device" in out


def test_plan_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    for args in (("--grid", "nope"), ("--from", "results/none"), ("--grid", "smoke", "--shards", "0")):
        code, _, err = bench_main(tmp_path, "plan", *args, monkeypatch=monkeypatch, capsys=capsys)
        assert code == 2 and err.count("\n") == 1, (args, err)


# ---- the cost model --------------------------------------------------------------------------------------------------

def _query(strategy: str = "grad_loop", mode: str = "jacobian", batch: int = 32, target_s: float = 0.1,
           time_s: float = 1.5, processes: int = 2, hidden: int = 64) -> costs.Query:
    return costs.Query(strategy, mode, "mlp", "float32", "cpu", Sizes(batch, hidden, 8, 8), target_s, time_s,
                       processes)


def _case(strategy: str, batch: int, wall_s: float, status: str = "ok", median: float | None = None,
          setup_s: float | None = None, process_rounds: tuple[int, ...] = (7,)) -> dict:
    timed = status == "ok" and median is not None
    return {"strategy": strategy, "model": "mlp", "device": "cpu", "dtype": "float32", "batch": batch, "hidden": 64,
            "in_dim": 8, "out_dim": 8, "status": status, "mode": "jacobian", "wall_s": wall_s, "setup_s": setup_s,
            "time_median_s": median if timed else None, "rounds": sum(process_rounds) if timed else None,
            "iterations": 1 if timed else None, "round_times_s": [median] * sum(process_rounds) if timed else [],
            "process_rounds": list(process_rounds) if timed else []}


def _two_process_run(root: Path) -> Path:
    """A run of the issue-18 harness, by hand: two shapes; an eager strategy timed and re-timed, a compiled one
    timed once, one that failed validation; env.json with both worker processes and their phases."""
    run = root / "two"
    run.mkdir(parents=True)
    cases = []
    for batch, scale in ((8, 1.0), (32, 2.0)):
        cases += [_case("grad_loop", batch, 0.9 * scale, median=0.01 * scale, process_rounds=(20, 10)),
                  _case("vmap_jacrev_compiled", batch, 3.0, median=0.02, setup_s=2.0, process_rounds=(10,)),
                  _case("jacobian_sum", batch, 0.05, status="wrong")]
    (run / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    env = {"grid": {"name": "hand", "budget": {"target_s": 0.1, "time_s": 1.5}}, "time_budget_s": 1.5,
           "processes": [
               {"process": 1, "wall_s": 12.0, "phases": {"startup": 0.1, "heap": 0.1, "models": 0.1, "references": 0.1,
                                                          "validation": 0.6, "compiling": 4.0, "timing": 4.0}},
               {"process": 2, "wall_s": 2.0, "phases": {"validation": 0.1, "timing": 1.0}}],
           "phases": {"finish": 0.6, "report": 3.0}}
    (run / "env.json").write_text(json.dumps(env))
    return run


def test_a_two_process_run_is_taken_apart_as_its_processes_spent_it(tmp_path):
    model = costs.fit([_two_process_run(tmp_path)])
    assert model.structures == ["processes"] and model.phases_recorded
    samples = model.samples
    setup = sum(s.setup_s for s in samples)
    assert setup == pytest.approx(0.1 + 0.1 + 0.1 + 0.6 + 4.0)  # the first process's phases outside its windows
    assert sum(s.retime_s for s in samples) == pytest.approx(0.1)  # the second one's, on the re-timed cases only
    assert all(s.retime_s == 0 for s in samples if s.processes < 2)
    assert sum(s.rounds_s for s in samples) == pytest.approx(5.0)  # both processes' timing phases, all of them
    own_rounds = sum(s.wall_s for s in samples) - setup  # what the cases' wall times leave for their rounds
    assert model.window_factor == pytest.approx(5.0 / own_rounds)  # the windows' own work on top of the rounds
    inside = setup + 5.0 + 0.1
    assert model.shape_s == pytest.approx((14.0 - inside) / 2)  # what is left of the processes, per shape
    assert model.finish_per_case_s == pytest.approx(0.1) and model.report_per_case_s == pytest.approx(0.5)
    wrong = next(s for s in samples if s.status == "wrong")
    assert (wrong.setup_s, wrong.rounds_s, wrong.timed) == (0.05, 0.0, False)


def test_a_measured_case_is_predicted_at_what_it_cost(tmp_path):
    model = costs.fit([_two_process_run(tmp_path)])
    for sample in model.samples:
        (estimate,) = model.predict([_query(sample.strategy, batch=sample.sizes.batch)])
        assert estimate.basis == "measured"
        if sample.timed:  # its setup as measured; its rounds from the window law of all shapes, not its own
            assert estimate.parts[0] == pytest.approx(sample.setup_s, rel=0.02), sample.strategy
            assert estimate.call_s == pytest.approx(sample.call_s, rel=0.02), sample.strategy
        else:
            assert estimate.seconds == pytest.approx(cost_check.case_cost(sample), rel=0.02), sample.strategy


def test_a_longer_window_stretches_the_rounds_beyond_their_floor(tmp_path):
    model = dataclasses.replace(costs.fit([_two_process_run(tmp_path)]), window=1.5)
    sample = next(s for s in model.samples if s.strategy == "grad_loop" and s.sizes.batch == 32)
    low, high = model.predict([_query(batch=32, target_s=0.1), _query(batch=32, target_s=1.0)])
    assert high.seconds - low.seconds == pytest.approx(model.window * 0.9 * sample.processes, rel=1e-3)
    floor = costs.MIN_ROUNDS * (0.02 + costs.LEAD_IN_S) * 2  # 7 rounds of one 20 ms call and its lead-in, 2 processes
    assert sample.floor_s == pytest.approx(floor)
    (one,) = model.predict([_query(batch=32, processes=1)])
    assert one.seconds < low.seconds  # no second process: no re-timing, one floor


def test_the_window_law_is_recovered_from_shapes_that_follow_it():
    samples = []
    for n, (target, call) in enumerate([(0.1, 0.001), (0.2, 0.01), (0.1, 0.05), (0.5, 0.2)]):
        floor = costs.rounds_floor(call, 2)
        samples.append(costs.Sample("s", "jacobian", "mlp", "float32", "cpu", Sizes(2**n, 8, 8, 8), "ok", 1.0, target,
                                    2.0, 0.1, (1.3 * target + 0.05) * 2 + 0.8 * floor, 0.0, call, 2))
    assert costs.window_law(samples) == pytest.approx((1.3, 0.8, 0.05))
    assert costs.window_law([]) == (1.0, 1.0, 0.0)


def test_the_call_time_extrapolates_past_the_largest_measured_shape(tmp_path):
    model = costs.fit([_two_process_run(tmp_path)])
    near, far = model.predict([_query(batch=32), _query(batch=512)])
    assert far.call_s == pytest.approx(0.02 * 4, rel=0.1)  # grad_loop's call doubled from B8 to B32: ∝ √B
    assert far.seconds > near.seconds
    (slow,) = model.predict([_query(batch=2**20)])  # a call of about 3 s, over the 1.5 s limit
    assert slow.status == "timeout" and slow.basis == "call time" and slow.seconds > costs.TIMEOUT_TRIES * 1.5


def test_a_smaller_shape_that_timed_out_predicts_a_timeout_under_the_same_limit_only():
    model = costs.fit([REPO / "results/reference/cpu-quick"])
    timed_out = next(s for s in model.samples if s.status == "timeout")
    query = costs.Query(timed_out.strategy, timed_out.mode, timed_out.model, timed_out.dtype, "cpu",
                        Sizes(*(2 * v for v in timed_out.sizes)), 0.1, timed_out.time_s)
    (estimate,) = model.predict([query])
    assert estimate.status == "timeout" and estimate.seconds == pytest.approx(timed_out.wall_s)
    (longer,) = model.predict([dataclasses.replace(query, time_s=100 * timed_out.time_s)])
    assert longer.basis != "failure"  # a longer limit may let it finish: its call time decides


def test_an_older_run_with_playoffs_still_fits():
    model = costs.fit([REPO / "results/reference/cpu-quick"])
    assert model.structures == ["playoffs"] and model.window_factor == 1.0
    timed = [s for s in model.samples if s.timed]
    assert timed and all(s.retime_s == 0 and s.processes == 1 for s in timed)
    assert all(s.setup_s + s.rounds_s >= s.wall_s - 1e-9 for s in timed)  # its playoff share on top of its wall
    small, large = model.predict([_query("jacobian_diagonal", batch=8), _query("jacobian_diagonal", batch=512)])
    assert large.seconds > small.seconds


def test_fallbacks_for_an_unseen_strategy_and_for_no_data():
    model = costs.default()
    (unseen,) = model.predict([_query("a_new_strategy")])
    assert unseen.basis == "other strategies" and math.isfinite(unseen.seconds) and unseen.seconds > 0
    empty = costs.CostModel(source="none", runs=[], samples=[])
    (guess,) = empty.predict([_query(target_s=0.25)])
    assert guess.basis == "no data" and guess.seconds == pytest.approx(costs.NO_DATA_CASE_S + 0.25)


def test_from_takes_several_runs(tmp_path):
    run = _two_process_run(tmp_path)
    model = costs.from_run(f"{run},{REPO / 'results/reference/cpu-published'}")
    assert model.runs == ["two", "cpu-published"] and model.structures == ["playoffs", "processes"]


def test_local_linear_follows_a_power_law_where_idw_repeats_the_edge():
    from bench.neighbours import idw, local_linear, log2_sizes

    sizes = [(b, h, 8, 8) for b in (1, 4, 16, 64) for h in (16, 64)]
    points = log2_sizes(sizes)  # [8, 4]
    values = points[:, 0] + 2 * points[:, 1]  # cost ∝ B · H²
    queries = log2_sizes([(1024, 64, 8, 8), (4, 16, 8, 8)])  # [2, 4]: far past the batch range, and a measured point
    dist = np.sqrt(((queries[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))  # [2, 8]
    far, exact = local_linear(dist, points, queries, values)
    assert far == pytest.approx(10 + 12, abs=0.2) and exact == pytest.approx(2 + 8)
    assert idw(dist, values[:, None])[0][0, 0] < far - 3  # the neighbours' mean stays at the edge


def test_leave_one_out_scores_every_run():
    found = cost_check.leave_one_out(costs.reference_folders(), hide="shape")
    assert {r["run"] for r in found} == {f.name for f in costs.reference_folders()}
    assert all(r["predicted_s"] > 0 and r["measured_s"] > 0 and r["case_factor_median"] >= 1 for r in found)


LOADED = """
import sys
import {module}
print(sorted(m for m in ("torch", "pandas", "bench.report", "strategies") if m in sys.modules))
"""


@pytest.mark.slow
@pytest.mark.parametrize("module,loaded", [
    ("bench.neighbours", []),  # shared by measuring and reporting: numpy only
    ("bench.scale.costs", ["torch"]),  # the harness's timing rules (and torch with them), never pandas or reports
])
def test_the_cost_model_reads_json_lines_without_pandas(module, loaded):
    proc = subprocess.run([sys.executable, "-c", LOADED.format(module=module)], cwd=REPO, env=bench_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(loaded)


def test_a_hessian_and_a_laplacian_of_the_same_sizes_are_two_shapes() -> None:
    """The cost model's shape (per-shape overhead, the window law, leave-one-out by shape) follows the run's: each
    quantity of a shape is a shape of its own, as schema.shape_id has it."""
    from bench.schema import CaseRecord

    records = [CaseRecord(strategy=name, model="pinn", device="cpu", dtype="float32", batch=16, hidden=64, in_dim=2,
                          out_dim=1, quantity=quantity, status="ok", time_median_s=1e-3)
               for name, quantity in (("hessian_grad_loop", "hessian"), ("laplacian_trace_grad_loop", "laplacian"))]
    assert spent._shape_key_of(records[0]) != spent._shape_key_of(records[1])
    samples = [costs.Sample(r.strategy, r.mode, r.model, r.dtype, "cpu", r.sizes, r.status, 1.0, 0.25, 5.0,
                            quantity=r.quantity) for r in records]
    assert len(cost_check._by_shape(samples)) == 2 and costs.shape_key(samples[0]) != costs.shape_key(samples[1])


def test_a_peer_runs_only_where_the_grid_asks_for_peers(tmp_path, monkeypatch):
    """Installing another framework's plugin (its strategies have a `peer`) leaves every grid's cases as they were;
    a grid with `peers = true`, or STRATEGIES= naming one, runs it."""
    import strategies
    from bench.spec.plan import plan_run
    from bench.spec.settings import Settings

    monkeypatch.setitem(strategies.REGISTRY, "other_vmap_jacrev",
                        dataclasses.replace(strategies.REGISTRY["vmap_jacrev"], name="other_vmap_jacrev", peer="other"))
    quick = plan_run(Settings(grid="quick", devices="cpu"))
    assert "other_vmap_jacrev" not in quick.strategy_names and quick.total_cases == 300
    grid = tmp_path / "with-peers.toml"
    grid.write_text('peers = true\n[base]\nbatch = 4\nhidden = 8\nin_dim = 3\nout_dim = 2\n')
    assert "other_vmap_jacrev" in plan_run(Settings(grid=str(grid), devices="cpu")).strategy_names
    named = plan_run(Settings(grid="quick", devices="cpu", strategies="grad_loop,other_vmap_jacrev"))
    assert named.strategy_names == ["grad_loop", "other_vmap_jacrev"]
    grid.write_text('peers = "yes"\n[base]\nbatch = 4\nhidden = 8\nin_dim = 3\nout_dim = 2\n')
    with pytest.raises(Exception, match="peers.*true or false"):
        plan_run(Settings(grid=str(grid), devices="cpu"))


def test_a_grid_can_name_its_strategies_and_strategies_replaces_them(tmp_path, monkeypatch):
    """`strategies = [...]` in a grid runs those of PyTorch's strategies (its peers still come from `peers`);
    STRATEGIES= replaces the list; a name that is no registered PyTorch strategy is one line naming the key."""
    import strategies
    from bench.errors import BenchError
    from bench.spec.plan import plan_run
    from bench.spec.settings import Settings

    monkeypatch.setitem(strategies.REGISTRY, "other_vmap_jacrev",
                        dataclasses.replace(strategies.REGISTRY["vmap_jacrev"], name="other_vmap_jacrev", peer="other"))
    grid = tmp_path / "named.toml"
    base = '[base]\nbatch = 4\nhidden = 8\nin_dim = 3\nout_dim = 2\n'
    grid.write_text('peers = true\nstrategies = ["vmap_jacrev", "grad_loop"]\n' + base)
    plan = plan_run(Settings(grid=str(grid), devices="cpu"))
    own = [n for n in plan.strategy_names if not strategies.REGISTRY[n].peer]
    assert own == ["grad_loop", "vmap_jacrev"] and "other_vmap_jacrev" in plan.strategy_names
    assert plan.grid.as_dict()["strategies"] == ["vmap_jacrev", "grad_loop"]
    assert plan.total_cases == 3  # the jitted peers run in compiled blocks only
    assert plan_run(Settings(grid=str(grid), devices="cpu", strategies="jacobian_sum")).strategy_names == [
        "jacobian_sum"]
    for names, problem in (('["nope"]', "named.toml: strategies: unknown strategy 'nope'"),
                           ('["other_vmap_jacrev"]', "unknown strategy"),
                           ('[]', "strategies: must be a non-empty list"), ('"grad_loop"', "strategies: must be")):
        grid.write_text(f"strategies = {names}\n" + base)
        with pytest.raises(BenchError, match=problem):
            plan_run(Settings(grid=str(grid), devices="cpu"))
    assert "strategies" not in plan_run(Settings(grid="quick", devices="cpu")).grid.as_dict()
