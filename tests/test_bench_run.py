"""End-to-end: a real `smoke` run with planted strategies; every result file, column and status is checked."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench import results
from bench.schema import CASE_FIELDS, STATUSES, case_key
from bench.spec import grid
from tests.helpers import install_planted, run_bench

pytestmark = pytest.mark.slow  # every test here runs `python -m bench` in another process

CONTRACT_COLUMNS = ["strategy", "model", "device", "dtype", "batch", "hidden", "in_dim", "out_dim", "status",
                    "time_median_s", "time_iqr_s", "rounds", "forward_median_s", "peak_memory_bytes", "max_abs_error"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    site = install_planted(root / "site")
    proc = run_bench(root, "run", "--grid", "smoke", "--run", "e2e", "--time-budget", "2", "--no-report", site=site)
    assert proc.returncode == 0, proc.stderr
    return root, root / "results" / "e2e", proc


def test_every_file_is_written(smoke_run):
    root, folder, _ = smoke_run
    for name in ("cases.jsonl", "benchmark.json", "env.json", "summary.csv"):
        assert (folder / name).is_file(), name
    assert (root / "results" / "latest").resolve() == folder.resolve()


def test_cases_jsonl_holds_exactly_the_finished_cases(smoke_run):
    _, folder, _ = smoke_run
    lines = (folder / "cases.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    keys = [case_key(r) for r in records]
    assert len(keys) == len(set(keys))
    shapes = grid.expand(grid.load_grid("smoke"))
    strategies_run = {r["strategy"] for r in records}
    assert {"planted_wrong", "planted_slow", "planted_hungry", "analytic"} <= strategies_run
    assert len(records) == len(shapes) * len(strategies_run)
    assert all(set(CASE_FIELDS) == set(r) for r in records)


def test_summary_has_contract_columns_and_one_row_per_case(smoke_run):
    _, folder, _ = smoke_run
    summary = pd.read_csv(folder / "summary.csv")
    assert summary.columns[: len(CONTRACT_COLUMNS)].tolist() == CONTRACT_COLUMNS
    assert len(summary) == len((folder / "cases.jsonl").read_text().splitlines())
    assert set(summary["status"]) <= set(STATUSES)


def test_statuses(smoke_run):
    _, folder, _ = smoke_run
    s = pd.read_csv(folder / "summary.csv")

    def status(strategy, **shape):
        rows = s[s["strategy"] == strategy]
        for k, v in shape.items():
            rows = rows[rows[k] == v]
        return set(rows["status"])

    assert status("planted_wrong", model="mlp") == {"wrong"}
    assert status("planted_hungry") == {"over_budget"}
    assert status("planted_slow", model="mlp", batch=1) == {"ok"}
    assert status("planted_slow", model="mlp", batch=8, out_dim=1) == {"timeout"}
    assert status("planted_slow", model="mlp", batch=8, out_dim=2) == {"skipped"}  # larger than the one timed out
    assert status("analytic", model="mlp_batchnorm") == {"unsupported"}
    assert status("analytic", model="mlp") == {"ok"}
    assert status("jacobian_diagonal", model="mlp_batchnorm") == {"ok"}  # exact on coupled samples
    assert status("jacobian_sum", model="mlp_batchnorm") == {"wrong"}  # silently wrong there
    assert "error" in set(s[s["model"] == "mlp_batchnorm"]["status"])  # vmap refuses BatchNorm in train mode
    assert set(s[s["model"] == "mlp"]["status"]) == {"ok", "wrong", "timeout", "skipped", "over_budget"}


def test_is_jacobian_column_marks_the_sum_over_outputs(smoke_run):
    _, folder, proc = smoke_run
    s = pd.read_csv(folder / "summary.csv")
    summed = s[s["strategy"] == "grad_summed"].set_index("out_dim")["is_jacobian"]
    assert not summed.loc[2].any() and summed.loc[1].all()  # J.sum(1) is J only when out == 1
    assert s[s["strategy"] != "grad_summed"]["is_jacobian"].all()
    assert any("ok (sum, not J)" in line and "grad_summed" in line and "out2" in line
               for line in proc.stdout.splitlines())


def test_a_timeout_skips_larger_cases_of_the_same_strategy(smoke_run):
    _, folder, _ = smoke_run
    records = [r for r in results.read_cases(folder / "cases.jsonl")
               if r.strategy == "planted_slow" and r.model == "mlp"]
    timed_out = [r for r in records if r.status == "timeout"]
    skipped = [r for r in records if r.status == "skipped"]
    assert len(timed_out) == 1 and skipped  # B8-out1 really timed out; B8-out2 (larger) was not attempted
    assert all(r.wall_s < 1 and timed_out[0].case_id.split("-cpu-")[1] in r.message for r in skipped)


def test_numbers_only_for_validated_cases(smoke_run):
    _, folder, _ = smoke_run
    s = pd.read_csv(folder / "summary.csv")
    ok, not_ok = s[s["status"] == "ok"], s[s["status"] != "ok"]
    assert ok["time_median_s"].gt(0).all() and ok["rounds"].ge(1).all() and ok["forward_median_s"].gt(0).all()
    assert (ok["max_abs_error"] <= ok["tolerance"]).all()
    assert not_ok["time_median_s"].isna().all()
    assert (not_ok["message"].fillna("") != "").all()
    wrong = s[s["status"] == "wrong"]
    assert (wrong["max_abs_error"] > wrong["tolerance"]).all()


def test_benchmark_json_holds_every_timed_case_with_its_rounds(smoke_run):
    """pytest-benchmark stays the record of the timings: one entry per ok case holding every kept round of both
    worker processes (what `pytest-benchmark compare` reads), beside the wall time of each shape's measurement."""
    _, folder, _ = smoke_run
    data = json.loads((folder / "benchmark.json").read_text())
    records = {r.case_id: r for r in results.read_cases(folder / "cases.jsonl") if r.status == "ok"}
    cases = [b for b in data["benchmarks"] if b["extra_info"].get("kind") == "case"]
    assert sorted(b["param"] for b in cases) == sorted(records)
    for entry in cases:
        record = records[entry["param"]]
        assert entry["stats"]["data"] == record.round_times_s and entry["stats"]["rounds"] == record.rounds
        assert entry["stats"]["median"] == pytest.approx(record.time_median_s)
    shapes = [b for b in data["benchmarks"] if b["extra_info"].get("kind") == "shape"]
    measured = {r.case_id.removeprefix(f"{r.strategy}-") for r in results.read_cases(folder / "cases.jsonl")
                if r.status not in ("over_budget", "skipped")}
    assert len(shapes) == len(measured) and all(b["stats"]["rounds"] == 1 for b in shapes)  # the host's fixture
    # timed each shape's whole measurement in its worker, once
    assert data["machine_info"]["torch_threads"] >= 1


