"""Fidelity check of the harness's timing method (a benchmark, not a test).

    python -m bench.fidelity results/<run-id> [--cases 5] [--repeats 3]

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

import torch
import torch.utils.benchmark as tbench

import strategies
from bench import measure, models, results


def pick_cases(records: list[dict], n: int) -> list[dict]:
    """n ok cases spread over the range of measured times (fast to slow)."""
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: r["time_median_s"])
    if len(ok) <= n:
        return ok
    return [ok[round(i * (len(ok) - 1) / (n - 1))] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = results.resolve_run_dir(args.run)
    env = results.read_json(folder / "env.json")
    target_s = env.get("grid", {}).get("budget", {}).get("target_s", 0.25)
    torch.set_num_threads(env.get("threads", torch.get_num_threads()))
    rows = []
    for r in pick_cases(results.read_cases(folder / "cases.jsonl"), args.cases):
        model, x = models.build(models.resolve(r["model"]), r["batch"], r["hidden"], r["in_dim"], r["out_dim"],
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
    main()
