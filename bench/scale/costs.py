"""The cost model behind `make plan` and the shard split: what a case, a shape and a run's fixed work cost on the
machine of some earlier runs. It is data, not code: fitted from run folders, by default the committed reference
runs in results/reference; `make plan FROM=results/<run>[,results/<run>...]` fits it to other runs.

How a finished run spent its time, taken apart per case: bench/scale/spent.py. How well the model predicts what
it has not seen: bench/scale/cost_check.py.

How one case is predicted (same strategy and mode; sizes compared as log2 of B, H, in, out; a different model,
dtype or device counts as MODEL_PENALTY, DTYPE_PENALTY, DEVICE_PENALTY log2 steps):
  - the median call from a local linear fit of the log call time over log sizes (bench/neighbours.py): it follows
    the measured slopes past the largest measured shape; a call over the grid's `time_s` is a timeout (the run tries
    twice); a measured smaller-or-equal shape that ran out of memory (or out of time under the same or a smaller
    limit) predicts the same failure;
  - the setup, the share of neighbours timed and re-timed: the K_NEAREST measured neighbours, inverse-distance
    weighted (bench/neighbours.py);
  - seconds = setup + the window law's rounds (for the processes expected to time it) + the second process's
    setup;
  - fallback, for a strategy or mode no run measured: the same strategy in the other mode, else the neighbours among
    every strategy of the mode (then of any mode); with no run at all, NO_DATA_CASE_S a case plus the timing effort.
Nothing here imports pandas: fitting reads a few thousand JSON lines. The timing rules the model follows (MIN_ROUNDS,
MIN_ROUND_S, LEAD_IN_S, WARM_CALL_S) are bench/harness/timing.py's own, imported (and with them torch, which every
caller of the cost model, `make plan` included, has imported already).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import results
from bench.harness.timing import LEAD_IN_S, MIN_ROUND_S, MIN_ROUNDS, WARM_CALL_S  # the rules the model follows
from bench.neighbours import idw, local_linear, log2_distances, log2_sizes
from bench.scale.spent import NOT_RUN, VALIDATION_CALLS, device_kind, take_apart, take_apart_playoffs
from bench.schema import PREDICTS_LARGER, Sizes

REFERENCE_RUNS = Path(__file__).resolve().parents[2] / "results" / "reference"

MODEL_PENALTY = 4.0  # another model counts as four log2 steps (16x) away on one size
DTYPE_PENALTY = 1.0
DEVICE_PENALTY = 4.0  # a cpu measurement says little about a cuda case, but more than nothing
FLOOR_S = 0.001  # the smallest setup a case is predicted to have
NOT_RUN_S = 0.001  # what such a case costs a run
NO_DATA_CASE_S = 0.5  # a case, outside its timed rounds, when no run at all can be read
TIMEOUT_TRIES = 2  # a first call over the time limit is tried again before the case is a timeout
LAUNCH_S = 1.0  # starting one worker process (python, torch, pytest) before it records anything, where no run
# recorded its processes' ends (here: the v5 runs, 0.6-1.2 s a process)
FINISH_PER_CASE_S = 0.004  # bench/run/session.finish, per case, where no run recorded it (quick here: 1.2 s / 300)
REPORT_PER_CASE_S = 0.025  # tables, plots and report, where no run recorded it (quick here: 7 s / 300)


@dataclass(frozen=True)
class Sample:
    """One measured case as the model sees it: its wall time taken apart."""

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
    setup_s: float = 0.0  # first process, outside its rounds: validation, compiling, the shape's preparation
    rounds_s: float = 0.0  # its own rounds, every process, and its share of the windows' own work (0: not timed)
    retime_s: float = 0.0  # the second process's compiling and validation of it (0: not re-timed)
    call_s: float | None = None  # its median call (None: not timed)
    processes: int = 0  # worker processes that timed it
    quantity: str = "jacobian"  # with the mode, model, dtype, sizes and device: the shape it belongs to

    @property
    def timed(self) -> bool:
        return self.call_s is not None and self.rounds_s > 0

    @property
    def floor_s(self) -> float:
        return rounds_floor(self.call_s, self.processes) if self.timed else 0.0

    @property
    def window_s(self) -> float:
        """Its part of its shape's windows: `target_s` per process that timed it."""
        return self.target_s * self.processes if self.timed else 0.0


