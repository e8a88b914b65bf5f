"""The cost model behind `make plan` and the shard split: what a case, a shape's playoff and a run's fixed work cost on
the machine of some earlier runs. It is data, not code: fitted from run folders, by default the committed reference
runs in results/reference (this project's CPU VM); `make plan FROM=results/<run>` fits it to another run.

What it reads from each run folder:
  cases.jsonl     per case: `wall_s` (all the harness spent on it: for a shape's first strategy the model and its
                  float64 reference too; validation, compiling (`setup_s`), timed rounds, memory pass), the sizes,
                  strategy, mode, model, dtype, device and status
  playoffs.jsonl  per shape: `wall_s` of its verdict (the contenders re-timed interleaved)
  env.json        the grid's budget (`target_s`: timing effort per case, `time_s`: the limit of one call);
                  `created`/`finished` (what the run spent between its cases: calibration, env.json, summary);
                  `phases` where a run recorded seconds per phase ("start": process start to the run folder,
                  "report": tables, plots and documents); older runs lack it and then START_S and REPORT_S stand in

How one case is predicted (same strategy and mode; sizes compared as log2 of B, H, in, out; a different model,
dtype or device counts as MODEL_PENALTY, DTYPE_PENALTY, DEVICE_PENALTY log2 steps):
  - a measured smaller-or-equal shape of the same strategy, mode, model, dtype and device that ran out of time or
    memory predicts the same failure, at its wall time scaled by the ratio of the time budgets;
  - otherwise the K_NEAREST measured neighbours, inverse-distance weighted in log space (bench/neighbours.py), give
    the wall time outside the timed rounds, and the timed rounds cost the new grid's `target_s` (as often as the
    neighbours were ok: wrong or unsupported cases are not timed);
  - fallback, for a strategy or mode no run measured: the same strategy in the other mode, else the neighbours among
    every strategy of the mode (then of any mode); with no run at all, NO_DATA_CASE_S a case plus the timing effort.
A playoff: its K_NEAREST measured playoffs of the mode, as a multiple of their grid's `target_s`. Nothing here
imports torch or pandas: fitting reads about a thousand JSON lines.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import results
from bench.neighbours import idw, log2_sizes
from bench.schema import PREDICTS_LARGER, Sizes

REFERENCE_RUNS = Path(__file__).resolve().parents[2] / "results" / "reference"

MODEL_PENALTY = 4.0  # another model counts as four log2 steps (16x) away on one size
DTYPE_PENALTY = 1.0
DEVICE_PENALTY = 4.0  # a cpu measurement says little about a cuda case, but more than nothing
FLOOR_S = 0.001  # the smallest cost a case is predicted to have outside its timed rounds
NOT_RUN = ("over_budget", "skipped")  # decided by rules before anything runs: nothing of the machine to learn
NOT_RUN_S = 0.001  # what such a case costs a run
NO_DATA_CASE_S = 0.5  # a case, outside its timed rounds, when no run at all can be read
START_S = 5.0  # process start to the run folder (imports, planning), where no run recorded phases["start"]
REPORT_S = 15.0  # summary, tables, plots and report, where no run recorded phases["report"]
_TIMESTAMP = "%Y-%m-%dT%H:%M:%S%z"


@dataclass(frozen=True)
class Sample:
    """One measured case as the model sees it."""

    strategy: str
    mode: str
    model: str
    dtype: str
    device: str  # cpu or cuda: cuda:N is the same kind of machine
    sizes: Sizes
    status: str
    wall_s: float
    target_s: float  # the timing effort of its grid
    time_s: float  # its grid's limit of one call


@dataclass(frozen=True)
class Query:
    """A case to predict: who, where, how large, and the budget of the grid it will run in."""

    strategy: str
    mode: str
    model: str
    dtype: str
    device: str
    sizes: Sizes
    target_s: float
    time_s: float


@dataclass(frozen=True)
class Estimate:
    seconds: float
    status: str = ""  # "timeout" or "oom" where a smaller measured shape failed so; "" otherwise
    basis: str = "neighbours"  # measured | neighbours | failure | other mode | other strategies | no data


@dataclass
class CostModel:
    """Measured cases and playoffs of some runs, and what those runs spent outside them."""

    source: str  # where it was fitted from, said in the output
    runs: list[str]
    samples: list[Sample]
    playoffs: list[Sample]  # strategy "" ; wall_s of the verdict
    run_s: float = 0.0  # per run, between its cases (calibration, env.json, summary)
    start_s: float = START_S
    report_s: float = REPORT_S
    phases_recorded: bool = False  # start_s and report_s were measured, not assumed
    machines: list[str] = field(default_factory=list)  # "cpu model, N threads, torch X" of the runs

    @property
    def devices(self) -> set[str]:
        return {s.device for s in self.samples}

    def predict(self, queries: Sequence[Query]) -> list[Estimate]:
        """One estimate per query, in order."""
        found: list[Estimate | None] = [None] * len(queries)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault((q.strategy, q.mode), []).append(i)
        for (strategy, mode), indices in groups.items():
            batch = [queries[i] for i in indices]
            for i, estimate in zip(indices, self._predict_group(strategy, mode, batch), strict=True):
                found[i] = estimate
        return found  # type: ignore[return-value]

    def _predict_group(self, strategy: str, mode: str, queries: list[Query]) -> list[Estimate]:
        own = [s for s in self.samples if s.strategy == strategy and s.mode == mode]
        pools = [(own, "neighbours"), ([s for s in self.samples if s.strategy == strategy], "other mode"),
                 ([s for s in self.samples if s.mode == mode], "other strategies"), (self.samples, "other strategies")]
        measured, basis = next(((ok, b) for pool, b in pools if (ok := _measured(pool))), ([], "no data"))
        if not measured:
            return [Estimate(NO_DATA_CASE_S + q.target_s, basis="no data") for q in queries]
        dist = distances(measured, queries)  # [queries, samples]
        effort = np.array([[s.status == "ok"] for s in measured], dtype=float)  # [samples, 1]
        rest = np.array([[math.log(max(s.wall_s - s.target_s * (s.status == "ok"), FLOOR_S))] for s in measured])
        est, nearest = idw(dist, np.hstack([rest, effort]))  # [queries, 2], [queries]
        failures = _failures(own, queries)
        out = []
        for n, q in enumerate(queries):
            failed = failures[n]
            if failed is not None:
                out.append(Estimate(failed.wall_s * q.time_s / failed.time_s, failed.status, "failure"))
                continue
            exact = dist[n, nearest[n]] == 0 and basis == "neighbours"
            out.append(Estimate(math.exp(est[n, 0]) + est[n, 1] * q.target_s, "", "measured" if exact else basis))
        return out

    def predict_playoffs(self, queries: Sequence[Query]) -> list[float]:
        """Seconds of each shape's verdict (queries with strategy "")."""
        out = [0.0] * len(queries)
        for mode in {q.mode for q in queries}:
            pool = [p for p in self.playoffs if p.mode == mode] or self.playoffs
            indices = [i for i, q in enumerate(queries) if q.mode == mode]
            if not pool:
                continue
            ratio = np.array([[math.log(max(p.wall_s, FLOOR_S) / p.target_s)] for p in pool])  # [playoffs, 1]
            est, _ = idw(distances(pool, [queries[i] for i in indices]), ratio)  # [queries, 1]
            for i, log_ratio in zip(indices, est[:, 0], strict=True):
                out[i] = float(math.exp(log_ratio) * queries[i].target_s)
        return out


