"""Is a run's number what the call costs in the user's own program? (`python -m bench fidelity RUN`)

For ok cases of a finished run (spread from fast to slow) it rebuilds the seeded model and input and times the
record's own call (the Jacobian, or the training step in train mode) in this one process, interleaved so both see
the same machine: (a) the harness's method, measure.median_time (warm-up, measure.round_plan, synced_clock, median
of rounds of `iterations` calls), and (b) torch.utils.benchmark.Timer(...).blocked_autorange(), with the run's
thread count. Target: medians within ±10%. The run's own recorded median is printed beside them.
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

import strategies
from bench import results
from bench.errors import BenchError
from bench.run import measure, models, modes
from bench.schema import CaseRecord


def pick_cases(records: list[CaseRecord], n: int) -> list[CaseRecord]:
    """n ok cases spread over the range of measured times (fast to slow)."""
    ok = sorted((r for r in records if r.status == "ok"), key=lambda r: r.time_median_s)
    if len(ok) <= n:
        return ok
    if n == 1:
        return [ok[len(ok) // 2]]
    return [ok[round(i * (len(ok) - 1) / (n - 1))] for i in range(n)]


def model_defs(env: dict) -> dict[str, models.ModelDef]:
    """The models of a run by the name its records use: the presets, plus the user's file.py:factory as run."""
    found = dict(models.PRESETS)
    for name, spec in (env.get("models") or {}).items():
        if name not in found:
            found[name] = models.resolve(spec)  # ModelError (one line) when the file moved since the run
    return found


def measure_fidelity(folder: Path, cases: int = 5, repeats: int = 3) -> list[dict]:
    """Time `cases` ok cases of the run both ways, `repeats` times interleaved; print the table and return its rows."""
    env = results.read_json(folder / "env.json")
    defs = model_defs(env)
    target_s = env.get("grid", {}).get("budget", {}).get("target_s", 0.25)
    torch.set_num_threads(env.get("threads", torch.get_num_threads()))
    picked = pick_cases(results.read_cases(folder / "cases.jsonl"), cases)
    if not picked:
        raise BenchError(f"{folder}: no ok case to time")
    rows = [_time_both(r, defs, target_s, repeats) for r in picked]
    width = max(len(row["case"]) for row in rows)
    print(f"{'case':<{width}}  {'run':>10}  {'harness':>10}  {'Timer':>10}  harness/Timer  run/Timer")
    for row in rows:
        print(f"{row['case']:<{width}}  {row['run_s'] * 1e3:7.3f} ms  {row['harness_s'] * 1e3:7.3f} ms  "
              f"{row['timer_s'] * 1e3:7.3f} ms  {row['harness_s'] / row['timer_s']:13.3f}  "
              f"{row['run_s'] / row['timer_s']:9.3f}")
    print(json.dumps({"max_abs_deviation": max(abs(row["harness_s"] / row["timer_s"] - 1) for row in rows),
                      "max_abs_run_deviation": max(abs(row["run_s"] / row["timer_s"] - 1) for row in rows)}))
    return rows


def _time_both(record: CaseRecord, defs: dict[str, models.ModelDef], target_s: float, repeats: int) -> dict:
    if record.model not in defs:
        raise BenchError(f"model {record.model!r} is not a preset and env.json does not say which file built it; "
                         "rerun with MODEL=path/to/file.py:factory")
    if record.strategy not in strategies.REGISTRY:
        raise BenchError(f"strategy {record.strategy!r} of the run is not registered here (a plugin not installed?)")
    model, x = models.build(defs[record.model], record.sizes, record.device, getattr(torch, record.dtype))
    call = modes.timed_call(strategies.REGISTRY[record.strategy], record.mode)  # the record's own mode
    timer = tbench.Timer("call(model, x)", globals={"call": call, "model": model, "x": x},
                         num_threads=torch.get_num_threads())
    ours, theirs = [], []
    for _ in range(repeats):  # interleaved: both methods see the same machine state
        ours.append(measure.median_time(functools.partial(call, model, x), target_s))
        theirs.append(timer.blocked_autorange(min_run_time=max(target_s, 0.2)).median)
    return {"case": record.case_id, "run_s": record.time_median_s, "harness_s": statistics.median(ours),
            "timer_s": statistics.median(theirs)}
