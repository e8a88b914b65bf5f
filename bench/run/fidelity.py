"""Is a run's number what the call costs in the user's own program? (`python -m bench fidelity RUN`)

For ok cases of a finished run (spread from fast to slow, or those of the strategies named), each case's call (the
Jacobian, or the training step in train mode) is timed in a fresh Python process, as a user's program would run it:
the seeded model and input rebuilt, one warm-up call, then torch.utils.benchmark.Timer.blocked_autorange with the
run's thread count. The cases take turns, `repeats` times, so a slow moment of the machine does not land on one of
them. Printed: the run's median, the fresh processes' median, and their ratio (target: within ±10%).
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

from bench import results
from bench.errors import BenchError
from bench.schema import CaseRecord

TARGET = 0.10  # the run's median within ±10% of what a fresh process measures


def pick_cases(records: list[CaseRecord], n: int, strategies: list[str] | None = None) -> list[CaseRecord]:
    """n ok cases spread over the range of measured times (fast to slow); with `strategies`, n of each of them."""
    ok = sorted((r for r in records if r.status == "ok" and r.time_median_s), key=lambda r: r.time_median_s)
    if strategies:
        return [c for name in strategies for c in spread([r for r in ok if r.strategy == name], n)]
    return spread(ok, n)


def spread(ordered: list[CaseRecord], n: int) -> list[CaseRecord]:
    if len(ordered) <= n:
        return ordered
    if n == 1:
        return [ordered[len(ordered) // 2]]
    return [ordered[round(i * (len(ordered) - 1) / (n - 1))] for i in range(n)]


def measure_fidelity(folder: Path, cases: int = 5, repeats: int = 3, strategies: list[str] | None = None
                     ) -> list[dict]:
    """Time the picked cases in fresh processes, `repeats` turns each; print the table and return its rows."""
    env = results.read_json(folder / "env.json")
    picked = pick_cases(results.read_cases(folder / "cases.jsonl"), cases, strategies)
    if not picked:
        raise BenchError(f"{folder}: no ok case to time" + (f" of {', '.join(strategies)}" if strategies else ""))
    specs = {r.case_id: _spec(r, env) for r in picked}
    fresh: dict[str, list[float]] = {case: [] for case in specs}
    order = random.Random(0)
    for _ in range(repeats):  # the cases take turns: the machine's slow moments spread over all of them
        turn = list(specs)
        order.shuffle(turn)
        for case in turn:
            fresh[case].append(in_fresh_process(specs[case]))
    rows = [{"case": r.case_id, "run_s": r.time_median_s, "fresh_s": statistics.median(fresh[r.case_id])}
            for r in picked]
    width = max(len(row["case"]) for row in rows)
    print(f"{'case':<{width}}  {'run':>10}  {'fresh':>10}  run/fresh")
    for row in rows:
        ratio = row["run_s"] / row["fresh_s"]
        print(f"{row['case']:<{width}}  {row['run_s'] * 1e3:7.3f} ms  {row['fresh_s'] * 1e3:7.3f} ms  {ratio:9.3f}"
              + ("" if abs(ratio - 1) <= TARGET else "  outside ±10%"))
    deviations = [abs(row["run_s"] / row["fresh_s"] - 1) for row in rows]
    print(json.dumps({"cases": len(rows), "within_10pct": sum(d <= TARGET for d in deviations),
                      "max_abs_deviation": round(max(deviations), 4)}))
    return rows


def _spec(record: CaseRecord, env: dict) -> dict:
    from bench.run.models import resolve

    models = env.get("models") or {}
    if record.model not in models:
        raise BenchError(f"model {record.model!r}: env.json does not say how to build it; rerun the benchmark")
    resolve(models[record.model])  # one line (ModelError) when a user's model file moved since the run
    return {"model": models[record.model], "name": record.model, "strategy": record.strategy, "mode": record.mode,
            "sizes": list(record.sizes), "device": record.device, "dtype": record.dtype,
            "threads": env.get("threads") or 0, "min_run_time": 0.4}


def in_fresh_process(spec: dict) -> float:
    """The median seconds of one call, timed by torch.utils.benchmark.Timer in a new Python process."""
    proc = subprocess.run([sys.executable, "-m", "bench.run.fidelity", json.dumps(spec)], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"timing {spec['strategy']} on {spec['name']} in a fresh process failed: {last}")
    return float(proc.stdout.strip().splitlines()[-1])


def _time_here(spec: dict) -> float:
    """The fresh process's side: build the case as the run did and time its call (the user's own program)."""
    import torch
    import torch.utils.benchmark as tbench

    import strategies
    from bench.run import models, modes
    from bench.schema import Sizes

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model_def = models.resolve(spec["model"])
    model_def = model_def if model_def.name == spec["name"] else models.ModelDef(spec["name"], model_def.factory,
                                                                                  model_def.description)
    model, x = models.build(model_def, Sizes(*spec["sizes"]), spec["device"], getattr(torch, spec["dtype"]))
    call = modes.timed_call(strategies.REGISTRY[spec["strategy"]], spec["mode"])
    call(model, x)
    timer = tbench.Timer("call(model, x)", globals={"call": call, "model": model, "x": x},
                         num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=spec["min_run_time"]).median


if __name__ == "__main__":
    print(_time_here(json.loads(sys.argv[1])))