def distances(samples: Sequence[Sample], queries: Sequence[Query]) -> np.ndarray:
    """[queries, samples] distance: log2 sizes, plus the penalties for another model, dtype or device."""
    d2 = ((log2_sizes([q.sizes for q in queries])[:, None, :]
           - log2_sizes([s.sizes for s in samples])[None, :, :]) ** 2).sum(axis=2)  # [queries, samples]
    for attr, penalty in (("model", MODEL_PENALTY), ("dtype", DTYPE_PENALTY), ("device", DEVICE_PENALTY)):
        mine = np.array([getattr(q, attr) for q in queries])[:, None]  # [queries, 1]
        theirs = np.array([getattr(s, attr) for s in samples])[None, :]  # [1, samples]
        d2 += penalty**2 * (mine != theirs)
    return np.sqrt(d2)


def _measured(pool: Iterable[Sample]) -> list[Sample]:
    """Cases whose wall time says what running them costs (failures predict by the rule in _failures)."""
    return [s for s in pool if s.status not in NOT_RUN and s.status not in PREDICTS_LARGER]


def _failures(own: list[Sample], queries: list[Query]) -> list[Sample | None]:
    """Per query, the nearest measured shape of the same strategy, mode, model, dtype and device that is at most as
    large on every axis and ran out of time or memory (None when there is none): the skip rule of a run, as data."""
    failed = [s for s in own if s.status in PREDICTS_LARGER]
    if not failed:
        return [None] * len(queries)
    q_sizes = np.array([q.sizes for q in queries])[:, None, :]  # [queries, 1, 4]
    f_sizes = np.array([s.sizes for s in failed])[None, :, :]  # [1, failed, 4]
    same = np.array([[(q.model, q.dtype, q.device) == (s.model, s.dtype, s.device) for s in failed]
                     for q in queries])  # [queries, failed]
    below = (q_sizes >= f_sizes).all(axis=2) & same  # [queries, failed]
    dist = np.where(below, distances(failed, queries), np.inf)
    return [failed[int(np.argmin(row))] if np.isfinite(row).any() else None for row in dist]