def round_s(call_s: float) -> float:
    """Wall time of one round of a call this long: at least MIN_ROUND_S of calls, after its lead-in."""
    return max(call_s, MIN_ROUND_S) + (LEAD_IN_S if call_s < WARM_CALL_S else 0.0)


def rounds_floor(call_s: float | None, processes: float) -> float:
    """The rounds no window shortens: MIN_ROUNDS per process."""
    return MIN_ROUNDS * round_s(call_s) * processes if call_s else 0.0


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
    processes: int = 2


@dataclass(frozen=True)
class Estimate:
    seconds: float
    status: str = ""  # "timeout" or "oom" where the model expects it; "" otherwise
    basis: str = "neighbours"  # measured | neighbours | failure | call time | other mode | other strategies | no data
    call_s: float | None = None  # the median call it expects
    parts: tuple[float, float, float] = (0.0, 0.0, 0.0)  # setup, rounds, the second process's setup


@dataclass
class CostModel:
    """Measured cases of some runs, taken apart, and what those runs spent outside them."""

    source: str  # where it was fitted from, said in the output
    runs: list[str]
    samples: list[Sample]
    window: float = 1.0  # the window law: rounds = window x target_s x processes + floor x MIN_ROUNDS rounds
    floor: float = 1.0  # + screen x processes
    screen: float = 0.0
    window_factor: float = 1.0  # the fitted runs' median window factor (said in the output)
    shape_s: float = 0.0
    launch_s: float = LAUNCH_S
    finish_per_case_s: float = FINISH_PER_CASE_S
    report_per_case_s: float = REPORT_PER_CASE_S
    phases_recorded: bool = False  # finish and report were measured, not assumed
    machines: list[str] = field(default_factory=list)  # "cpu model, N threads, torch X" of the runs
    structures: list[str] = field(default_factory=list)  # the fitted runs' structures (RunCosts.structure)

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
        columns = np.array([[math.log(max(s.setup_s - VALIDATION_CALLS * (s.call_s or 0.0), FLOOR_S)), s.timed,
                             s.processes > 1, max(s.retime_s - VALIDATION_CALLS * (s.call_s or 0.0), 0.0)]
                            for s in measured])  # [samples, 4]
        est, nearest = idw(dist, columns)  # [queries, 4], [queries]
        calls = _calls(measured, queries, dist)  # [queries]
        failures = _failures(own, queries)
        out = []
        for n, q in enumerate(queries):
            setup0, timed, retimed, retime0 = math.exp(est[n, 0]), *est[n, 1:]
            call = float(calls[n])
            if failures[n] is not None:
                failed = failures[n]
                out.append(Estimate(failed.wall_s * q.time_s / failed.time_s, failed.status, "failure", call))
                continue
            if timed > 0.5 and call > q.time_s:
                out.append(Estimate(setup0 + TIMEOUT_TRIES * q.time_s, "timeout", "call time", call))
                continue
            retimed = retimed if q.processes > 1 else 0.0
            rounds = timed * self.rounds(call, q.target_s, 1 + retimed)
            again = retime0 + retimed * VALIDATION_CALLS * call if q.processes > 1 else 0.0
            exact = dist[n, nearest[n]] == 0 and basis == "neighbours"
            setup = setup0 + timed * VALIDATION_CALLS * call
            out.append(Estimate(setup + rounds + again, "", "measured" if exact else basis, call,
                                (setup, rounds, again)))
        return out

    def rounds(self, call_s: float, target_s: float, processes: float) -> float:
        """The window law: a timed strategy's rounds in its shape's windows, their own work included."""
        return (self.window * target_s + self.screen) * processes + self.floor * rounds_floor(call_s, processes)


