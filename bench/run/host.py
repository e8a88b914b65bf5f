"""A run's life in the host process (`python -m bench run`, or pytest on bench/run/suite.py): pass 1 under pytest,
pass 2 with its fidelity check, the run's numbers, the report, the exit code.

The host never times anything: pass 1 hands each shape to the first worker process (bench/run/plugin.py), pass 2
each shape's contenders to a second one (bench/run/passes.py). Between the shapes of pass 2, a sample of the run's
cases is timed again in fresh Python processes by torch.utils.benchmark.Timer, as the user's own program would
(bench/run/fidelity.py): how far the run's numbers are from that goes into env.json and the report.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import fidelity, results
from bench.harness import environment, machine
from bench.run import fresh_check, session
from bench.run.passes import Pass
from bench.run.session import RunFolder
from bench.run.workers import Pool
from bench.schema import CaseRecord
from bench.spec.grid import Case
from bench.spec.plan import RunPlan

EXIT_INTERRUPTED = 130


Report = Callable[[Path], None]  # builds the report of a finished run folder (bench/cli.py hands it in)


def run(plan: RunPlan, folder: RunFolder, expected: tuple[dict[str, float], float] | None = None,
        report: Report | None = None) -> int:
    """Measure the plan into its open folder, finish it, report it (unless NO_REPORT); the exit code of `python -m
    bench run`. `expected`: the cost model's seconds per case id and for the whole run (bench/scale/forecast.py),
    for the progress line's ETA."""
    import pytest

    from bench.run.plugin import JacobenchPlugin

    for note in plan.notes:
        print(f"jacobench: note: {note}", flush=True)
    pending = plan.planned_cases - len(folder.finished)
    print(f"jacobench: run {plan.run_id}: grid {plan.grid.name}, {len(plan.cases)} shapes, "
          f"{len(plan.strategy_names)} strategies, {len(plan.devices)} device(s) ({', '.join(plan.devices)}); "
          f"{pending} cases to measure" + (f", {len(folder.finished)} already done" if folder.finished else ""),
          flush=True)
    json_name = ".benchmark-resumed.json" if plan.settings.resume else "benchmark.json"
    load = environment.Load()
    pool = Pool(folder.path, plan.processes)  # every pass's worker starts now, beside pytest's start
    try:
        plugin = JacobenchPlugin(plan, folder, pool)
        if expected:
            per_case, total_s = expected
            plugin.progress.expected = per_case
            plugin.progress.expected_total_s = total_s - sum(per_case.get(r.case_id, 0.0)
                                                             for r in folder.finished.values())
        code = _pytest(plugin, folder.path / json_name)
        if plan.settings.resume:
            results.merge_benchmark_json(folder.path / "benchmark.json", folder.path / json_name)
        if code not in (pytest.ExitCode.OK, pytest.ExitCode.INTERRUPTED, pytest.ExitCode.NO_TESTS_COLLECTED):
            print(f"jacobench: the suite ended with pytest exit code {int(code)}; results so far are in "
                  f"{folder.path}", file=sys.stderr)
        complete(plan, plugin.interrupted, load, report, pool)
    finally:
        pool.close()
    return exit_code(results.read_json(folder.path / "env.json"), code == pytest.ExitCode.OK
                     or code == pytest.ExitCode.NO_TESTS_COLLECTED, folder.path)


def complete(plan: RunPlan, interrupted: bool, load: environment.Load | None = None, report: Report | None = None,
             pool: Pool | None = None) -> None:
    """After pass 1: the later passes, with the fidelity check in the second (unless interrupted), the run's numbers,
    the report. `load`: what else used the machine since the run started, recorded in env.json; `pool`: the run's
    workers, started with it."""
    for process in range(2, plan.processes + 1):
        if interrupted:
            break
        interrupted = later_pass(plan, process, pool)
    if pool is not None:
        pool.close()  # the workers of passes with nothing to time
    if load is not None:
        session.record_load(plan.folder, load.during())
    counts = session.finish(plan.folder, interrupted)
    print(f"jacobench: {sum(counts.values())} cases in {plan.folder}: "
          + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())), flush=True)
    line = fidelity.summary_line(results.read_json(plan.folder / "env.json").get("fidelity"))
    if line:
        print(f"jacobench: {line}", flush=True)
    if report is not None and not plan.settings.no_report:
        report(plan.folder)


