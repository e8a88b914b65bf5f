"""The worker processes: every timed call runs in a forked child of a plain worker, so a strategy that crashes or
never returns ends its own case, not its shape, its pass or the run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from bench import results
from tests.helpers import REPO, bench_env, install_planted, run_bench

pytestmark = pytest.mark.slow


def test_a_crashing_strategy_ends_its_own_case_and_the_run_goes_on(tmp_path):
    site = install_planted(tmp_path / "site", deadly=True)
    proc = run_bench(tmp_path, "run", "--grid", "smoke", "--strategies", "grad_loop,planted_crash,vmap_jacrev",
                     "--run", "r", "--no-report", "--processes", "1", "--fidelity", "0", site=site)
    assert proc.returncode == 0, proc.stderr
    records = results.read_cases(tmp_path / "results" / "r" / "cases.jsonl")
    crashed = [r for r in records if r.strategy == "planted_crash"]  # (its warm-up call has two samples)
    assert crashed and all(r.status == "error" for r in crashed)
    assert all("died of signal 11 in planted_crash's first call" in r.message for r in crashed), crashed[0].message
    others = [r for r in records if r.strategy == "grad_loop" and r.model == "mlp"]
    assert others and all(r.status == "ok" for r in others)  # timed in a new child, after the crash


HANG = textwrap.dedent('''
    import json, sys
    import strategies
    from bench.run.passes import Pass
    from bench.run.session import open_run
    from bench.scale.shards import planned
    from bench.spec.settings import Settings

    plan = planned(Settings(grid="smoke", strategies="planted_hang,grad_loop", run="h", processes="1"))
    folder = open_run(plan)
    first = Pass(plan, process=1)
    first.guard_s = lambda cases: 8.0  # the host's watchdog, short for the test
    case = next(c for c in plan.cases if c.model == "mlp" and c.sizes.batch == 8 and c.sizes.out_dim == 2)
    found = []
    first.measure(case, "cpu", ["planted_hang", "grad_loop"], lambda r, larger: found.append((r.as_dict(), larger)))
    first.close(folder.path, False)
    print(json.dumps(found))
''')


def test_a_call_that_never_returns_is_killed_and_said_and_the_shape_goes_on(tmp_path):
    site = install_planted(tmp_path / "site", deadly=True)
    proc = subprocess.run([sys.executable, "-c", HANG], cwd=tmp_path, env=bench_env(site), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    found = {r["strategy"]: (r, larger) for r, larger in json.loads(proc.stdout.strip().splitlines()[-1])}
    hung, larger = found["planted_hang"]
    assert hung["status"] == "timeout" and larger  # a call that does not return: larger shapes are skipped
    assert "silent for 8 s in planted_hang's first call" in hung["message"]
    assert found["grad_loop"][0]["status"] == "ok"
    assert REPO  # the worker ran this checkout's code (bench_env puts it first on PYTHONPATH)


POOL = textwrap.dedent('''
    import json, time
    from bench.run.passes import Pass
    from bench.run.session import open_run
    from bench.run.workers import Pool, WorkerError
    from bench.scale.shards import planned
    from bench.spec.settings import Settings

    plan = planned(Settings(grid="smoke", strategies="grad_loop", run="p", processes="2"))
    folder = open_run(plan)
    pool = Pool(folder.path, 2)
    procs = {p: w.proc for p, w in pool._waiting.items()}
    both_alive = all(proc.poll() is None for proc in procs.values())
    first = Pass(plan, process=1, pool=pool)
    taken = first.worker.proc is procs[1]
    second_started = pool._waiting[2]._started is True  # take(1) waited for every worker of the pool
    pool.close()  # the second one no pass took
    second_ended = procs[2].wait(timeout=60) is not None
    first.close(folder.path, False)
    broken = Pool(folder.path / "missing", 1)
    try:
        broken.take(1)
        refused = ""
    except WorkerError as exc:
        refused = str(exc)
    print(json.dumps([both_alive, taken, second_started, second_ended, refused]))
''')


def test_a_runs_workers_start_together_and_a_pass_takes_its_own_once_all_have_started(tmp_path):
    proc = subprocess.run([sys.executable, "-c", POOL], cwd=tmp_path, env=bench_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    both_alive, taken, second_started, second_ended, refused = json.loads(proc.stdout.strip().splitlines()[-1])
    assert both_alive and taken and second_started and second_ended
    assert refused.startswith("worker process 1 did not start")
