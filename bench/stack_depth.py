"""How each strategy's time grows with the depth of the Python stack it is called from: the table and what it says.

A training step inside a framework (Lightning, a trainer loop, a callback) calls the Jacobian 50 or more frames
below the top of the process; a benchmark calls it from a few. `python -m bench depth` (bench/run/depth.py) times
each strategy from several depths in fresh processes; this module turns those rounds into the table (the ratio of
each depth's median to the shallowest, with its 95% interval), writes it, and reads the committed reference
(results/reference/cpu-stack-depth) for the reports and `autotune`'s explain(). Torch-free.

Why it matters, found by profiling a deep call against a shallow one: torch.func.linearize traces the function with
make_fx on every call, and each trace creates FakeTensorModes whose constructor records the whole Python stack with
its source lines (`traceback.extract_stack()` in torch/_subclasses/fake_tensor.py, FakeTensorMode.__init__): the
cost of every trace grows with the depth of the caller's stack. torch.fx's do_not_emit_stack_traces does not reach
it. `vmap_jacfwd` and `vmap_jacfwd_chunked` move too, but with the exact depth rather than its size (CHUNK below).
The other strategies do not move.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import stats
from bench.schema import Sizes, fmt_ratio, fmt_time

DEPTHS = (5, 40, 80)
ROUNDS = 21
SHAPES = (Sizes(32, 64, 8, 8), Sizes(512, 64, 8, 8))  # the quick grid's base, and sixteen times its batch
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "cpu-stack-depth" / "stack_depth.json"


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


TRACING = ("it traces the function with make_fx on every call, and every trace records the whole Python stack "
           "(FakeTensorMode.__init__ calls traceback.extract_stack): the deeper the caller, the longer each call; "
           "call it from a shallow stack, or use a strategy that does not trace per call (jvp_batched: the same "
           "forward mode without the trace), or compile it")
CHUNK = ("the cost depends on the exact depth, not on how deep (vmap_jacfwd at B = 32, a profile here: none at 40, "
         "60 and 70 frames, ×2.7 at 80, ×1.8 at 120; the time goes to one small Python function of torch's shape "
         "checks, guard_or_false, 9 µs a call at 80 frames against under 0.5 µs at 5): the signature of CPython "
         "3.11's frame stack crossing one of its chunk boundaries on every call of that function; jvp_batched (the "
         "same forward mode, vmapped once) did not move, and a compiled strategy makes one Python call per Jacobian")
MECHANISMS = {"linearize_batched": TRACING, "vmap_jacfwd": CHUNK, "vmap_jacfwd_chunked": CHUNK}
UNPROFILED = "its mechanism was not profiled: call it from a shallow stack where you can"


def advice_for(strategy: str, table: dict[str, Any] | None = None) -> str:
    """One sentence for a strategy whose time surely grows with the caller's stack depth ("" when it does not)."""
    found = costly(table if table is not None else load_reference()).get(strategy)
    if not found:
        return ""
    return (f"{strategy} costs {fmt_ratio(found['ratio'])} its time when called {found['frames']} frames deep (at "
            f"{found['shape']}, measured; at least {fmt_ratio(found['low'])}): {MECHANISMS.get(strategy, UNPROFILED)}")
