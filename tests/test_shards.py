"""Shards of one plan: the split (disjoint, covering, shapes whole, balanced by cost), the plan hash, shard runs merged
into one run (same cases and statuses as one run, report, idempotent), and the merges that must be refused."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from bench import results
from bench.scale import balance, shards
from bench.schema import Sizes
from bench.spec.settings import Settings
from tests.helpers import SMOKE_THREE as SMOKE
from tests.helpers import bench_main, copy_run, run_bench

# ---- the split -------------------------------------------------------------------------------------------------------

def _unit(n: int) -> shards.Unit:
    return "mlp", "float32", Sizes(n, 1, 1, 1)


def test_split_balances_cost_not_count():
    costs = {_unit(0): 100.0} | {_unit(n): 1.0 for n in range(1, 101)}  # one long shape, a hundred short ones
    assigned = balance.split(costs, 2)
    assert assigned[_unit(0)] == 1 and all(assigned[_unit(n)] == 2 for n in range(1, 101))


def _loads(costs: dict, assigned: dict, count: int) -> list[float]:
    return [sum(c for u, c in costs.items() if assigned[u] == k) for k in range(1, count + 1)]


def test_split_is_longest_first_and_deterministic():
    costs = {_unit(n): float(n % 7 + 1) for n in range(50)}
    assigned = balance.split(costs, 3)
    assert assigned == balance.split(dict(reversed(costs.items())), 3)  # the order given does not matter
    loads = _loads(costs, assigned, 3)
    assert max(loads) - min(loads) <= max(costs.values())  # greedy: within one unit of each other
    # longest first: four short shapes dealt before the long one would leave it on a loaded shard (6 against 2)
    late_long = {_unit(1): 1.0, _unit(2): 1.0, _unit(3): 1.0, _unit(4): 1.0, _unit(5): 4.0}
    assert sorted(_loads(late_long, balance.split(late_long, 2), 2)) == [4.0, 4.0]
    # LPT's bound: the longest shard within 4/3 of the least any split can do (the mean load, or the longest shape)
    uneven = {_unit(n): float((n * 37) % 23 + 1) for n in range(40)}
    for count in (2, 3, 5):
        bound = max(sum(uneven.values()) / count, max(uneven.values()))
        assert max(_loads(uneven, balance.split(uneven, count), count)) <= 4 / 3 * bound


@pytest.mark.parametrize("count", [2, 3])
def test_shards_are_disjoint_cover_the_plan_and_keep_shapes_whole(count):
    whole = shards.planned(Settings(grid="zoo", devices="cpu"))  # zoo: every shape in jacobian and train mode
    parts = [shards.planned(Settings(grid="zoo", devices="cpu", shard=f"{k}/{count}")) for k in range(1, count + 1)]
    keys = [{c.key(s, d) for d in p.devices for c in p.cases for s in p.strategies_for(c)} for p in parts]
    assert sum(len(k) for k in keys) == len(set().union(*keys)) == whole.planned_cases  # disjoint and covering
    units = [{shards.unit(c) for c in p.cases} for p in parts]
    assert sum(len(u) for u in units) == len(set().union(*units))  # a shape is in one shard only ...
    for part, part_units in zip(parts, units, strict=True):
        assert {c for c in whole.cases if shards.unit(c) in part_units} == set(part.cases)  # ... with all its modes
    assert all(p.plan_hash == whole.plan_hash and p.total_cases == whole.planned_cases for p in parts)
    assert [p.run_id for p in parts] == [f"zoo-{whole.plan_hash[:8]}.shard-{k}-of-{count}"
                                         for k in range(1, count + 1)]
    assert len({p.shard.split for p in parts}) == 1


def test_shards_are_balanced_by_predicted_cost():
    """The split of the quick grid in 4, weighed by what `make plan` predicts for each case (its forecast, not the
    costs the split was given): within one shape of each other, and more even than dealing the shapes by count."""
    from bench.scale import costs, forecast

    whole = shards.planned(Settings(grid="quick", devices="cpu"))
    predicted = forecast.forecast(whole, costs.default())
    shape_s: dict = {}
    for c in predicted.cases:
        shape_s[shards.unit(c.case)] = shape_s.get(shards.unit(c.case), 0.0) + c.seconds
    for (case, _), seconds in predicted.shapes_s.items():
        shape_s[shards.unit(case)] += seconds
    loads = _loads(shape_s, shards.assignment(whole, 4), 4)
    assert max(loads) - min(loads) <= max(shape_s.values())
    by_count = _loads(shape_s, balance.split(dict.fromkeys(shape_s, 1.0), 4), 4)
    assert max(loads) - min(loads) < (max(by_count) - min(by_count)) / 2  # dealing shapes by count is not as even


def test_the_plan_hash_follows_what_is_measured_and_not_the_shard(monkeypatch):
    base = Settings(grid="smoke", devices="cpu", strategies="grad_loop,vmap_jacrev")
    h = shards.planned(base).plan_hash
    assert shards.planned(dataclasses.replace(base, shard="2/3", run="x", results_dir="elsewhere")).plan_hash == h
    for change in ({"grid": "seed"}, {"strategies": "grad_loop"}, {"dtype": "float64"}, {"mode": "train"},
                   {"time_budget": "9"}, {"memory_budget": "1GiB"}):
        assert shards.planned(dataclasses.replace(base, **change)).plan_hash != h, change
    import torch

    monkeypatch.setattr(torch, "__version__", "0.0.1-other")
    assert shards.planned(base).plan_hash != h


@pytest.mark.parametrize("spec", ["0/2", "3/2", "1/0", "a/b", "1", "1/2/3"])
def test_a_bad_shard_is_one_line(tmp_path, spec, monkeypatch, capsys):
    code, _, err = bench_main(tmp_path, "run", "--grid", "smoke", "--shard", spec, monkeypatch=monkeypatch,
                              capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "SHARD=" in err
    assert not (tmp_path / "results").exists()


# ---- shard runs, merged ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sharded(tmp_path_factory, whole_smoke_run):
    """The smoke grid (three strategies) as one run, and as two shard runs of the same plan."""
    root = tmp_path_factory.mktemp("shards")
    copy_run(whole_smoke_run, root)
    for k in (1, 2):
        proc = run_bench(root, "run", *SMOKE, "--run", "s", "--shard", f"{k}/2", "--no-report")
        assert proc.returncode == 0, proc.stderr
    return root


def _copy(sharded: Path, tmp_path: Path) -> Path:
    shutil.copytree(sharded / "results", tmp_path / "results", symlinks=True)
    return tmp_path


def _statuses(folder: Path) -> dict[str, str]:
    return {r.case_id: r.status for r in results.read_cases(folder / "cases.jsonl")}


@pytest.mark.slow
def test_each_shard_is_a_run_folder_that_names_its_shard_and_plan(sharded):
    envs = [results.read_json(sharded / "results" / f"s.shard-{k}-of-2" / "env.json") for k in (1, 2)]
    whole = results.read_json(sharded / "results" / "whole" / "env.json")
    assert [e["shard"]["index"] for e in envs] == [1, 2] and {e["shard"]["count"] for e in envs} == {2}
    assert envs[0]["plan_hash"] == envs[1]["plan_hash"] == whole["plan_hash"] and whole["shard"] is None
    assert envs[0]["plan_cases"] == whole["planned_cases"] == sum(e["planned_cases"] for e in envs)
    assert "shard" not in whole["fingerprint"] and envs[0]["fingerprint"]["shard"]["shard"] == "1/2"


@pytest.mark.slow
def test_a_shard_resumes_on_its_own(sharded, tmp_path):
    root = _copy(sharded, tmp_path)
    proc = run_bench(root, "run", *SMOKE, "--run", "s", "--shard", "2/2", "--resume", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "0 cases to measure" in proc.stdout


@pytest.mark.slow
def test_merged_shards_are_the_run_and_merging_again_changes_nothing(sharded, tmp_path):
    root = _copy(sharded, tmp_path)
    proc = run_bench(root, "merge", "s")
    assert proc.returncode == 0, proc.stderr
    merged = root / "results" / "s"
    assert _statuses(merged) == _statuses(root / "results" / "whole")  # same case ids, same statuses
    assert "planned 12, finished 12" in proc.stdout  # 4 shapes x 3 strategies
    env = results.read_json(merged / "env.json")
    assert env["run_id"] == "s" and [s["index"] for s in env["shards"]] == [1, 2] and env["merged"]["missing"] == []
    assert env["status_counts"] == results.read_json(root / "results" / "whole" / "env.json")["status_counts"]
    for name in ("summary.csv", "report.md", "report.html", "verdicts.jsonl", "benchmark.json"):
        assert (merged / name).is_file(), name
    benchmarks = json.loads((merged / "benchmark.json").read_text())["benchmarks"]
    per_case = [b for b in benchmarks if (b.get("extra_info") or {}).get("kind") == "case"]
    assert len(per_case) == env["status_counts"]["ok"]  # one per timed case, once (merged, then finished)
    assert len(benchmarks) - len(per_case) == 4  # and pytest-benchmark's own forward pass of each shape
    assert "Fastest autodiff strategy per shape" in (merged / "report.md").read_text()
    shard_envs = [results.read_json(root / "results" / f"s.shard-{k}-of-2" / "env.json") for k in (1, 2)]
    assert [(p["shard"], p["process"]) for p in env["processes"]] == [
        (k, p["process"]) for k, e in enumerate(shard_envs, start=1) for p in e["processes"]]  # both shards, both
    for phase in ("validation", "timing"):  # worker processes each: the merged phases add up what they spent
        assert env["phases"][phase] == pytest.approx(sum(e["phases"][phase] for e in shard_envs), abs=0.02)
    from bench.scale import costs

    model = costs.fit([merged])  # a merged run predicts like any run (FROM=results/s)
    assert model.structures == ["processes"] and len(model.samples) == 12 and model.window_factor >= 1

    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _files(root)}
    again = run_bench(root, "merge", "s")
    assert again.returncode == 0, again.stderr
    assert "nothing changed" in again.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _files(root)} == before


def _files(root: Path) -> list[Path]:
    return sorted(p for d in ("results/s", "plots/s") for p in (root / d).rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_merge_with_a_shard_missing_merges_the_rest_and_names_it(sharded, tmp_path):
    root = _copy(sharded, tmp_path)
    shutil.rmtree(root / "results" / "s.shard-2-of-2")
    first = _statuses(root / "results" / "s.shard-1-of-2")
    proc = run_bench(root, "merge", "s", "--no-report")
    assert proc.returncode == 1
    assert f"planned 12, finished {len(first)}, missing shards 2/2" in proc.stderr
    assert "make bench RUN=s SHARD=k/2" in proc.stderr
    assert _statuses(root / "results" / "s") == first
    assert results.read_json(root / "results" / "s" / "env.json")["merged"]["missing"] == [2]


@pytest.mark.slow
def test_a_merge_refuses_shards_of_two_plans_in_one_line(sharded, tmp_path, monkeypatch, capsys):
    root = _copy(sharded, tmp_path)
    env_path = root / "results" / "s.shard-2-of-2" / "env.json"  # shard 2 as another plan (another grid, say) wrote it
    env = results.read_json(env_path)
    results.write_json(env_path, env | {"plan_hash": "0123456789abcdef"})
    code, _, err = bench_main(root, "merge", "s", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and err.count("\n") == 1
    assert "shards of different plans" in err and "s.shard-2-of-2" in err
    assert not (root / "results" / "s").exists()


@pytest.mark.slow
def test_a_merge_refuses_a_folder_that_is_not_a_merge(sharded, tmp_path):
    root = _copy(sharded, tmp_path)
    shutil.copytree(root / "results" / "whole", root / "results" / "s")
    before = (root / "results" / "s" / "cases.jsonl").read_bytes()
    proc = run_bench(root, "merge", "s")
    assert proc.returncode == 2 and "not a merge" in proc.stderr
    assert (root / "results" / "s" / "cases.jsonl").read_bytes() == before


def test_merge_without_shards_or_run_is_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = bench_main(tmp_path, "merge", "nothing", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "no shards of run 'nothing'" in err
