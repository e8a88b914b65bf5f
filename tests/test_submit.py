"""`make submit`: one submitit job array, one shard per task, then the merge; checked without a cluster, against the
local executor and against stand-in `sbatch`/`srun`/`squeue`/`sacct` scripts that record what they were given."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import results
from tests.helpers import SMOKE_THREE as SMOKE
from tests.helpers import bench_command, bench_env, copy_run


def _submitit_path() -> str:
    submitit = pytest.importorskip("submitit", reason="the optional extra: pip install -e '.[cluster]'")
    return str(Path(submitit.__file__).resolve().parents[1])


def _env(extra_path: str = "", bin_dir: Path | None = None) -> dict[str, str]:
    env = bench_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env["PYTHONPATH"], extra_path) if p)
    if bin_dir:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def _submit(cwd: Path, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(bench_command("submit", *args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _statuses(folder: Path) -> dict[str, str]:
    return {r.case_id: r.status for r in results.read_cases(folder / "cases.jsonl")}


@pytest.mark.slow
def test_without_submitit_submit_says_how_to_install_it(tmp_path):
    fake = tmp_path / "site" / "submitit"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = bench_env()
    env["PYTHONPATH"] = f"{tmp_path / 'site'}{os.pathsep}{env['PYTHONPATH']}"
    proc = _submit(tmp_path, *SMOKE, "--shards", "2", env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "pip install -e '.[cluster]'" in proc.stderr


@pytest.mark.slow
def test_local_shards_merged_are_the_same_run(tmp_path, whole_smoke_run):
    env = _env(_submitit_path())
    copy_run(whole_smoke_run, tmp_path)
    proc = _submit(tmp_path, *SMOKE, "--shards", "2", "--executor", "local", "--run", "loc", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "one after another" in proc.stdout  # cpu shards never run side by side without CPU sets
    assert "planned 12, finished 12" in proc.stdout
    merged = tmp_path / "results" / "loc"
    assert _statuses(merged) == _statuses(tmp_path / "results" / "whole")
    assert "Fastest autodiff strategy per shape" in (merged / "report.md").read_text()
    envs = [results.read_json(tmp_path / "results" / f"loc.shard-{k}-of-2" / "env.json") for k in (1, 2)]
    assert [e["shard"]["index"] for e in envs] == [1, 2]
    first, second = sorted(envs, key=lambda e: e["created"])  # one after another: no overlap in time
    assert first["finished"] <= second["created"]


@pytest.mark.slow
def test_cpusets_must_be_disjoint_and_of_one_size(tmp_path):
    env = _env(_submitit_path())
    for sets in ("0-1,1-2", "0-1,2", "x"):
        proc = _submit(tmp_path, *SMOKE, "--shards", "2", "--executor", "local", "--cpusets", sets, env=env)
        assert proc.returncode == 2 and "CPUSETS=" in proc.stderr and proc.stderr.count("\n") == 1


STAND_IN = {
    # sbatch: records its call and the script, answers a job id at once (as SLURM does), and runs the array's tasks
    # one after another in the background, each with the variables SLURM gives a task.
    "sbatch": '''
        script = Path(sys.argv[-1]).read_text()
        record("sbatch", script=script)
        job = 4242 + len(list(LOG.glob("job-*.sh")))
        (LOG / f"job-{job}.sh").write_text(script)
        found = re.search(r"#SBATCH --array=(\\d+)-(\\d+)", script)
        tasks = range(int(found.group(1)), int(found.group(2)) + 1) if found else [0]
        (LOG / f"job-{job}.tasks").write_text(",".join(map(str, tasks)))
        subprocess.Popen([sys.executable, str(Path(__file__).parent / "run_tasks"), str(job)],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"Submitted batch job {job}")
    ''',
    "run_tasks": '''
        job = sys.argv[1]
        for task in (LOG / f"job-{job}.tasks").read_text().split(","):
            state = LOG / f"state-{job}_{task}"
            state.write_text("RUNNING")
            env = dict(os.environ, SLURM_JOB_ID=f"{job}{task}", SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=task,
                       SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NTASKS="1",
                       SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="node1")
            code = subprocess.run(["bash", str(LOG / f"job-{job}.sh")], env=env).returncode
            state.write_text("COMPLETED" if code == 0 else "FAILED")
    ''',
    # srun: runs its command with --output/--error as SLURM expands them.
    "srun": '''
        args, files = sys.argv[1:], {}
        while args and args[0].startswith("--"):
            flag = args.pop(0)
            if flag in ("--output", "--error"):
                files[flag] = args.pop(0)
        record("srun", task=os.environ.get("SLURM_ARRAY_TASK_ID"), runs=args)
        def expand(p):
            e = os.environ
            return (p.replace("%A", e["SLURM_ARRAY_JOB_ID"]).replace("%a", e["SLURM_ARRAY_TASK_ID"])
                    .replace("%j", e["SLURM_JOB_ID"]).replace("%t", "0"))
        out = Path(expand(files["--output"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        err = Path(expand(files.get("--error", files["--output"])))
        with open(out, "a") as o, open(err, "a") as e:
            sys.exit(subprocess.run(args, stdout=o, stderr=e).returncode)
    ''',
    "sacct": '''
        record("sacct")
        jobs = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
        print("JobID|State|NodeList")
        for job in jobs:
            tasks = LOG / f"job-{job}.tasks"
            for task in tasks.read_text().split(",") if tasks.exists() else []:
                state = LOG / f"state-{job}_{task}"
                print(f"{job}_{task}|{state.read_text() if state.exists() else 'PENDING'}|node1")
    ''',
    "squeue": 'record("squeue")',
    "scancel": 'record("scancel")',
}
PRELUDE = '''#!{python}
import json, os, re, subprocess, sys
from pathlib import Path
LOG = Path({log!r})
def record(command, **what):
    with open(LOG / "calls.jsonl", "a") as f:
        f.write(json.dumps({{"command": command, "argv": sys.argv[1:], **what}}) + "\\n")
'''


def stand_in_slurm(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, log = tmp_path / "slurm-bin", tmp_path / "slurm-log"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in STAND_IN.items():
        path = bin_dir / name
        path.write_text(PRELUDE.format(python=sys.executable, log=str(log)) + textwrap.dedent(body))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir, log


@pytest.mark.slow
def test_a_slurm_job_array_runs_one_shard_per_task(tmp_path):
    bin_dir, log = stand_in_slurm(tmp_path)
    env = _env(_submitit_path(), bin_dir)
    proc = _submit(tmp_path, *SMOKE, "--shards", "2", "--executor", "slurm", "--partition", "gpu",
                   "--gpus-per-task", "1", "--cpus-per-task", "2", "--timeout-min", "30", "--run", "sl", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [json.loads(line) for line in (log / "calls.jsonl").read_text().splitlines()]
    (sbatch,) = [c for c in calls if c["command"] == "sbatch"]
    script = sbatch["script"]
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --gpus-per-node=1", "#SBATCH --time=30",
                 "#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=2", "#SBATCH --nodes=1",
                 "#SBATCH --ntasks-per-node=1"):
        assert line in script.splitlines(), line
    assert "submitted 2 tasks as job array 4242 (4242_0 … 4242_1)" in proc.stdout
    assert [c["task"] for c in calls if c["command"] == "srun"] == ["0", "1"]  # each task ran once
    for task, shard in ((0, 1), (1, 2)):  # array task k-1 measured shard k, and nothing else
        out = (tmp_path / "results" / "sl.submitit" / f"4242_{task}" / f"4242_{task}_0_log.out").read_text()
        assert f"shard {shard}/2 on" in out
        env_json = results.read_json(tmp_path / "results" / f"sl.shard-{shard}-of-2" / "env.json")
        assert env_json["shard"]["index"] == shard
    assert "planned 12, finished 12" in proc.stdout
    assert len(_statuses(tmp_path / "results" / "sl")) == 12


@pytest.mark.slow
def test_slurm_without_srun_is_one_line(tmp_path):
    env = _env(_submitit_path())
    env["PATH"] = "/usr/bin:/bin"  # no srun here
    proc = _submit(tmp_path, *SMOKE, "--shards", "2", "--executor", "slurm", env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "EXECUTOR=local" in proc.stderr


def test_local_slots_pin_one_shard_per_gpu_and_keep_cpu_shards_apart(monkeypatch):
    from bench.scale import submit

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    slots, why = submit.local_slots(["cuda"], [], None)
    assert [s.gpus for s in slots] == ["0", "1", "2"] and "one per GPU" in why
    assert [s.gpus for s in submit.local_slots(["cuda"], [], 2)[0]] == ["0", "1"]  # PARALLELISM=2
    slots, why = submit.local_slots(["cpu", "cuda"], [], None)  # CPU timings: one shard at a time, every GPU
    assert slots == [submit.Slot(gpus="0,1,2")] and "one after another" in why
    sets = submit.parse_cpusets("0-1,2-3")
    slots, _ = submit.local_slots(["cpu"], sets, None)
    assert [(s.gpus, s.cpus) for s in slots] == [("", (0, 1)), ("", (2, 3))]
    with pytest.raises(submit.SubmitError, match="DEVICES=cuda"):
        submit.local_slots(["cuda:1"], [], None)


def test_a_slot_is_held_by_one_task_at_a_time(tmp_path):
    from bench.scale import submit

    slots = [submit.Slot(gpus="0"), submit.Slot(gpus="1")]
    with submit._slot(slots, str(tmp_path)) as first, submit._slot(slots, str(tmp_path)) as second:
        assert {first.gpus, second.gpus} == {"0", "1"}