def distances(samples: Sequence[Sample], queries: Sequence[Query]) -> np.ndarray:
    """[queries, samples] distance: log2 sizes, plus the penalties for another model, dtype or device."""
    d2 = log2_distances([q.sizes for q in queries], [s.sizes for s in samples]) ** 2  # [queries, samples]
    for attr, penalty in (("model", MODEL_PENALTY), ("dtype", DTYPE_PENALTY), ("device", DEVICE_PENALTY)):
        mine = np.array([getattr(q, attr) for q in queries])[:, None]  # [queries, 1]
        theirs = np.array([getattr(s, attr) for s in samples])[None, :]  # [1, samples]
        d2 += penalty**2 * (mine != theirs)
    return np.sqrt(d2)


def _calls(measured: list[Sample], queries: list[Query], dist: np.ndarray) -> np.ndarray:
    """[queries] median call expected: a local linear fit of log call time over log2 sizes (0 where no neighbour
    was timed)."""
    timed = [i for i, s in enumerate(measured) if s.timed]
    if not timed:
        return np.zeros(len(queries))
    points = log2_sizes([measured[i].sizes for i in timed])  # [timed, 4]
    log_calls = np.log([measured[i].call_s for i in timed])  # [timed]
    fitted = local_linear(dist[:, timed], points, log2_sizes([q.sizes for q in queries]), log_calls)  # [queries]
    return np.exp(fitted)


def _measured(pool: Iterable[Sample]) -> list[Sample]:
    """Cases whose wall time says what running them costs (failures predict by the rule in _failures)."""
    return [s for s in pool if s.status not in NOT_RUN and s.status not in PREDICTS_LARGER]


def _failures(own: list[Sample], queries: list[Query]) -> list[Sample | None]:
    """Per query, the nearest measured shape of the same strategy, mode, model, dtype and device that is at most as
    large on every axis and ran out of memory, or out of time under the same or a smaller limit (None when there is
    none): the skip rule of a run, as data."""
    failed = [s for s in own if s.status in PREDICTS_LARGER]
    if not failed:
        return [None] * len(queries)
    q_sizes = np.array([q.sizes for q in queries])[:, None, :]  # [queries, 1, 4]
    f_sizes = np.array([s.sizes for s in failed])[None, :, :]  # [1, failed, 4]
    same = np.array([[(q.model, q.dtype, q.device) == (s.model, s.dtype, s.device)
                      and (s.status != "timeout" or q.time_s <= s.time_s) for s in failed]
                     for q in queries])  # [queries, failed]
    below = (q_sizes >= f_sizes).all(axis=2) & same  # [queries, failed]
    dist = np.where(below, distances(failed, queries), np.inf)
    return [failed[int(np.argmin(row))] if np.isfinite(row).any() else None for row in dist]


# ---- fitting ---------------------------------------------------------------------------------------------------------

def fit(folders: Sequence[Path], source: str = "") -> CostModel:
    """The cost model of these run folders (a ResultsError for a folder that is not a run)."""
    samples, per_run, machines = [], [], []
    for folder in folders:
        run = results.read_run(Path(folder))
        env = run.env
        budget = (env.get("grid") or {}).get("budget") or {}
        target_s = float(budget.get("target_s") or 0.25)
        time_s = float(env.get("time_budget_s") or budget.get("time_s") or 5.0)
        cases = [r for r in run.cases if isinstance(r.wall_s, int | float) and r.wall_s >= 0]
        split = take_apart if env.get("processes") else take_apart_playoffs
        parts, run_costs = split(cases, run.verdicts, env, target_s)
        samples += [Sample(r.strategy, r.mode, r.model, r.dtype, device_kind(r.device), r.sizes, r.status,
                           float(r.wall_s), target_s, time_s, *part, quantity=r.quantity)
                    for r, part in zip(cases, parts, strict=True)]
        per_run.append(run_costs)
        threads = env.get("threads", "?")
        machines.append(f"{env.get('cpu_model', 'unknown CPU')}, {threads} thread{'' if threads == 1 else 's'}, "
                        f"torch {env.get('torch', '?')}")

    def median(values: list[float | None], default: float) -> float:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else default

    names = [Path(f).name for f in folders]
    window, floor, screen = window_law(samples)
    return CostModel(
        source=source or ", ".join(str(f) for f in folders), runs=names, samples=samples, window=window, floor=floor,
        screen=screen,
        window_factor=median([r.window_factor for r in per_run], 1.0),
        shape_s=median([r.shape_s for r in per_run], 0.0),
        launch_s=median([r.launch_s for r in per_run], LAUNCH_S),
        finish_per_case_s=median([r.finish_per_case_s for r in per_run], FINISH_PER_CASE_S),
        report_per_case_s=median([r.report_per_case_s for r in per_run], REPORT_PER_CASE_S),
        phases_recorded=any(r.report_per_case_s is not None for r in per_run),
        machines=sorted(set(machines)), structures=sorted({r.structure for r in per_run}))


