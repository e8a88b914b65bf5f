"""Fidelity check of the harness's timing method (a benchmark, not a test).

    python -m bench.run.fidelity results/<run-id> [--cases 5] [--repeats 3]

For ok cases of a finished run (spread from fast to slow) it times the same call in this one process,
interleaved so both see the same machine: (a) the harness's method, measure.median_time (warm-up, measure.plan,
synced_clock, median of rounds of `iterations` calls, as benchmark.pedantic runs them), and (b)
torch.utils.benchmark.Timer(...).blocked_autorange(), with the run's thread count.
Target: medians within ±10%. The run's own recorded median is printed beside them.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys

import torch
import torch.utils.benchmark as tbench

import strategies
from bench import results
from bench.errors import BenchError
from bench.run import measure, models


def pick_cases(records: list[dict], n: int) -> list[dict]:
    """n ok cases spread over the range of measured times (fast to slow)."""
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: r["time_median_s"])
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


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--cases", type=_positive, default=5)
    parser.add_argument("--repeats", type=_positive, default=3)
    args = parser.parse_args(argv)
    try:
        measure_fidelity(args)
    except BenchError as exc:
        print(f"jacobench: error: {exc}", file=sys.stderr)
        return 2
    return 0


def measure_fidelity(args: argparse.Namespace) -> None:
    folder = results.resolve_run_dir(args.run)
    env = results.read_json(folder / "env.json")
    defs = model_defs(env)
    target_s = env.get("grid", {}).get("budget", {}).get("target_s", 0.25)
    torch.set_num_threads(env.get("threads", torch.get_num_threads()))
    rows = []
    picked = pick_cases(results.read_cases(folder / "cases.jsonl"), args.cases)
    if not picked:
        raise BenchError(f"{folder}: no ok case to time")
    for r in picked:
        if r["model"] not in defs:
            raise BenchError(f"{folder}: model {r['model']!r} is not a preset and env.json does not say which file "
                             "built it; rerun with MODEL=path/to/file.py:factory")
        model, x = models.build(defs[r["model"]], r["batch"], r["hidden"], r["in_dim"], r["out_dim"],
                                r["device"], getattr(torch, r["dtype"]))
        fn = strategies.REGISTRY[r["strategy"]].fn
        call = functools.partial(fn, model, x)
        timer = tbench.Timer("fn(model, x)", globals={"fn": fn, "model": model, "x": x},
                             num_threads=torch.get_num_threads())
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved: both methods see the same machine state
            ours.append(measure.median_time(call, target_s))
            theirs.append(timer.blocked_autorange(min_run_time=max(target_s, 0.2)).median)
        rows.append({"case": r["case_id"], "run_s": r["time_median_s"], "harness_s": statistics.median(ours),
                     "timer_s": statistics.median(theirs)})
    width = max(len(row["case"]) for row in rows)
    print(f"{'case':<{width}}  {'run':>10}  {'harness':>10}  {'Timer':>10}  harness/Timer")
    for row in rows:
        print(f"{row['case']:<{width}}  {row['run_s'] * 1e3:7.3f} ms  {row['harness_s'] * 1e3:7.3f} ms  "
              f"{row['timer_s'] * 1e3:7.3f} ms  {row['harness_s'] / row['timer_s']:.3f}")
    print(json.dumps({"max_abs_deviation": max(abs(row["harness_s"] / row["timer_s"] - 1) for row in rows)}))


if __name__ == "__main__":
    raise SystemExit(main())
