"""Bad input gets one line, exit 2 and touches nothing; kill -9 loses nothing; resume; Ctrl-C; one process per run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from run_fixtures import BASE, record

from bench import results
from bench.cli import main
from bench.schema import case_key
from tests.helpers import ONE_PROCESS, REPO, bench_command, bench_env, run_bench

FAST = "grad_summed,grad_loop,analytic"
MANY = 16 * 3  # cases of MANY_CASES: enough to be cut off in the middle
MANY_CASES = """
description = "many tiny cases, for kill/resume/interrupt tests"
[base]
batch = 4
hidden = 8
in_dim = 2
out_dim = 2
[sweep]
batch = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
[budget]
target_s = 0.05
"""


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.fixture(scope="module")
def existing(tmp_path_factory) -> Path:
    """A folder with a finished smoke run in results/done, to prove bad input never touches it."""
    root = tmp_path_factory.mktemp("existing")
    proc = run_bench(root, "run", "--grid", "smoke", "--run", "done", "--strategies", FAST, *ONE_PROCESS)
    assert proc.returncode == 0, proc.stderr
    (root / "grids").mkdir()
    (root / "grids" / "bad.toml").write_text("[base\nbatch = ")
    (root / "grids" / "zero.toml").write_text("[base]\nbatch = 0\nhidden = 4\nin_dim = 2\nout_dim = 2\n")
    (root / "grids" / "empty.toml").write_text("[base]\nbatch = 2\nhidden = 4\nin_dim = 2\nout_dim = 2\n"
                                               "[sweep]\nbatch = []\n")
    (root / "models.py").write_text(
        "import torch\n"
        "def good(i, h, o):\n    return torch.nn.Sequential(torch.nn.Linear(i, h), torch.nn.Linear(h, o))\n"
        "def wrong_shape(i, h, o):\n    return torch.nn.Linear(i, o + 1)\n"
        "class Pair(torch.nn.Linear):\n    def forward(self, x):\n        return super().forward(x), x\n"
        "def pair(i, h, o):\n    return Pair(i, o)\n"
        "def broken(i, h, o):\n    raise ValueError('no such layer')\n"
        "def half(i, h, o):\n    return torch.nn.Linear(i, o).half()\n"
    )
    (root / "results" / "empty").mkdir()
    (root / "results" / "empty" / "cases.jsonl").write_text("")
    (root / "results" / "corrupt").mkdir()
    (root / "results" / "corrupt" / "cases.jsonl").write_text("{not json\n\x00\x01garbage\n")
    return root


BAD_INPUTS = {
    "unknown grid": (["run", "--grid", "nope"], "unknown grid 'nope'"),
    "grid not TOML": (["run", "--grid", "grids/bad.toml"], "not valid TOML"),
    "zero size": (["run", "--grid", "grids/zero.toml"], "base.batch"),
    "empty axis": (["run", "--grid", "grids/empty.toml"], "sweep.batch"),
    "unknown strategy": (["run", "--grid", "smoke", "--strategies", "grad_loop,fastest"], "unknown strategy 'fastest'"),
    "unknown device": (["run", "--grid", "smoke", "--devices", "tpu"], "unknown device 'tpu'"),
    "missing model file": (["run", "--grid", "smoke", "--model", "nowhere.py:make"], "nowhere.py not found"),
    "missing factory": (["run", "--grid", "smoke", "--model", "models.py:absent"], "no function 'absent'"),
    "model wrong shape": (["run", "--grid", "smoke", "--model", "models.py:wrong_shape"], "expected (2, 2)"),
    "unknown model preset": (["run", "--grid", "smoke", "--model", "resnet"], "unknown model 'resnet'"),
    "model returns a tuple": (["run", "--grid", "smoke", "--model", "models.py:pair"],
                              "model(x) returned a tuple, expected a Tensor (2, out)"),
    "factory raises": (["run", "--grid", "smoke", "--model", "models.py:broken"],
                       "factory(in_dim=3, hidden=16, out_dim=2) raised ValueError: no such layer"),
    "unknown dtype": (["run", "--grid", "smoke", "--dtype", "float8"], "unknown dtype 'float8'"),
    "bad threads": (["run", "--grid", "smoke", "--threads", "0"], "THREADS='0'"),
    "unknown mode": (["run", "--grid", "smoke", "--mode", "training"], "unknown mode 'training'"),
    "bad compiled": (["run", "--grid", "smoke", "--compiled", "yes"], "COMPILED='yes'"),
    "recommend unknown mode": (["recommend", "--results", "results/done", "--batch", "4", "--hidden", "8",
                                "--in-dim", "2", "--out-dim", "2", "--mode", "fit"], "invalid choice: 'fit'"),
    "run with separator": (["run", "--grid", "smoke", "--run", "a/b"], "invalid run id"),
    "run with dotdot": (["run", "--grid", "smoke", "--run", ".."], "invalid run id"),
    "existing run": (["run", "--grid", "smoke", "--run", "done"], "already exists"),
    "resume missing run": (["run", "--grid", "smoke", "--run", "ghost", "--resume"], "nothing to resume"),
    "resume other settings": (["run", "--grid", "quick", "--run", "done", "--resume"], "settings differ"),
    "bad memory budget": (["run", "--grid", "smoke", "--memory-budget", "lots"], "MEMORY_BUDGET"),
    "bad time budget": (["run", "--grid", "smoke", "--time-budget", "-1"], "TIME_BUDGET"),
    "report missing run": (["report", "results/nothing"], "not found"),
    "report empty run": (["report", "results/empty"], "no finished case"),
    "report corrupt run": (["report", "results/corrupt"], "corrupt"),
    "compare one run": (["compare", "results/done"], "at least two runs"),
    "recommend missing shape": (["recommend", "--results", "results/done", "--batch", "4", "--hidden", "8",
                                 "--in-dim", "2"], "--out-dim"),
    "recommend zero": (["recommend", "--results", "results/done", "--batch", "0", "--hidden", "8", "--in-dim", "2",
                        "--out-dim", "2"], "positive integer"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_one_line_exit_2_nothing_touched(name, existing, capsys, monkeypatch):
    args, expected = BAD_INPUTS[name]
    monkeypatch.chdir(existing)
    before = snapshot(existing)
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jacobench: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert snapshot(existing) == before


@pytest.mark.slow
def test_cuda_without_cuda_in_a_real_process(existing):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_bench(existing, "run", "--grid", "smoke", "--devices", "cuda")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "CUDA is not available" in proc.stderr and "DEVICES=cpu" in proc.stderr


@pytest.mark.slow
def test_make_passes_variables_and_fails_cleanly(existing):
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "bench", "PYTHON=" + bench_command()[0], "GRID=nope",
                           f"RUN=x{os.getpid()}"], capture_output=True, text=True, env=bench_env(), timeout=120)
    assert proc.returncode != 0
    assert "jacobench: error: unknown grid 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_torn_last_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "cases.jsonl"
    results.append_case(path, record("grad_loop", "cpu", BASE, ["base"]))
    with open(path, "a") as f:
        f.write('{"strategy": "grad_lo')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="torn or corrupt"):
        assert len(results.read_cases(path)) == 1
    results.drop_torn_tail(path)
    assert len(results.read_cases(path)) == 1 and path.read_text().endswith("\n")


def start_run(root: Path, run_id: str, *extra: str) -> subprocess.Popen:
    (root / "many.toml").write_text(MANY_CASES)
    return subprocess.Popen(bench_command("run", "--grid", "many.toml", "--run", run_id, "--strategies", FAST,
                                          "--no-report", *ONE_PROCESS, *extra),
                            cwd=root, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.mark.slow
def test_kill_9_then_resume_reruns_nothing(tmp_path):
    cases = tmp_path / "results" / "k" / "cases.jsonl"
    proc = start_run(tmp_path, "k")
    wait_for_lines(cases, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    lines_before = cases.read_text().splitlines()
    assert len(lines_before) >= 10
    finished_before = [json.loads(line) for line in lines_before]  # every line valid JSON
    total = MANY
    assert len(finished_before) < total

    resumed = run_bench(tmp_path, "run", "--grid", "many.toml", "--run", "k", "--strategies", FAST, "--resume",
                        "--no-report", *ONE_PROCESS)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{total - len(finished_before)} cases to measure, {len(finished_before)} already done" in resumed.stdout
    measured = [line for line in resumed.stdout.splitlines() if line.startswith("[") and " eta " in line]
    assert len(measured) == total - len(finished_before)  # the first process measured only the missing cases
    after = {case_key(r): r for r in results.read_cases(cases)}
    assert len(cases.read_text().splitlines()) == len(after) == total  # finished: one line per case, none lost
    for old in finished_before:  # measured before the kill, not again: their first process's rounds are kept
        new = after[case_key(old)]
        assert new.status == old["status"] and new.round_times_s[: len(old["round_times_s"])] == old["round_times_s"]
    summary = (tmp_path / "results" / "k" / "summary.csv").read_text().splitlines()
    assert len(summary) == total + 1
    env = json.loads((tmp_path / "results" / "k" / "env.json").read_text())
    assert env["resumed"] and env["status_counts"]["ok"] == total


@pytest.mark.slow
def test_ctrl_c_stops_after_the_current_case_and_writes_summary(tmp_path):
    folder = tmp_path / "results" / "c"
    proc = start_run(tmp_path, "c")
    wait_for_lines(folder / "cases.jsonl", 5, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = (folder / "cases.jsonl").read_text().splitlines()
    assert 5 <= len(lines) < MANY
    summary = (folder / "summary.csv").read_text().splitlines()
    assert len(summary) == len(lines) + 1
    assert json.loads((folder / "env.json").read_text())["interrupted"] is True


@pytest.mark.slow
def test_force_replaces_a_run(tmp_path):
    (tmp_path / "results" / "f").mkdir(parents=True)
    (tmp_path / "results" / "f" / "cases.jsonl").write_text("old\n")
    proc = run_bench(tmp_path, "run", "--grid", "smoke", "--run", "f", "--strategies", "analytic", "--force",
                     "--no-report", *ONE_PROCESS)
    assert proc.returncode == 0, proc.stderr
    assert "old" not in (tmp_path / "results" / "f" / "cases.jsonl").read_text()


@pytest.mark.slow
def test_a_run_folder_belongs_to_one_process(tmp_path):
    """Two real processes, same RUN, FORCE=1: the second gets one line naming the first's pid and exit 2, and the
    first's files are untouched (each case once); once the first has ended, the folder can be taken again."""
    (tmp_path / "slow.toml").write_text(MANY_CASES.replace("target_s = 0.05", "target_s = 0.5"))
    folder = tmp_path / "results" / "shared"
    first = subprocess.Popen(bench_command("run", "--grid", "slow.toml", "--run", "shared", "--strategies", FAST,
                                           "--force", "--no-report"),
                             cwd=tmp_path, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(folder / "cases.jsonl", 2, first)
    second = run_bench(tmp_path, "run", "--grid", "slow.toml", "--run", "shared", "--strategies", FAST, "--force",
                       "--no-report")
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"jacobench: error: results/shared is in use by pid {first.pid}: wait for that run to finish, or choose "
        "another RUN"]
    assert first.poll() is None, "the first run goes on"
    lines = (folder / "cases.jsonl").read_text().splitlines()
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    after = (folder / "cases.jsonl").read_text().splitlines()
    assert after[: len(lines)] == lines
    keys = [case_key(json.loads(line)) for line in after]
    assert len(keys) == len(set(keys)) >= 2
    again = run_bench(tmp_path, "run", "--grid", "smoke", "--run", "shared", "--strategies", "analytic", "--force",
                      "--no-report", *ONE_PROCESS)
    assert again.returncode == 0, again.stderr  # the lock ended with its process
