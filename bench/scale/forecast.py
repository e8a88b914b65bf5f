"""What a planned run will do before it does it (`python -m bench plan`, `make plan`): every case with the status the
budget rules give it before it runs and its predicted seconds, what each shape costs outside its cases, the run's
fixed costs (starting its worker processes, finishing, the report).

Over budget is decided as the run decides it: bench/harness/skips.py's SkipPolicy and predicted_memory, against the
same budget (MEMORY_BUDGET=, else the grid's fraction of the memory free now on this machine; a CUDA device this
machine does not have needs MEMORY_BUDGET= to be checked). Larger shapes of a strategy whose smaller shape the cost
model expects to time out or run out of memory are `skipped`, by the same policy. Seconds come from the cost model
(bench/scale/costs.py). Nothing is measured and nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import strategies
from bench.harness.skips import SkipPolicy, predicted_memory
from bench.scale import costs, spent
from bench.scale.balance import split
from bench.scale.costs import CostModel, Query
from bench.schema import PREDICTS_LARGER, case_id, fmt_bytes
from bench.spec.grid import Case
from bench.spec.plan import RunPlan, Unit, unit

LISTED = 10  # over-budget cases named in the text output (--json lists all)


@dataclass(frozen=True)
class CaseForecast:
    strategy: str
    device: str
    case: Case
    status: str  # "" (it runs), over_budget or skipped (the run's rules), timeout or oom (the cost model expects it)
    seconds: float
    basis: str  # how the cost model got the seconds (costs.Estimate.basis), or "rule"
    message: str = ""

    @property
    def case_id(self) -> str:
        return case_id(self.strategy, self.device, self.case.shape_id)


@dataclass
class Forecast:
    plan: RunPlan
    model: CostModel
    cases: list[CaseForecast]
    shapes_s: dict[tuple[Case, str], float]  # (shape, device) -> seconds outside its cases (heap, 2nd process, ...)
    budgets: dict[str, int | None]  # device -> the memory budget of the skip rule (None: unknown here)
    notes: list[str] = field(default_factory=list)

    @property
    def cases_s(self) -> float:
        return sum(c.seconds for c in self.cases)

    @property
    def fixed_s(self) -> dict[str, float]:
        """What the run costs outside its cases and shapes: starting its worker processes, finishing, the report."""
        return fixed_s(self.plan, self.model, len(self.cases))

    @property
    def total_s(self) -> float:
        return self.cases_s + sum(self.shapes_s.values()) + sum(self.fixed_s.values())

    def count(self, *statuses: str) -> int:
        return sum(c.status in statuses for c in self.cases)


class _PlannedSkips(SkipPolicy):
    """The run's skip policy, except that a device this machine lacks has no budget to check (unknown)."""

    def budget(self, device: str) -> int:
        return super().budget(device) if _here(device) or self.memory_budget_bytes else math.inf  # type: ignore


def _here(device: str) -> bool:
    import torch

    return not device.startswith("cuda") or (torch.cuda.is_available()
                                             and int(device.partition(":")[2] or 0) < torch.cuda.device_count())


def run_order(plan: RunPlan) -> Iterator[tuple[str, str, Case]]:
    """(strategy, device, case) in the order the run measures them (RunPlan.shapes)."""
    for device, case, names in plan.shapes():
        for name in names:
            yield name, device, case


def _query(plan: RunPlan, name: str, device: str, case: Case) -> Query:
    return Query(name, case.mode, case.model, case.dtype, spent.device_kind(device), case.sizes,
                 plan.grid.budget.target_s, plan.time_budget_s, plan.processes)


def fixed_s(plan: RunPlan, model: CostModel, cases: int) -> dict[str, float]:
    """Starting the worker processes, finishing (per case) and the report (per case; none with NO_REPORT=1)."""
    report = 0.0 if plan.settings.no_report else model.report_per_case_s * cases
    return {"start": model.launch_s * plan.processes, "finish": model.finish_per_case_s * cases, "report": report}