def device_kind(device: str) -> str:
    return device.partition(":")[0]


def fit(folders: Sequence[Path], source: str = "") -> CostModel:
    """The cost model of these run folders (a ResultsError for a folder that is not a run)."""
    samples, playoffs, outside, starts, reports, machines = [], [], [], [], [], []
    for folder in folders:
        run = results.read_run(Path(folder))
        env = run.env
        budget = (env.get("grid") or {}).get("budget") or {}
        target_s = float(budget.get("target_s") or 0.25)
        time_s = float(env.get("time_budget_s") or budget.get("time_s") or 5.0)
        for r in run.cases:
            if isinstance(r.wall_s, int | float) and r.wall_s >= 0:
                samples.append(Sample(r.strategy, r.mode, r.model, r.dtype, device_kind(r.device), r.sizes,
                                      r.status, float(r.wall_s), target_s, time_s))
        for v in run.verdicts:
            if isinstance(v.wall_s, int | float) and v.wall_s > 0:
                playoffs.append(Sample("", v.mode, v.model, v.dtype, device_kind(v.device), v.sizes, "ok",
                                       float(v.wall_s), target_s, time_s))
        spent = _seconds_between(env.get("created"), env.get("finished"))
        if spent is not None and not env.get("resumed"):
            inside = sum(r.wall_s or 0 for r in run.cases) + sum(v.wall_s or 0 for v in run.verdicts)
            outside.append(max(0.0, spent - inside))
        phases = env.get("phases") if isinstance(env.get("phases"), dict) else {}
        starts += [float(phases["start"])] if isinstance(phases.get("start"), int | float) else []
        reports += [float(phases["report"])] if isinstance(phases.get("report"), int | float) else []
        threads = env.get("threads", "?")
        machines.append(f"{env.get('cpu_model', 'unknown CPU')}, {threads} thread{'' if threads == 1 else 's'}, "
                        f"torch {env.get('torch', '?')}")
    names = [Path(f).name for f in folders]
    return CostModel(
        source=source or ", ".join(str(f) for f in folders), runs=names, samples=samples, playoffs=playoffs,
        run_s=statistics.median(outside) if outside else 0.0,
        start_s=statistics.median(starts) if starts else START_S,
        report_s=statistics.median(reports) if reports else REPORT_S,
        phases_recorded=bool(starts and reports), machines=sorted(set(machines)))


