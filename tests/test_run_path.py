"""The run path: `pytest bench/run/suite.py` run directly goes through the same plugin as `make bench`; plots follow
the results folder wherever it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.results import plots_dir, read_cases
from tests.helpers import ONE_PROCESS, REPO, bench_env, run_bench


def pytest_suite(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", str(REPO / "bench" / "run" / "suite.py"), "-q",
                           "-p", "no:cacheprovider", f"--rootdir={REPO}", *args],
                          cwd=cwd, env=bench_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_pytest_on_the_suite_runs_the_same_plugin(tmp_path):
    proc = pytest_suite(tmp_path, "--grid", "smoke", "--strategies", "analytic,grad_loop", "--run", "direct",
                        "--results-dir", str(tmp_path / "out"), "--dtype", "float64", *ONE_PROCESS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_cases(tmp_path / "out" / "direct" / "cases.jsonl")
    assert len(records) == 2 * 4 and {r.dtype for r in records} == {"float64"}
    assert (tmp_path / "out" / "direct" / "summary.csv").is_file()
    assert "[   8/8 eta" in proc.stdout  # the plugin's progress line


@pytest.mark.slow
def test_pytest_on_the_suite_refuses_bad_input_in_one_line(tmp_path):
    proc = pytest_suite(tmp_path, "--grid", "nope", "--results-dir", str(tmp_path / "out"))
    assert proc.returncode == 4  # pytest's usage error
    assert "unknown grid 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_plots_mirror_the_results_folder(tmp_path):
    assert plots_dir(tmp_path / "results" / "a") == tmp_path / "plots" / "a"
    assert plots_dir(tmp_path / "results" / "reference" / "a") == tmp_path / "plots" / "reference" / "a"
    assert plots_dir(tmp_path / "elsewhere" / "a") == tmp_path / "plots" / "a"  # --results-dir elsewhere
    (tmp_path / "results" / "a").mkdir(parents=True)
    (tmp_path / "results" / "latest").symlink_to("a")
    assert plots_dir(tmp_path / "results" / "latest") == tmp_path / "plots" / "a"


@pytest.mark.slow
def test_a_run_in_another_results_dir_draws_its_plots_beside_it(tmp_path):
    proc = run_bench(tmp_path, "run", "--grid", "smoke", "--strategies", "analytic,grad_loop", "--run", "r",
                     "--results-dir", "box/res", *ONE_PROCESS)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "box" / "res" / "r" / "report.html").is_file()
    assert not (tmp_path / "plots").exists()
    pngs = list((tmp_path / "box" / "plots" / "r").glob("*.png"))
    assert pngs
    report = (tmp_path / "box" / "res" / "r" / "report.md").read_text()
    assert all(f"](../../plots/r/{png.name})" in report for png in pngs)


LAYERS = """
import sys
import {modules}
loaded = set(sys.modules)
print(sorted(m for m in {forbidden} if m in loaded))
"""


@pytest.mark.parametrize("modules,forbidden", [
    ("bench.report.run_report, bench.report.compare, bench.report.recommend", ["torch", "strategies", "bench.run"]),
    ("bench.run.plugin, bench.harness.runner, bench.cli", ["bench.report", "bench.report.tables", "bench.report.plots",
                                                       "bench.report.frames", "matplotlib"]),  # measuring
    ("bench", ["torch", "strategies", "bench.tuning.autotune"]),  # `import bench` stays light: autotune loads on use
    ("bench.tuning.autotune", ["bench.report", "matplotlib"]),  # autotune reads result files only for results=
    ("bench.tuning.autotune, bench.tuning.tuned, bench.tuning.race, bench.tuning.explain",
     ["pytest", "_pytest", "pandas", "matplotlib", "bench.report"]),  # a library call: no test, table or plot
    # library (runs.py reads result files only when results= is given)
])
@pytest.mark.slow
def test_measurement_and_reporting_stay_apart(modules, forbidden):
    code = LAYERS.format(modules=modules, forbidden=forbidden)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=bench_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_from_bench_import_autotune_loads_no_test_table_or_plot_library():
    code = ("import sys\nfrom bench import autotune\n"
            "print(sorted(m for m in ('pytest', '_pytest', 'pandas', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=bench_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_from_bench_import_autotune_gives_the_function_whatever_was_imported_before():
    code = "import bench.tuning.autotune, bench.tuning.cache\nfrom bench import autotune\nprint(autotune.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=bench_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "autotune"
