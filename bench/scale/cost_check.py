"""How well the cost model (bench/scale/costs.py) predicts what it has not seen, for checking it, not for planning:
each run, or each shape, predicted from the others and set beside what it cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.scale.costs import FLOOR_S, NOT_RUN_S, CostModel, Query, Sample, fit, shape_key
from bench.scale.spent import NOT_RUN


def case_cost(s: Sample) -> float:
    """What a measured case cost its run, as the model counts it (the window's own work included)."""
    return s.setup_s + s.rounds_s + s.retime_s if s.status not in NOT_RUN else NOT_RUN_S


def leave_one_out(folders: Sequence[Path], hide: str = "run") -> list[dict[str, Any]]:
    """How well the model predicts what it has not seen, for checking it (not for planning). hide="run": each run
    predicted from the other runs; hide="shape": each shape (model, dtype, sizes, mode, device) of each run predicted
    from every other shape of all the runs. Per run: predicted and measured seconds of its cases (as `case_cost`
    counts them: cases over budget or skipped cost what rules make them cost), and the median factor between the
    predicted and the measured cost of one case."""
    out = []
    for held in folders:
        own = fit([held])
        if hide == "run":
            others = [fit([f for f in folders if f != held])]
            groups = [own.samples]
        else:
            everything = fit(folders)
            groups = list(_by_shape(own.samples).values())
            others = [_without(everything, shape_key(group[0])) for group in groups]
        predicted, measured = [], []
        for model, group in zip(others, groups, strict=True):
            queries = [Query(s.strategy, s.mode, s.model, s.dtype, s.device, s.sizes, s.target_s, s.time_s)
                       for s in group]
            predicted += [NOT_RUN_S if s.status in NOT_RUN else e.seconds
                          for s, e in zip(group, model.predict(queries), strict=True)]
            measured += [case_cost(s) for s in group]
        factors = [max(p, FLOOR_S) / max(m, FLOOR_S) for p, m, s in
                   zip(predicted, measured, [s for g in groups for s in g], strict=True) if s.status not in NOT_RUN]
        out.append({
            "run": Path(held).name, "hidden": hide, "cases": len(measured),
            "predicted_s": round(sum(predicted), 1), "measured_s": round(sum(measured), 1),
            "case_factor_median": round(float(np.exp(np.median(np.abs(np.log(factors))))), 2) if factors else None,
        })
    return out


def _by_shape(samples: Iterable[Sample]) -> dict[tuple, list[Sample]]:
    groups: dict[tuple, list[Sample]] = {}
    for s in samples:
        groups.setdefault(shape_key(s), []).append(s)
    return groups


def _without(model: CostModel, shape: tuple) -> CostModel:
    return dataclasses.replace(model, samples=[s for s in model.samples if shape_key(s) != shape])