def later_pass(plan: RunPlan, process: int, pool: Pool | None = None) -> bool:
    """Each shape's contenders timed again in worker process `process` (2, 3, ...), largest shapes first; in the
    second, the fidelity check's fresh processes between its shapes. True when Ctrl-C stopped it."""
    path = plan.folder / "cases.jsonl"
    records = {r.key: r for r in results.read_cases(path)}
    pending = [(device, case) for device, case, names in reversed(list(plan.shapes()))
               if any(_needs_retime(records.get(case.key(n, device)), process) for n in names)]
    if not pending:
        return False
    print(f"jacobench: worker process {process}: each shape's contenders timed again in a fresh process", flush=True)
    env = results.read_json(plan.folder / "env.json")
    usual_s = _first_pass_usual(env)
    check = fresh_check.Check(plan.fidelity if process == 2 else 0.0, records.values(), pending,
                              _first_pass_s(env), {name: d.spec for name, d in plan.model_defs.items()}, plan.threads,
                              usual_s)
    interrupted: list[bool] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(True))
    worker = Pass(plan, process=process, usual_s=usual_s, pool=pool)
    ran_slow = _ran_slow(env, usual_s)
    try:
        for n, (device, case) in enumerate(pending, start=1):
            if interrupted:
                break
            check.time_fresh(device, case.shape_id)  # right before the worker: a slow moment hits both
            updated: list[CaseRecord] = []

            def done(record: CaseRecord, predicts_larger: bool, updated: list[CaseRecord] = updated) -> None:
                results.append_case(path, record)
                updated.append(record)

            worker.retime(case, device, _shape_records(plan, records, device, case), done,
                          ran_slow.get(f"{device}-{case.shape_id}", ""))
            print(_progress_line(n, len(pending), process, device, case.shape_id, updated), flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
        worker.close(plan.folder, bool(interrupted))
        if process == 2:
            check.save(plan.folder)
    return bool(interrupted)


def _needs_retime(record: CaseRecord | None, process: int) -> bool:
    return (record is not None and record.status == "ok" and bool(record.contender)
            and len(record.process_rounds) < process)


def _shape_records(plan: RunPlan, records: dict[tuple, CaseRecord], device: str, case: Case) -> list[CaseRecord]:
    return [r for r in (records.get(case.key(n, device)) for n in plan.strategies_for(case)) if r]


def _first_pass_calibration(env: dict[str, Any]) -> dict[str, Any]:
    """The calibration summary of the run's first pass (its latest session; {} when none)."""
    first = [p for p in env.get("processes", []) if p.get("process") == 1 and p.get("calibration")]
    return first[-1]["calibration"] if first else {}


def _first_pass_usual(env: dict[str, Any]) -> float | None:
    """The usual calibration time of the run's first pass (its latest session): the speed the second is held to."""
    return _first_pass_calibration(env).get("usual_s")


def _ran_slow(env: dict[str, Any], usual_s: float | None) -> dict[str, str]:
    """The shapes the first pass timed while the machine ran slower than the run's usual speed, seen in hindsight:
    the median of the calibrations of the shape's timing over DRIFT_LIMIT x the pass's usual level. Each shape is held
    to the usual level of the shapes before it, so the first shapes of a run that starts in a slow period are held to
    that period (one run here timed its first shape ×1.7 slower, every eager strategy of it, with nothing set aside)."""
    if not usual_s:
        return {}
    shapes = _first_pass_calibration(env).get("shapes") or {}
    return {shape: f"the machine ran ×{median / usual_s:.2f} slower than the run's usual speed (the median of its "
                   "calibrations, seen after the pass)"
            for shape, median in shapes.items() if median > machine.DRIFT_LIMIT * usual_s}


def _first_pass_s(env: dict[str, Any]) -> float:
    return sum(p.get("wall_s", 0.0) for p in env.get("processes", []) if p.get("process") == 1)


def _progress_line(n: int, total: int, process: int, device: str, shape: str, updated: list[CaseRecord]) -> str:
    """"[  3/18] process 2 cpu-mlp-B32-H64-in8-out8: grad_batched 229 µs, jacobian_sum 241 µs"."""
    from bench.schema import fmt_time

    times = ", ".join(f"{r.strategy} {fmt_time(r.time_median_s)}" for r in updated) or "nothing to time"
    return f"[{n:>4}/{total}] process {process} {device}-{shape}: {times}"


def _pytest(plugin: Any, benchmark_json: Path) -> int:
    """bench/run/suite.py under pytest with the run as a plugin; pytest's own terminal output is off (the plugin prints
    a line per case)."""
    import pytest

    storage = tempfile.mkdtemp(prefix="jacobench-pytest-benchmark-")
    try:
        return pytest.main([
            str(Path(__file__).parent / "suite.py"),
            "-p", "no:cacheprovider", "-p", "no:terminal", "-s", "-W", "ignore::FutureWarning",
            f"--rootdir={Path(__file__).parents[2]}",
            f"--benchmark-json={benchmark_json}",
            "--benchmark-storage", storage,  # unused (no --benchmark-save), but pytest-benchmark creates it
        ], plugins=[plugin])
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def exit_code(env: dict[str, Any], suite_ok: bool, folder: Path) -> int:
    if env.get("interrupted"):
        return EXIT_INTERRUPTED
    counts = env.get("status_counts") or {}
    if counts.get("error") and not counts.get("ok"):
        print(f"jacobench: no case ran ok and {counts['error']} ended in error: see their messages in "
              f"{folder / 'summary.csv'}", file=sys.stderr)
        return 1
    return 0 if suite_ok else 1
