"""Fidelity check of the harness's timings (a benchmark, not a test).

    python -m bench.fidelity results/<run-id> [--cases 5]

Re-times ok cases of a finished run with torch.utils.benchmark.Timer(...).blocked_autorange() in this process, with
the run's thread count, and prints the harness median next to Timer's median. Target: within ±10%.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.utils.benchmark as tbench

import strategies
from bench import models, results


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
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args()
    folder = results.resolve_run_dir(args.run)
    env = results.read_json(folder / "env.json")
    torch.set_num_threads(env.get("threads", torch.get_num_threads()))
    rows = []
    for r in pick_cases(results.read_cases(folder / "cases.jsonl"), args.cases):
        model_def = models.resolve(r["model"])
        model, x = models.build(model_def, r["batch"], r["hidden"], r["in_dim"], r["out_dim"], r["device"],
                                getattr(torch, r["dtype"]))
        fn = strategies.REGISTRY[r["strategy"]].fn
        timer = tbench.Timer("fn(model, x)", globals={"fn": fn, "model": model, "x": x},
                             num_threads=torch.get_num_threads())
        reference = timer.blocked_autorange(min_run_time=args.min_run_time).median
        rows.append({"case": r["case_id"], "harness_median_s": r["time_median_s"], "timer_median_s": reference,
                     "ratio": r["time_median_s"] / reference})
    width = max(len(row["case"]) for row in rows)
    print(f"{'case':<{width}}  harness      Timer        harness/Timer")
    for row in rows:
        print(f"{row['case']:<{width}}  {row['harness_median_s'] * 1e3:9.3f} ms {row['timer_median_s'] * 1e3:9.3f} ms"
              f"  {row['ratio']:.3f}")
    print(json.dumps({"max_abs_deviation": max(abs(row["ratio"] - 1) for row in rows)}))


if __name__ == "__main__":
    main()