def _seconds_between(start: Any, end: Any) -> float | None:
    try:
        return (datetime.strptime(end, _TIMESTAMP) - datetime.strptime(start, _TIMESTAMP)).total_seconds()
    except (TypeError, ValueError):
        return None


def reference_folders() -> list[Path]:
    return sorted(p.parent for p in REFERENCE_RUNS.glob("*/cases.jsonl"))


@functools.lru_cache(maxsize=1)
def default() -> CostModel:
    """Fitted from the committed reference runs (copies of this project's runs); with none (an installed package),
    a model without data: NO_DATA_CASE_S a case."""
    folders = reference_folders()
    if not folders:
        return CostModel(source="no runs (none in results/reference): a flat guess", runs=[], samples=[],
                         playoffs=[])
    names = ", ".join(f.name for f in folders)
    return fit(folders, source=f"the committed reference runs in results/reference ({names})")


def from_run(spec: str) -> CostModel:
    """FROM=results/<run> (or a run id): fitted to that run alone."""
    folder = results.resolve_run_dir(spec)
    return fit([folder], source=str(folder))


def leave_one_out(folders: Sequence[Path], hide: str = "run") -> list[dict[str, Any]]:
    """How well the model predicts what it has not seen, for checking it (not for planning). hide="run": each run
    predicted from the other runs; hide="shape": each shape (model, dtype, sizes, mode, device) of each run predicted
    from every other shape of all the runs. Per run: predicted and measured seconds of its cases and playoffs
    (cases over budget or skipped cost what they cost: they follow from rules, not from the machine), and the
    median factor between the predicted and the measured wall time of one case."""
    out = []
    for held in folders:
        own = fit([held])
        if hide == "run":
            others = [fit([f for f in folders if f != held])]
            groups = [own.samples]
        else:
            everything = fit(folders)
            groups = list(_by_shape(own.samples).values())
            others = [_without(everything, _shape_key(group[0])) for group in groups]
        predicted, measured = [], []
        for model, group in zip(others, groups, strict=True):
            queries = [Query(s.strategy, s.mode, s.model, s.dtype, s.device, s.sizes, s.target_s, s.time_s)
                       for s in group]
            predicted += [NOT_RUN_S if s.status in NOT_RUN else e.seconds
                          for s, e in zip(group, model.predict(queries), strict=True)]
            measured += group
        plays = others[0].predict_playoffs([Query("", p.mode, p.model, p.dtype, p.device, p.sizes, p.target_s,
                                                  p.time_s) for p in own.playoffs]) if hide == "run" else \
            [p.wall_s for p in own.playoffs]
        factors = [max(p, FLOOR_S) / max(s.wall_s, FLOOR_S) for p, s in zip(predicted, measured, strict=True)
                   if s.status not in NOT_RUN]
        out.append({
            "run": Path(held).name, "hidden": hide, "cases": len(measured),
            "predicted_s": round(sum(predicted) + sum(plays), 1),
            "measured_s": round(sum(s.wall_s for s in measured) + sum(p.wall_s for p in own.playoffs), 1),
            "case_factor_median": round(float(np.exp(np.median(np.abs(np.log(factors))))), 2) if factors else None,
        })
    return out


def _shape_key(s: Sample) -> tuple:
    return s.model, s.dtype, s.sizes, s.mode, s.device


def _by_shape(samples: Iterable[Sample]) -> dict[tuple, list[Sample]]:
    groups: dict[tuple, list[Sample]] = {}
    for s in samples:
        groups.setdefault(_shape_key(s), []).append(s)
    return groups


def _without(model: CostModel, shape: tuple) -> CostModel:
    return CostModel(model.source, model.runs, [s for s in model.samples if _shape_key(s) != shape],
                     [p for p in model.playoffs if _shape_key(p) != shape], model.run_s, model.start_s, model.report_s,
                     model.phases_recorded, model.machines)