def window_law(samples: Sequence[Sample]) -> tuple[float, float, float]:
    """(window, floor, screen) of the law rounds = (window x target_s + screen) x processes + floor x rounds floor,
    least squares over the measured shapes (a shape's windows add up its strategies' rounds), none below 0.
    `screen` is what a strategy costs whatever `target_s` is: the screening blocks of BLOCK_S every strategy runs in
    before the contenders go on alone (bench/harness/timing.py); without it, a grid of a shorter `target_s` than the
    fitted ones is predicted far too short. (1, 1, 0) without data."""
    shapes: dict[tuple, list[float]] = {}
    for s in samples:
        if s.timed:
            row = shapes.setdefault((s.target_s, *shape_key(s)), [0.0, 0.0, 0.0, 0.0])
            row[0] += s.window_s
            row[1] += s.floor_s
            row[2] += s.processes
            row[3] += s.rounds_s
    if not shapes:
        return 1.0, 1.0, 0.0
    rows = np.array(list(shapes.values()))  # [shapes, 4]: window, floor, processes, rounds
    return tuple(float(c) for c in _nonnegative_least_squares(rows[:, :3], rows[:, 3]))  # type: ignore[return-value]


def _nonnegative_least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin |x c - y| over c >= 0, by trying every set of free coefficients (x has a handful of columns).
    x: [rows, terms], y: [rows]; returns [terms]."""
    best, best_error = np.zeros(x.shape[1]), float(y @ y)
    for mask in range(1, 2 ** x.shape[1]):
        free = [i for i in range(x.shape[1]) if mask >> i & 1]
        coef = np.zeros(x.shape[1])
        coef[free] = np.linalg.lstsq(x[:, free], y, rcond=None)[0]
        error = float(((x @ coef - y) ** 2).sum())
        if (coef >= 0).all() and error < best_error - 1e-12:
            best, best_error = coef, error
    return best


def reference_folders() -> list[Path]:
    return sorted(p.parent for p in REFERENCE_RUNS.glob("*/cases.jsonl"))


@functools.lru_cache(maxsize=1)
def default() -> CostModel:
    """Fitted from the committed reference runs (copies of this project's runs); with none (an installed package),
    a model without data: NO_DATA_CASE_S a case."""
    folders = reference_folders()
    if not folders:
        return CostModel(source="no runs (none in results/reference): a flat guess", runs=[], samples=[])
    names = ", ".join(f.name for f in folders)
    return fit(folders, source=f"the committed reference runs in results/reference ({names})")


def from_run(spec: str) -> CostModel:
    """FROM=results/<run> (or a run id), or several separated by commas: fitted to those runs alone."""
    folders = [results.resolve_run_dir(part.strip()) for part in spec.split(",") if part.strip()]
    if not folders:
        raise results.ResultsError("FROM= names no run: give results/<run>[,results/<run>...]")
    return fit(folders, source=", ".join(str(f) for f in folders))


def shape_key(s: Sample) -> tuple:
    """The shape a sample belongs to: model, dtype, sizes, mode, device and quantity."""
    return s.model, s.dtype, s.sizes, s.mode, s.device, s.quantity