def forecast(plan: RunPlan, model: CostModel) -> Forecast:
    order = list(run_order(plan))
    estimates = model.predict([_query(plan, *item) for item in order])
    policy = _PlannedSkips(plan.memory_budget_bytes, plan.grid.budget.memory_fraction)
    found = []
    for (name, device, case), estimate in zip(order, estimates, strict=True):
        strategy = strategies.REGISTRY[name]
        skip = policy.reason(strategy, case, device, predicted_memory(strategy, case))
        if skip:
            found.append(CaseForecast(name, device, case, skip[0], costs.NOT_RUN_S, "rule", skip[1]))
            continue
        found.append(CaseForecast(name, device, case, estimate.status, estimate.seconds, estimate.basis))
        policy.note(strategy, case, device, estimate.status, estimate.status in PREDICTS_LARGER)
    measured = {(c.case, c.device) for c in found if c.status not in spent.NOT_RUN}
    shapes = {(case, device): model.shape_s for device in plan.devices for case in plan.cases
              if (case, device) in measured}
    budgets = {d: (policy.budget(d) if policy.budget(d) != math.inf else None) for d in plan.devices}
    return Forecast(plan, model, found, shapes, budgets, notes=_notes(plan, model, budgets))


def unit_costs(plan: RunPlan, model: CostModel) -> dict[Unit, float]:
    """Predicted seconds of each shape (all its strategies, modes and devices, and what it costs outside them) for
    the shard split: the cost model alone, no memory budget (it differs between machines; the split must not)."""
    order = list(run_order(plan))
    totals: dict[Unit, float] = {}
    seen: set[tuple[Case, str]] = set()
    for (_, device, case), estimate in zip(order, model.predict([_query(plan, *item) for item in order]),
                                           strict=True):
        outside = model.shape_s if (case, device) not in seen else 0.0
        seen.add((case, device))
        totals[unit(case)] = totals.get(unit(case), 0.0) + estimate.seconds + outside
    return totals


def _notes(plan: RunPlan, model: CostModel, budgets: dict[str, int | None]) -> list[str]:
    notes = list(plan.notes)  # what the run itself would say first: a model's fixed sizes, its dtype, ...
    measured = model.devices
    for kind in sorted({spent.device_kind(d) for d in plan.devices} - measured):
        if measured:
            notes.append(f"the fitted runs measured no {kind} device: {kind} cases are predicted from "
                         f"{', '.join(sorted(measured))} measurements (FROM=results/<a {kind} run> predicts better)")
    unknown = [d for d, b in budgets.items() if b is None]
    if unknown:
        notes.append(f"{', '.join(unknown)}: not on this machine, so the memory budget (the grid's fraction of its "
                     "free memory) is unknown here; give MEMORY_BUDGET= to see which cases it skips")
    if "playoffs" in model.structures:
        notes.append("fitted from runs of the older harness (a playoff per shape, one worker process): they predict "
                     "today's runs less well (FROM=results/<a recent run> predicts better)")
    fallback = sorted({c.strategy for c in _fallbacks(plan, model)})
    if fallback:
        notes.append(f"no fitted run measured {', '.join(fallback)} in this mode: predicted from the same strategy "
                     "in the other mode, else from every strategy")
    return notes


def _fallbacks(plan: RunPlan, model: CostModel) -> Iterator[CaseForecast]:
    seen = {(s.strategy, s.mode) for s in model.samples}
    for name, device, case in run_order(plan):
        if (name, case.mode) not in seen:
            yield CaseForecast(name, device, case, "", 0.0, "")


# ---- output ---------------------------------------------------------------------------------------------------------

