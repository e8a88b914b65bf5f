"""The second worker process of a run (`python -m bench retime RUN`, started by `python -m bench run`): each
shape's contenders timed again, together, in a fresh process; their rounds are added to their records as this
process's. A resumed run re-times only the shapes whose contenders have one process's rounds.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

from bench import results
from bench.run import measure, session
from bench.run.plan import plan_run
from bench.run.runner import ShapeRunner
from bench.run.settings import Settings
from bench.schema import CaseRecord, fmt_time

PROCESS = 2


def retime(folder: Path) -> int:
    """Re-time the run's pending shapes; 130 when interrupted (Ctrl-C), else 0."""
    started = time.perf_counter()
    env = results.read_json(folder / "env.json")
    known = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: v for k, v in env.get("settings", {}).items() if k in known} | {"resume": True,
                                                                                             "force": False})
    plan = plan_run(settings)
    records = session.attach(plan).finished
    pending = [(device, case) for device in plan.devices for case in plan.cases
               if any(needs_retime(records.get(case.key(n, device))) for n in plan.strategies_for(case))]
    phases = measure.Phases()
    runner = ShapeRunner(plan, phases, run_usual_s=first_process_usual(env))
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(True))
    try:
        for n, (device, case) in enumerate(pending, start=1):
            if interrupted:
                break
            shape = [r for r in (records.get(case.key(name, device)) for name in plan.strategies_for(case)) if r]
            updated = runner.retime_shape(case, device, shape, lambda r: results.append_case(folder / "cases.jsonl",
                                                                                               r))
            print(progress_line(n, len(pending), device, case.shape_id, updated), flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
        session.record_process(folder, PROCESS, phases.rounded(), runner.calibration.summary(),
                               time.perf_counter() - started, bool(interrupted))
    return session.EXIT_INTERRUPTED if interrupted else 0


def first_process_usual(env: dict) -> float | None:
    """The usual calibration time of the run's first process (its latest session): the speed this one is held to."""
    first = [p for p in env.get("processes", []) if p.get("process") == 1 and p.get("calibration")]
    return first[-1]["calibration"].get("usual_s") if first else None


def needs_retime(record: CaseRecord | None) -> bool:
    return record is not None and record.status == "ok" and bool(record.contender) and len(record.process_rounds) < 2


def progress_line(n: int, total: int, device: str, shape: str, updated: list[CaseRecord]) -> str:
    """"[  3/18] second process cpu-mlp-B32-H64-in8-out8: grad_batched 229 µs, jacobian_sum 241 µs"."""
    times = ", ".join(f"{r.strategy} {fmt_time(r.time_median_s)}" for r in updated) or "nothing to time"
    return f"[{n:>4}/{total}] second process {device}-{shape}: {times}"
