"""How each strategy's time grows with the depth of the Python stack it is called from (`python -m bench depth`).

A training step inside a framework (Lightning, a trainer loop, a callback) calls the Jacobian 50 or more frames
below the top of the process; a benchmark calls it from a few. For each strategy and shape, one fresh process
(bench/harness/fresh.py, `depth_here`) times the call from each depth in turn, round after round; the ratio of the
medians at each depth to the shallowest, with its 95% interval, says what the depth costs. Written to
<folder>/stack_depth.json (with the machine it was measured on) and stack_depth.md; the committed reference
results/reference/cpu-stack-depth is what reports and `autotune`'s explain() cite.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench import results, stats
from bench.errors import BenchError
from bench.harness import fresh
from bench.schema import Sizes, fmt_ratio, fmt_time

DEPTHS = (5, 40, 80)
ROUNDS = 21
SHAPES = (Sizes(32, 64, 8, 8), Sizes(512, 64, 8, 8))  # the quick grid's base, and sixteen times its batch
REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference" / "cpu-stack-depth" / "stack_depth.json"


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


def row(name: str, sizes: Sizes, rounds: dict[int, list[float]]) -> dict[str, Any]:
    """Medians per depth, and each depth's median over the shallowest one's with its 95% interval."""
    shallow = min(rounds)
    return {"strategy": name, "shape": sizes.id, **sizes._asdict(),
            "median_s": {str(d): stats.median_ci(v)[0] for d, v in rounds.items()},
            "ratio": {str(d): list(stats.ratio_of_medians(v, rounds[shallow])) for d, v in rounds.items()
                      if d != shallow}}


def line(r: dict[str, Any]) -> str:
    ratios = ", ".join(f"{d} frames {fmt_ratio(v[0])}" for d, v in r["ratio"].items())
    shallow = min(r["median_s"], key=int)
    return f"{r['strategy']:<28} {r['shape']:<22} {fmt_time(r['median_s'][shallow]):>10} at {shallow}; {ratios}"


def markdown(table: dict[str, Any]) -> str:
    depths = table["depths"]
    head = ["strategy", "shape", f"time at {depths[0]} frames"] + [f"× at {d}" for d in depths[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        cells = [f"`{r['strategy']}`", r["shape"], fmt_time(r["median_s"][str(depths[0])])]
        cells += [f"{fmt_ratio(r['ratio'][str(d)][0])} ({fmt_ratio(r['ratio'][str(d)][1])}–"
                  f"{fmt_ratio(r['ratio'][str(d)][2])})" for d in depths[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    machine = table["machine"]
    return (f"Time of one call from each depth of the Python stack, against the shallowest ({table['rounds']} "
            f"rounds per depth, taking turns; {machine.get('cpu_model')}, torch {machine.get('torch')}, "
            f"{machine.get('threads')} threads, {table['measured']}).\n\n" + "\n".join(lines) + "\n")


def load_reference(path: Path = REFERENCE) -> dict[str, Any] | None:
    """The committed stack-depth table, or None when it is not there (a report built elsewhere says nothing)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def costly(table: dict[str, Any] | None, threshold: float = 1.05) -> dict[str, dict[str, Any]]:
    """Per strategy, its deepest measured ratio where that is surely (the whole interval) above `threshold`."""
    found: dict[str, dict[str, Any]] = {}
    if not table:
        return found
    deepest = str(max(table["depths"]))
    for r in table["rows"]:
        ratio, low, _ = r["ratio"][deepest]
        if low > threshold and ratio > found.get(r["strategy"], {}).get("ratio", 0):
            found[r["strategy"]] = {"ratio": ratio, "low": low, "shape": r["shape"], "frames": int(deepest)}
    return found


def check_names(names: list[str]) -> list[str]:
    import strategies

    unknown = [n for n in names if n not in strategies.REGISTRY]
    if unknown:
        raise BenchError(f"unknown strategy {unknown[0]!r}: choose from {', '.join(strategies.names())}")
    return names or [n for n in strategies.names() if not strategies.REGISTRY[n].compiled]
