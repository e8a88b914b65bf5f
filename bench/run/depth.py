"""`python -m bench depth`: each strategy timed from several depths of the Python stack, in fresh processes.

For each strategy and shape, one fresh process (bench/harness/fresh.py, `depth_here`) times the call from each depth
in turn, round after round, so a slow moment of the machine lands on every depth alike; bench/stack_depth.py turns
the rounds into the table, written to <folder>/stack_depth.json and stack_depth.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import results
from bench.errors import BenchError
from bench.harness import fresh
from bench.schema import Sizes
from bench.stack_depth import DEPTHS, ROUNDS, SHAPES, line, markdown, row


def measure(folder: Path, names: list[str], shapes: tuple[Sizes, ...] = SHAPES, depths: tuple[int, ...] = DEPTHS,
            rounds: int = ROUNDS, threads: int = 0, mode: str = "jacobian") -> dict[str, Any]:
    """Time every strategy at every shape from every depth, one fresh process each; write and return the table."""
    from bench.harness import environment

    rows = []
    for sizes in shapes:
        for name in names:
            job = {"model": "mlp", "name": "mlp", "strategies": [name], "mode": mode, "sizes": list(sizes),
                   "device": "cpu", "dtype": "float32", "threads": threads, "depths": list(depths),
                   "rounds": rounds, "seed": len(rows)}
            found = fresh.in_fresh_process(job)[name]
            rows.append(row(name, sizes, {int(d): v for d, v in found.items()}))
            print(line(rows[-1]), flush=True)
    table = {"depths": list(depths), "rounds": rounds, "measured": time.strftime("%Y-%m-%d"), "rows": rows,
             "machine": {k: v for k, v in environment.collect(["cpu"]).items()
                         if k in ("cpu_model", "threads", "torch", "python")}}
    folder.mkdir(parents=True, exist_ok=True)
    results.write_json(folder / "stack_depth.json", table)
    (folder / "stack_depth.md").write_text(markdown(table), encoding="utf-8")
    return table


def check_names(names: list[str]) -> list[str]:
    import strategies

    unknown = [n for n in names if n not in strategies.REGISTRY]
    if unknown:
        raise BenchError(f"unknown strategy {unknown[0]!r}: choose from {', '.join(strategies.names())}")
    return names or [n for n in strategies.names() if not strategies.REGISTRY[n].compiled]
