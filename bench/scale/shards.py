"""SHARD=k/N: the k-th of N parts of a planned run, each a run folder of its own, merged later into one run.

The unit of the split is a shape (model, dtype, sizes): all its strategies, modes and devices go to the same shard,
so its float64 reference is built once and its verdict is whole. Shapes are dealt to shards longest first, each to
the shard with the least predicted work so far (greedy LPT), by the cost model of the committed reference runs
(bench/scale/costs.py default(), never FROM=, so every machine splits a plan alike); the split is deterministic.

Folder naming: shard k of N of run R is the run folder results/R.shard-k-of-N/ (its own lock, env.json, RESUME=1);
`make merge RUN=R` writes results/R/. Without RUN=, the shards of one plan share the run id <grid>-<plan hash[:8]>.

Plan hash: sha256 (first 16 hex digits) of the settings that decide what is measured: the resolved fingerprint of
the run (grid as data, devices, strategies, models, dtypes, modes, budgets, threads), the model specs, COMPILED, every
planned case id, and the torch version. It does not depend on the shard, the run id or the results folder.

A shard cannot skip a shape because a smaller one timed out in another shard (bench/harness/skips.py works within one
process): where one run says `skipped`, a sharded one may say `timeout`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from bench import results
from bench.errors import BenchError
from bench.scale import costs, forecast
from bench.spec.plan import RunPlan, Shard, Unit, folder_name, parse_folder_name, parse_shard, plan_run, unit
from bench.spec.settings import Settings


class ShardError(BenchError):
    pass

if TYPE_CHECKING:
    from bench.scale.costs import CostModel

def assignment(plan: RunPlan, count: int, model: CostModel | None = None) -> dict[Unit, int]:
    """The shard of every shape of the (whole) plan, balanced by the default cost model."""
    return forecast.split_by_cost(plan, count, model or costs.default())


def planned(settings: Settings, here: bool = True) -> RunPlan:
    """The plan of a run: the whole plan (bench/spec/plan.py), restricted to the cases of SHARD=k/N when asked."""
    plan = plan_run(settings, here)
    if settings.shard:
        restrict(plan, *parse_shard(settings.shard))
    return plan


def run_id(plan: RunPlan) -> str:
    """The run id the shards of a plan share: RUN=, else <grid>-<plan hash[:8]> (the same on every machine)."""
    return plan.settings.run or f"{plan.grid.name}-{plan.plan_hash[:8]}"


def restrict(plan: RunPlan, index: int, count: int) -> None:
    """Keep the cases of shard `index` of `count` and point the plan at the shard's run folder."""
    assigned = assignment(plan, count)
    digest = hashlib.sha256(json.dumps(sorted((repr(u), k) for u, k in assigned.items())).encode()).hexdigest()[:12]
    run = run_id(plan)
    plan.cases = [c for c in plan.cases if assigned[unit(c)] == index]
    plan.shard = Shard(index, count, run, digest, len({unit(c) for c in plan.cases}))
    plan.run_id = results.check_run_id(folder_name(run, index, count))
    plan.folder = Path(plan.settings.results_dir) / plan.run_id


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
