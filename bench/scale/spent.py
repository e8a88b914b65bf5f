"""How a finished run spent its time, taken apart per case, for the cost model (bench/scale/costs.py).

How a run spends its time (bench/harness/runner.py and timing.py in the workers, bench/run/passes.py and session.py
in the host), and what the model keeps of it:
  - the first worker process, per shape: the model, input and float64 reference (in the wall time of the shape's
    first case), then per strategy its validation call (compiling first, for a compiled one), then every valid
    strategy timed together in one window of about `target_s` per strategy (a case's `wall_s` = its validation +
    its own rounds); the second worker process re-times the contenders (their compiling and validation again, and
    rounds added to `wall_s`); env.json's `processes` holds each process's wall time and seconds per phase
    (startup, warm-up, models, references, validation, compiling, timing), its `phases` the totals plus
    finish and report.
  - per case the model splits `wall_s` into its setup (validation, compiling, the shape's preparation: by the
    case's `setup_s` + VALIDATION_CALLS calls, the rest of the first process's phases outside its windows spread
    evenly over the timed cases) and its rounds (the rest, times the run's window factor: the timing phases over
    the cases' rounds, for the window's own work: calibrations, pauses, set-aside blocks); what the second process
    spent compiling and validating a re-timed case (its setup again, spread so they add up to that process's
    phases); its median call and the processes that timed it.
  - per run: what each shape costs outside its cases (forking its child, the second process's model and warm-up:
    the processes' wall time left over, per shape), finish per case and the report.
  - over the runs, one law for a shape's windows, fitted by least squares to the measured shapes:
    rounds = (WINDOW x `target_s` + SCREEN) x (strategies timed, once per process) + FLOOR x (their MIN_ROUNDS
    rounds per process); SCREEN is the screening every strategy runs whatever `target_s` is. Which strategy of a
    shape gets the rounds depends on the others (a contender keeps running, the others stop at MIN_ROUNDS), so a
    case's own rounds do not carry over to a grid of other strategies or sizes; the shape's do.
Older runs (no `processes`: a separate playoff per shape, one process) stay usable: a case's rounds were `target_s`
and its shape's playoff, its setup the rest of its `wall_s`, and the run's time between cases is per shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench.schema import CaseRecord

NOT_RUN = ("over_budget", "skipped")  # decided by rules before anything runs: nothing of the machine to learn
VALIDATION_CALLS = 1  # calls of a case outside its rounds and its compiling (`setup_s`): the validation call
_TIMESTAMP = "%Y-%m-%dT%H:%M:%S%z"


@dataclass(frozen=True)
class RunCosts:
    """What one fitted run spent outside its cases' own seconds."""

    window_factor: float = 1.0  # a window's wall time / its strategies' rounds (calibrations, pauses, set-asides)
    shape_s: float = 0.0  # per measured shape, outside its cases (heap, the second process's preparation, ...)
    finish_per_case_s: float | None = None
    report_per_case_s: float | None = None
    launch_s: float | None = None  # per worker process; older runs recorded it as phases["start"]
    structure: str = "processes"  # "processes" (issue 18: windows, two processes) | "playoffs" (older runs)


def device_kind(device: str) -> str:
    return device.partition(":")[0]


Part = tuple[float, float, float, float | None, int]  # setup_s, rounds_s, retime_s, call_s, processes


def take_apart(cases: list[CaseRecord], verdicts: list, env: dict[str, Any], target_s: float
               ) -> tuple[list[Part], RunCosts]:
    """A run of two worker processes (issue 18): each case's wall time taken apart, and the run's costs outside its
    cases, from env.json's `processes` and `phases`."""
    first, second = _phases(env, 1), _phases(env, 2)
    first_setup = sum(first.get(k, 0.0) for k in ("validation", "compiling", "models", "references", "warm-up",
                                                   "heap"))  # the heap: mostly the full collection between shapes
    second_setup = second.get("validation", 0.0) + second.get("compiling", 0.0)
    timed = [_timed(r) for r in cases]
    base = [(r.setup_s or 0.0) + VALIDATION_CALLS * r.time_median_s if t else 0.0
            for r, t in zip(cases, timed, strict=True)]
    untimed_s = sum(r.wall_s for r, t in zip(cases, timed, strict=True) if not t)
    spread = (first_setup - untimed_s - sum(base)) / max(sum(timed), 1)  # what the calls do not explain, per case
    setup = [min(max(b + spread, 0.0), r.wall_s) if t else r.wall_s
             for r, t, b in zip(cases, timed, base, strict=True)]
    again = [b if t and len(r.process_rounds) > 1 else 0.0 for r, t, b in zip(cases, timed, base, strict=True)]
    again_scale = second_setup / sum(again) if sum(again) > 0 else 0.0
    rounds = [r.wall_s - s for r, s in zip(cases, setup, strict=True)]
    timing_s = first.get("timing", 0.0) + second.get("timing", 0.0)
    factor = timing_s / sum(rounds) if sum(rounds) > 0 and timing_s > 0 else 1.0
    processes_s = sum(p.get("wall_s") or 0.0 for p in env.get("processes", []))
    inside = sum(setup) + factor * sum(rounds) + second_setup
    shapes = len({_shape_key_of(r) for r in cases if r.status not in NOT_RUN})
    phases = env.get("phases") if isinstance(env.get("phases"), dict) else {}
    parts = [(s, rd * factor, a * again_scale, r.time_median_s if t else None, len(r.process_rounds) if t else 0)
             for r, t, s, rd, a in zip(cases, timed, setup, rounds, again, strict=True)]
    return parts, RunCosts(
        window_factor=factor, shape_s=max(processes_s - inside, 0.0) / max(shapes, 1), launch_s=_launch_s(env),
        finish_per_case_s=_per_case(phases.get("finish"), cases), report_per_case_s=_per_case(phases.get("report"),
                                                                                             cases))


