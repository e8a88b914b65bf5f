"""SHARD=k/N: the k-th of N parts of a planned run, each a run folder of its own, merged later into one run.

The unit of the split is a shape (model, dtype, sizes): all its strategies, modes and devices go to the same shard,
so its float64 reference is built once and its verdict is whole. Shapes are dealt to shards longest first, each to
the shard with the least predicted work so far (greedy LPT), by the cost model of the committed reference runs
(bench/run/costs.py default(), never FROM=, so every machine splits a plan alike); the split is deterministic.

Folder naming: shard k of N of run R is the run folder results/R.shard-k-of-N/ (its own lock, env.json, RESUME=1);
`make merge RUN=R` writes results/R/. Without RUN=, the shards of one plan share the run id <grid>-<plan hash[:8]>.

Plan hash: sha256 (first 16 hex digits) of the settings that decide what is measured: the resolved fingerprint of
the run (grid as data, devices, strategies, models, dtypes, modes, budgets, threads), the model specs, COMPILED, every
planned case id, and the torch version. It does not depend on the shard, the run id or the results folder.

A shard cannot skip a shape because a smaller one timed out in another shard (bench/run/skips.py works within one
process): where one run says `skipped`, a sharded one may say `timeout`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import results
from bench.errors import BenchError
from bench.schema import Sizes, case_id

if TYPE_CHECKING:
    from bench.run.costs import CostModel
    from bench.run.grid import Case
    from bench.run.plan import RunPlan

Unit = tuple[str, str, Sizes]  # (model, dtype, sizes): what stays whole in one shard
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_FOLDER = re.compile(r"^(?P<run>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)$")


class ShardError(BenchError):
    pass


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int
    run: str  # the run the shards merge into: results/<run>/
    split: str  # digest of the assignment of shapes to shards: equal in every shard of one split
    shapes: int  # shapes in this shard

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def parse(spec: str) -> tuple[int, int]:
    """'2/4' -> (2, 4); a one-line error for anything else."""
    match = _SPEC.match(spec)
    index, count = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 1 <= index <= count:
        raise ShardError(f"SHARD={spec!r}: give k/N with 1 <= k <= N, e.g. SHARD=1/4")
    return index, count


def folder_name(run: str, index: int, count: int) -> str:
    return f"{run}.shard-{index}-of-{count}"


def parse_folder_name(name: str) -> tuple[str, int, int] | None:
    """'r.shard-2-of-4' -> ('r', 2, 4); None for a folder that is not a shard."""
    match = _FOLDER.match(name)
    return (match.group("run"), int(match.group("index")), int(match.group("count"))) if match else None


def unit(case: Case) -> Unit:
    return case.model, case.dtype, case.sizes


def split(costs: dict[Unit, float], count: int) -> dict[Unit, int]:
    """Each unit's shard (1-based): longest first to the least loaded shard (ties: the lowest index). Costs are
    rounded to milliseconds first, so a last-digit difference between machines cannot reorder two units."""
    order = sorted(costs, key=lambda u: (-round(costs[u], 3), repr(u)))
    loads = [(0.0, index) for index in range(1, count + 1)]  # a heap of (predicted seconds, shard)
    assigned = {}
    for u in order:
        load, index = heapq.heappop(loads)
        assigned[u] = index
        heapq.heappush(loads, (round(load + round(costs[u], 3), 3), index))
    return assigned


def assignment(plan: RunPlan, count: int, model: CostModel | None = None) -> dict[Unit, int]:
    """The shard of every shape of the (whole) plan, balanced by the default cost model."""
    from bench.run import costs, forecast

    return split(forecast.unit_costs(plan, model or costs.default()), count)


def plan_hash(plan: RunPlan) -> str:
    import torch

    payload = {
        "fingerprint": {k: v for k, v in plan.fingerprint().items() if k != "shard"},
        "models": {name: d.spec for name, d in sorted(plan.model_defs.items())},
        "compiled": plan.compiled,
        "cases": [case_id(name, device, case.shape_id) for device in plan.devices for case in plan.cases
                  for name in plan.strategies_for(case)],
        "torch": torch.__version__,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def restrict(plan: RunPlan, index: int, count: int) -> None:
    """Keep the cases of shard `index` of `count` and point the plan at the shard's run folder."""
    assigned = assignment(plan, count)
    digest = hashlib.sha256(json.dumps(sorted((repr(u), k) for u, k in assigned.items())).encode()).hexdigest()[:12]
    run = plan.settings.run or f"{plan.grid.name}-{plan.plan_hash[:8]}"
    plan.cases = [c for c in plan.cases if assigned[unit(c)] == index]
    plan.shard = Shard(index, count, run, digest, len({unit(c) for c in plan.cases}))
    plan.run_id = results.check_run_id(folder_name(run, index, count))
    plan.folder = Path(plan.settings.results_dir) / plan.run_id


def env_fields(plan: RunPlan) -> dict[str, Any]:
    """What env.json says about the plan: its hash and size, and the shard (None for a whole run)."""
    shard = plan.shard
    return {"plan_hash": plan.plan_hash, "plan_cases": plan.total_cases,
            "shard": None if shard is None else {"index": shard.index, "count": shard.count, "run": shard.run,
                                                 "split": shard.split, "shapes": shard.shapes}}


def find(results_root: Path, run: str) -> dict[int, tuple[int, Path]]:
    """The shard folders of a run on disk: index -> (count, folder)."""
    found = {}
    for path in sorted(Path(results_root).glob(f"{glob_escape(run)}.shard-*-of-*")):
        parsed = parse_folder_name(path.name)
        if parsed and parsed[0] == run and path.is_dir():
            found.setdefault(parsed[1], []).append((parsed[2], path))
    counts = {count for shards in found.values() for count, _ in shards}
    if len(counts) > 1:
        raise ShardError(f"{results_root}: run {run} has shards of different splits "
                         f"({', '.join(f'of {c}' for c in sorted(counts))}): move the stale ones away and merge again")
    return {index: shards[0] for index, shards in found.items()}


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