def fmt_duration(seconds: float) -> str:
    """41 s, 2 min 31 s, 3 h 12 min."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _groups(fc: Forecast, key) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, dict[str, Any]] = {}
    for c in fc.cases:
        g = groups.setdefault(key(c), {"shapes": set(), "cases": 0, "over_budget": 0, "expected_to_fail": 0,
                                       "seconds": 0.0})
        g["shapes"].add(c.case)
        g["cases"] += 1
        g["over_budget"] += c.status == "over_budget"
        g["expected_to_fail"] += c.status in ("skipped", *PREDICTS_LARGER)
        g["seconds"] += c.seconds
    for (case, device), seconds in fc.shapes_s.items():
        k = key(CaseForecast("", device, case, "", 0.0, ""))
        if k in groups:
            groups[k]["seconds"] += seconds
    return groups


def _setting_key(c: CaseForecast) -> tuple[str, str, str, str, str]:
    return c.case.model, c.device, c.case.dtype, c.case.mode, c.case.quantity


def _setting_names(fc: Forecast) -> list[str]:
    """The columns of a setting: the quantity only where the plan measures more than the Jacobian."""
    names = ["model", "device", "dtype", "mode", "quantity"]
    return names if any(c.case.quantity != "jacobian" for c in fc.cases) else names[:4]


def shard_table(fc: Forecast, count: int) -> list[dict[str, Any]]:
    """Per shard of a split of this plan into `count`: shapes, cases and predicted seconds (one run each, its
    fixed costs included)."""
    assigned = split_by_cost(fc.plan, count)
    rows = [{"shard": f"{k}/{count}", "shapes": set(), "cases": 0, "seconds": 0.0} for k in range(1, count + 1)]
    for c in fc.cases:
        row = rows[assigned[unit(c.case)] - 1]
        row["shapes"].add(unit(c.case))
        row["cases"] += 1
        row["seconds"] += c.seconds
    for (case, _), seconds in fc.shapes_s.items():
        rows[assigned[unit(case)] - 1]["seconds"] += seconds
    return [r | {"shapes": len(r["shapes"]), "seconds": r["seconds"] + sum(fixed_s(fc.plan, fc.model,
                                                                                      r["cases"]).values())}
            for r in rows]


def as_json(fc: Forecast, shard_count: int | None = None) -> dict[str, Any]:
    plan = fc.plan
    return {
        "grid": plan.grid.name, "plan_hash": plan.plan_hash, "devices": plan.devices,
        "shard": plan.shard.label if plan.shard else None, "plan_cases": plan.total_cases,
        "cases": len(fc.cases), "shapes": len({c.case for c in fc.cases}),
        "over_budget": [{"case_id": c.case_id, "message": c.message} for c in fc.cases if c.status == "over_budget"],
        "expected_to_fail": {s: fc.count(s) for s in ("timeout", "oom", "skipped") if fc.count(s)},
        "memory_budget_bytes": fc.budgets,
        "predicted_s": {"total": round(fc.total_s, 1), "cases": round(fc.cases_s, 1),
                        "shapes": round(sum(fc.shapes_s.values()), 1),
                        **{k: round(v, 1) for k, v in fc.fixed_s.items()}},
        "settings": [dict(zip(_setting_names(fc), k, strict=False)) | _row(g)
                     for k, g in _groups(fc, _setting_key).items()],
        "strategies": [{"strategy": k} | _row(g) for k, g in _groups(fc, lambda c: c.strategy).items()],
        "shards": [r | {"seconds": round(r["seconds"], 1)} for r in shard_table(fc, shard_count)]
        if shard_count else None,
        "cost_model": {"source": fc.model.source, "runs": fc.model.runs, "cases": len(fc.model.samples),
                       "machines": fc.model.machines, "structures": fc.model.structures,
                       "phases_recorded": fc.model.phases_recorded,
                       "window_law": {"window": round(fc.model.window, 3), "floor": round(fc.model.floor, 3),
                                      "screen_s": round(fc.model.screen, 3)},
                       "window_factor": round(fc.model.window_factor, 3), "shape_s": round(fc.model.shape_s, 3)},
        "notes": fc.notes,
    }


def _row(g: dict[str, Any]) -> dict[str, Any]:
    return {"shapes": len(g["shapes"]), "cases": g["cases"], "over_budget": g["over_budget"],
            "expected_to_fail": g["expected_to_fail"], "seconds": round(g["seconds"], 1)}


def render(fc: Forecast, shard_count: int | None = None) -> str:
    from tabulate import tabulate

    plan = fc.plan
    where = f", shard {plan.shard.label} ({len(fc.cases)} of {plan.total_cases} cases)" if plan.shard else ""
    lines = [
        f"jacobench plan: grid {plan.grid.name} on {', '.join(plan.devices)}: {len({c.case for c in fc.cases})} "
        f"shapes, {len(fc.cases)} cases, {len(plan.strategy_names)} strategies{where}; plan {plan.plan_hash}",
        f"cost model: fitted from {fc.model.source}: {len(fc.model.samples)} cases"
        + (f" ({'; '.join(fc.model.machines)})" if fc.model.machines else ""),
        "memory budget: " + ", ".join(f"{d} {fmt_bytes(b) if b is not None else 'unknown here'}"
                                      for d, b in fc.budgets.items())
        + ("" if plan.memory_budget_bytes else f" (the grid's {plan.grid.budget.memory_fraction:g} of the memory "
                                               "free now)"),
        *(f"note: {n}" for n in fc.notes), "",
    ]
    head = ["cases", "over budget", "expected to fail", "predicted"]
    setting = _setting_names(fc)
    rows = [[*k[:len(setting)], len(g["shapes"]), g["cases"], g["over_budget"], g["expected_to_fail"],
             fmt_duration(g["seconds"])] for k, g in _groups(fc, _setting_key).items()]
    lines += [tabulate(rows, [*setting, "shapes", *head], tablefmt="simple",
                       colalign=("left",) * len(setting) + ("right",) * 5), ""]
    rows = [[k, g["cases"], g["over_budget"], g["expected_to_fail"], fmt_duration(g["seconds"])]
            for k, g in _groups(fc, lambda c: c.strategy).items()]
    lines += [tabulate(rows, ["strategy", *head], tablefmt="simple", colalign=("left",) + ("right",) * 4), ""]
    over = [c for c in fc.cases if c.status == "over_budget"]
    for c in over[:LISTED]:
        lines.append(f"over budget: {c.case_id}: {c.message}")
    if len(over) > LISTED:
        lines.append(f"over budget: ... {len(over) - LISTED} more (--json lists them all)")
    if shard_count:
        rows = [[r["shard"], r["shapes"], r["cases"], fmt_duration(r["seconds"])] for r in shard_table(fc, shard_count)]
        lines += ["", tabulate(rows, ["shard", "shapes", "cases", "predicted"], tablefmt="simple",
                               colalign=("left", "right", "right", "right")), ""]
    fixed = fc.fixed_s
    failing = ", ".join(f"{fc.count(s)} {s}" for s in ("timeout", "oom", "skipped") if fc.count(s))
    lines.append(
        f"total: {len(fc.cases)} cases, {fc.count('over_budget')} over budget"
        + (f", expected: {failing}" if failing else "")
        + f"; predicted {fmt_duration(fc.total_s)} = cases {fmt_duration(fc.cases_s)} + shapes "
        f"{fmt_duration(sum(fc.shapes_s.values()))} + starting {fc.plan.processes} worker process"
        f"{'es' if fc.plan.processes > 1 else ''} {fmt_duration(fixed['start'])} + finish "
        f"{fmt_duration(fixed['finish'])} + report {fmt_duration(fixed['report'])}"
        + ("" if fc.model.phases_recorded else " (finish and report assumed: the fitted runs did not record them)"))
    return "\n".join(lines)


def split_by_cost(plan: RunPlan, count: int, model: CostModel | None = None) -> dict[Unit, int]:
    """The shard of every shape of the (whole) plan, balanced by the default cost model (what SHARD=k/N runs)."""
    return split(unit_costs(plan, model or costs.default()), count)