def test_env_json(smoke_run):
    _, folder, _ = smoke_run
    env = json.loads((folder / "env.json").read_text())
    for key in ("torch", "python", "threads", "tf32", "cpu_model", "devices", "git_commit", "grid", "seed",
                "status_counts", "finished"):
        assert key in env, key
    assert env["grid"]["name"] == "smoke" and env["grid"]["base"]["batch"] == 8
    assert env["devices"]["cpu"]


def test_progress_line_per_case(smoke_run):
    _, folder, proc = smoke_run
    n = len((folder / "cases.jsonl").read_text().splitlines())
    progress = [line for line in proc.stdout.splitlines() if line.startswith("[") and f"/{n} eta" in line]
    assert len(progress) == n
    assert any(" ok " in line and "x fwd" in line for line in progress)


def test_a_tiny_memory_budget_skips_before_running(tmp_path):
    proc = run_bench(tmp_path, "run", "--grid", "smoke", "--run", "tiny", "--strategies", "analytic,grad_loop",
                     "--memory-budget", "100", "--no-report")
    assert proc.returncode == 0, proc.stderr
    records = results.read_cases(tmp_path / "results" / "tiny" / "cases.jsonl")
    assert records and {r.status for r in records} == {"over_budget"}
    assert all(r.predicted_memory_bytes > 100 and "memory budget" in r.message for r in records)
    assert all(r.wall_s < 1 for r in records)  # skipped, not run