def take_apart_playoffs(cases: list[CaseRecord], verdicts: list, env: dict[str, Any], target_s: float
                        ) -> tuple[list[Part], RunCosts]:
    """An older run (one process, a separate playoff per shape): a timed case's rounds were `target_s` and its share
    of its shape's playoff; the run's time between its cases (calibration, summary) is per shape."""
    timed = [_timed(r) for r in cases]
    playoff = {(v.model, v.dtype, v.sizes, v.mode, device_kind(v.device), v.quantity): v.wall_s for v in verdicts
               if isinstance(v.wall_s, int | float) and v.wall_s > 0}
    ok_per_shape: dict[tuple, int] = {}
    for r, t in zip(cases, timed, strict=True):
        ok_per_shape[_shape_key_of(r)] = ok_per_shape.get(_shape_key_of(r), 0) + t
    parts = []
    for r, t in zip(cases, timed, strict=True):
        key = _shape_key_of(r)
        rounds = min(target_s, r.wall_s) + playoff.get(key, 0.0) / ok_per_shape[key] if t else 0.0
        parts.append((max(r.wall_s - min(target_s, r.wall_s), 0.0) if t else r.wall_s, rounds, 0.0,
                      r.time_median_s if t else None, 1 if t else 0))
    shapes = len({_shape_key_of(r) for r in cases if r.status not in NOT_RUN})
    spent = _seconds_between(env.get("created"), env.get("finished"))
    between = None
    if spent is not None and not env.get("resumed"):
        between = max(0.0, spent - sum(r.wall_s for r in cases) - sum(playoff.values())) / max(shapes, 1)
    phases = env.get("phases") if isinstance(env.get("phases"), dict) else {}
    start = phases.get("start")
    return parts, RunCosts(shape_s=between or 0.0, report_per_case_s=_per_case(phases.get("report"), cases),
                           launch_s=float(start) if isinstance(start, int | float) else None, structure="playoffs")


def _launch_s(env: dict[str, Any]) -> float | None:
    """Starting one worker process: from the run folder's creation to the last process's end, less what the
    processes recorded, per process (None for a resumed run, or one whose processes did not record their end)."""
    processes = env.get("processes") or []
    ends = [p.get("ended") for p in processes]
    if env.get("resumed") or not processes or len({p.get("process") for p in processes}) != len(processes):
        return None
    spans = [_seconds_between(env.get("created"), end) for end in ends]
    if any(s is None for s in spans):
        return None
    spent = max(spans) - sum(float(p.get("wall_s") or 0.0) for p in processes)  # type: ignore[type-var]
    return max(spent, 0.0) / len(processes)


def _timed(r: CaseRecord) -> bool:
    return r.status == "ok" and bool(r.round_times_s or r.rounds) and isinstance(r.time_median_s, int | float) \
        and r.time_median_s > 0


def _phases(env: dict[str, Any], process: int) -> dict[str, float]:
    """Seconds per phase of one worker process, over its sessions (a resumed run has several)."""
    total: dict[str, float] = {}
    for p in env.get("processes", []):
        if p.get("process") == process:
            for name, seconds in (p.get("phases") or {}).items():
                total[name] = total.get(name, 0.0) + float(seconds)
    return total


def _per_case(seconds: Any, cases: list[CaseRecord]) -> float | None:
    return float(seconds) / len(cases) if isinstance(seconds, int | float) and cases else None


def _shape_key_of(r: CaseRecord) -> tuple:
    """The shape a case record belongs to (as costs.shape_key of its Sample): a Hessian and a Laplacian of the same
    sizes are two shapes."""
    return r.model, r.dtype, r.sizes, r.mode, device_kind(r.device), r.quantity


def _seconds_between(start: Any, end: Any) -> float | None:
    try:
        return (datetime.strptime(end, _TIMESTAMP) - datetime.strptime(start, _TIMESTAMP)).total_seconds()
    except (TypeError, ValueError):
        return None
