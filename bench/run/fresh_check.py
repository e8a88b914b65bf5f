"""Is a run's number what the call costs in the user's own program? Checked in every run, and deeper on demand.

Every run (`Check`, driven by bench/run/host.py): between the shapes of pass 2, a sample of ok cases is timed again
in fresh Python processes by torch.utils.benchmark.Timer (bench/harness/fresh.py), right before the second worker
times the same shape, so that a slow moment of the machine hits both. The sample covers every strategy of the run at
least once, the contenders of the largest shapes first, within FIDELITY= (default 10%) of the first pass's wall
time. Finishing the run sets each sampled case's run/fresh ratio beside it and, per strategy, the geometric mean
of those ratios with its 95% interval (bench/fidelity.py); env.json keeps both, and the report's first screen says
them in one line, naming every strategy off by more than 10%.

Deeper (`python -m bench fidelity RUN`, `measure_fidelity`): any cases of a finished run, each in its own fresh
process, several turns each.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench import results
from bench.errors import BenchError
from bench.fidelity import STRATEGY_TARGET, TARGET
from bench.harness import fresh
from bench.schema import CaseRecord
from bench.spec.models import resolve

START_S = 3.0  # a fresh process's start (python, torch, the model) before its first call, until one is measured
PER_STRATEGY_S = 1.0  # a strategy's warm-up call and its Timer turns with their calibrations, besides its compiling
# (0.4 s timed; up to twice that when the machine ran slow and turns were timed again)


class Check:
    """The fidelity check of one session of a run: which cases, their fresh-process times, what it cost."""

    def __init__(self, share: float, records: Iterable[CaseRecord], pending: list[tuple[str, Any]],
                 first_pass_s: float, models: dict[str, str], threads: int, usual_s: float | None = None):
        self.models, self.threads = models, threads
        self.usual_s = usual_s  # the first pass's usual calibration time: the machine speed fresh turns are held to
        self.share = share
        self.budget_s = share * first_pass_s
        self.picks = pick(list(records), {(d, c.shape_id) for d, c in pending}, self.budget_s)
        self.found: list[dict[str, Any]] = []
        self.spent_s = 0.0
        self.estimated_s = 0.0  # what the fresh processes timed so far were estimated to cost (`cost_s`)
        self.skipped: list[str] = []  # picked, but left out to keep the budget (`over_budget` in env.json)
        self.problems: list[str] = []

    def time_fresh(self, device: str, shape_id: str) -> None:
        """Time the picked cases of one shape in a fresh process (nothing when none is picked)."""
        picked = self.picks.get((device, shape_id))
        if not picked:
            return
        least = min(cost_s([r]) for r in picked)  # its start and one strategy: the deadline cuts the rest
        if self.spent_s + least * self.overrun() > self.budget_s:  # the budget is what is spent, not estimated
            self.skipped += [r.case_id for r in picked]
            return
        started = time.perf_counter()
        job = fresh.spec(picked[0], self.models[picked[0].model], self.threads, [r.strategy for r in picked],
                         self.usual_s)
        job["deadline"] = time.time() + self.budget_s - self.spent_s  # no strategy starts after it (one at least)
        try:
            timed = fresh.in_fresh_process(job)
        except BenchError as exc:
            self.problems.append(str(exc))
            timed = {}
        ran = [r for r in picked if not timed.get(r.strategy, {}).get("over_budget")]
        self.skipped += [r.case_id for r in picked if r not in ran]
        self.found += [{"case_id": r.case_id, "key": list(r.key), "strategy": r.strategy,
                        **timed.get(r.strategy, {"error": "not timed"})} for r in ran]
        self.estimated_s += cost_s(ran)
        self.spent_s += time.perf_counter() - started

    def overrun(self) -> float:
        """How much more than estimated the fresh processes so far cost (1 at least): on a slow machine their turns
        are timed again and they wait out slow episodes (one run here spent 21.5 s of an 11.9 s budget)."""
        return max(1.0, self.spent_s / self.estimated_s) if self.estimated_s else 1.0

    def save(self, folder: Path) -> None:
        """Add this session's fresh timings to env.json (finishing the run turns them into ratios)."""
        env_path = folder / "env.json"
        env = results.read_json(env_path)
        before = env.get("fidelity") or {}
        found = {c["case_id"]: c for c in before.get("fresh", [])} | {c["case_id"]: c for c in self.found}
        env["fidelity"] = before | {
            "share": self.share, "budget_s": round(self.budget_s, 1),
            "spent_s": round(before.get("spent_s", 0) + self.spent_s, 1),
            "fresh": list(found.values()), "problems": before.get("problems", []) + self.problems,
            "over_budget": before.get("over_budget", []) + self.skipped}
        results.write_json(env_path, env)


def pick(records: list[CaseRecord], pending: set[tuple[str, str]], budget_s: float
         ) -> dict[tuple[str, str], list[CaseRecord]]:
    """The cases to time in fresh processes, by shape: every strategy at least once where the budget allows, the
    contenders of the largest shapes first; each fresh process (one shape) costs START_S, each strategy in it
    PER_STRATEGY_S and its compiling."""
    timed = [r for r in records if r.status == "ok" and r.round_times_s and (r.device, _shape(r)) in pending]
    by_shape: dict[tuple[str, str], list[CaseRecord]] = {}
    for r in sorted(timed, key=lambda r: -_work(r)):
        by_shape.setdefault((r.device, _shape(r)), []).append(r)
    picks: dict[tuple[str, str], list[CaseRecord]] = {}
    covered: set[str] = set()
    spent = 0.0

    def add(shape: tuple[str, str], chosen: list[CaseRecord]) -> None:
        nonlocal spent
        cost = cost_s(chosen, started=shape in picks)
        if chosen and spent + cost <= budget_s:
            picks.setdefault(shape, []).extend(chosen)
            covered.update(r.strategy for r in chosen)
            spent += cost

    for shape, rows in by_shape.items():  # largest shapes first: their contenders not covered yet
        add(shape, [r for r in rows if r.contender and r.strategy not in covered])
    for strategy in dict.fromkeys(r.strategy for r in timed):  # then every strategy left: in a process already
        if strategy not in covered:  # picked where it can (no second start), else at its largest shape
            where = [(shape, r) for shape, rows in by_shape.items() for r in rows if r.strategy == strategy]
            shape, r = next(((shape, r) for shape, r in where if shape in picks), where[0])
            add(shape, [r])
    return picks


def _shape(r: CaseRecord) -> str:
    return r.case_id.removeprefix(f"{r.strategy}-{r.device}-")


def _work(r: CaseRecord) -> float:
    return r.batch * r.hidden * (r.in_dim + r.out_dim)


def cost_s(records: list[CaseRecord], started: bool = False) -> float:
    """The estimated seconds of timing `records` (one shape) in a fresh process (`started`: one already counted)."""
    return (0.0 if started else START_S) + sum(PER_STRATEGY_S + (r.setup_s or 0.0) + 3 * (r.time_median_s or 0.0)
                                               for r in records)


# ---- the deeper check: python -m bench fidelity RUN ------------------------------------------------------------

def pick_cases(records: list[CaseRecord], n: int, strategies: list[str] | None = None) -> list[CaseRecord]:
    """n ok cases spread over the range of measured times (fast to slow); with `strategies`, n of each of them."""
    ok = sorted((r for r in records if r.status == "ok" and r.time_median_s), key=lambda r: r.time_median_s)
    if strategies:
        return [c for name in strategies for c in spread([r for r in ok if r.strategy == name], n)]
    return spread(ok, n)


def spread(ordered: list[CaseRecord], n: int) -> list[CaseRecord]:
    if len(ordered) <= n:
        return ordered
    if n == 1:
        return [ordered[len(ordered) // 2]]
    return [ordered[round(i * (len(ordered) - 1) / (n - 1))] for i in range(n)]


def measure_fidelity(folder: Path, cases: int = 5, repeats: int = 3, strategies: list[str] | None = None
                     ) -> list[dict]:
    """Time the picked cases in fresh processes (one case each), `repeats` turns each; print the table and return
    its rows."""
    env = results.read_json(folder / "env.json")
    picked = pick_cases(results.read_cases(folder / "cases.jsonl"), cases, strategies)
    if not picked:
        raise BenchError(f"{folder}: no ok case to time" + (f" of {', '.join(strategies)}" if strategies else ""))
    models = env.get("models") or {}
    for r in picked:
        if r.model not in models:
            raise BenchError(f"model {r.model!r}: env.json does not say how to build it; rerun the benchmark")
        resolve(models[r.model])  # one line (ModelError) when a user's model file moved since the run
    usual_s = (env.get("machine_speed") or {}).get("calibration_s")  # the run's machine speed
    jobs = {r.case_id: fresh.spec(r, models[r.model], env.get("threads") or 0, [r.strategy], usual_s)
            for r in picked}
    timed: dict[str, list[dict]] = {case: [] for case in jobs}
    order = random.Random(0)
    for _ in range(repeats):  # the cases take turns: the machine's slow moments spread over all of them
        turn = list(jobs)
        order.shuffle(turn)
        for case in turn:
            found = fresh.in_fresh_process(jobs[case])[jobs[case]["strategies"][0]]
            if "error" in found:
                raise BenchError(f"{case}: {found['error']}")
            timed[case].append(found)
    rows = [_row(r, timed[r.case_id]) for r in picked]
    _print_rows(rows)
    return rows


def _row(r: CaseRecord, found: list[dict]) -> dict:
    """A case's run median beside the median of its fresh processes that ran at the run's machine speed (all of
    them, flagged, when none did), and the range of those processes' medians: how far two plain programs timing the
    same call disagree on this machine, the floor under any run/fresh ratio."""
    usual = [f["median_s"] for f in found if f.get("at_usual_speed", True)]
    medians = usual or [f["median_s"] for f in found]
    fresh_s = statistics.median(medians)
    return {"case": r.case_id, "strategy": r.strategy, "run_s": r.time_median_s, "fresh_s": fresh_s,
            "ratio": r.time_median_s / fresh_s, "spread": max(medians) / min(medians),
            "inside": min(medians) <= r.time_median_s <= max(medians), "judged": bool(usual),
            "unstable": bool(r.unstable), "against_rest": against_the_rest(usual)}


def against_the_rest(medians: list[float]) -> list[float]:
    """Each fresh process's median over the median of the others ([] under three): a plain program held to the same
    yardstick as the run, the score the run cannot be expected to beat on this machine."""
    if len(medians) < 3:
        return []
    return [m / statistics.median(medians[:i] + medians[i + 1:]) for i, m in enumerate(medians)]


def _print_rows(rows: list[dict]) -> None:
    width = max(len(row["case"]) for row in rows)
    print(f"{'case':<{width}}  {'run':>10}  {'fresh':>10}  run/fresh  fresh max/min")
    for row in rows:
        mark = ("  not judged: the machine ran slower than in the run throughout" if not row["judged"]
                else "" if abs(row["ratio"] - 1) <= TARGET else "  outside ±10%" + (
                    " (inside the fresh processes' range)" if row["inside"] else "") + (
                    " (the run kept it as unstable: timed under disturbance)" if row["unstable"] else ""))
        print(f"{row['case']:<{width}}  {row['run_s'] * 1e3:7.3f} ms  {row['fresh_s'] * 1e3:7.3f} ms  "
              f"{row['ratio']:9.3f}  {row['spread']:13.3f}" + mark)
    judged = [row for row in rows if row["judged"]]
    means = strategy_means(judged, lambda row: row["ratio"])
    if means:
        print("per strategy, the geometric mean of run/fresh: " + ", ".join(f"{n} ×{m:.3f}" for n, m in means.items()))
    run_close, (plain_close, plain_strategies) = close_strategies(means), plain_close_strategies(judged)
    if plain_close:
        print(f"strategies within ×{1 - STRATEGY_TARGET:.2f}–{1 + STRATEGY_TARGET:.2f}: the run {run_close} of "
              f"{len(means)}; a plain program held to the same rule (one fresh process against the median of the "
              f"others, each in turn): {', '.join(map(str, plain_close))} of {plain_strategies}")
    deviations = [abs(row["ratio"] - 1) for row in judged]
    spreads = [row["spread"] for row in judged]
    steady = [abs(row["ratio"] - 1) for row in judged if not row["unstable"]]
    within = sum(d <= TARGET for d in deviations)
    plain = [ratio for row in judged for ratio in row["against_rest"]]
    plain_within = sum(abs(x - 1) <= TARGET for x in plain)
    if plain:
        print(f"a plain program held to the same yardstick (each fresh process against the median of the others): "
              f"{plain_within} of {len(plain)} within ±10% ({plain_within / len(plain):.0%}); the run: {within} of "
              f"{len(deviations)} ({within / len(deviations):.0%})")
    print(json.dumps({"cases": len(deviations), "within_10pct": within,
                      "steady_cases": len(steady), "steady_within_10pct": sum(d <= TARGET for d in steady),
                      "max_abs_deviation": round(max(deviations, default=0.0), 4),
                      "not_judged": len(rows) - len(deviations),
                      "inside_fresh_range": sum(row["inside"] for row in judged),
                      "fresh_within_10pct": sum(x <= 1 + TARGET for x in spreads),
                      "median_fresh_spread": round(statistics.median(spreads), 4) if spreads else None,
                      "plain_processes": len(plain), "plain_within_10pct": plain_within,
                      "strategies": len(means), "strategies_within_5pct": run_close,
                      "plain_strategies": plain_strategies, "plain_strategies_within_5pct": plain_close}))


def strategy_means(rows: list[dict], ratio: Callable[[dict], float]) -> dict[str, float]:
    """Per strategy, the geometric mean of `ratio` over its rows."""
    by_strategy: dict[str, list[float]] = {}
    for row in rows:
        by_strategy.setdefault(row["strategy"], []).append(ratio(row))
    return {name: math.exp(statistics.fmean(map(math.log, ratios))) for name, ratios in by_strategy.items()}


def close_strategies(means: dict[str, float]) -> int:
    return sum(abs(m - 1) <= STRATEGY_TARGET for m in means.values())


def plain_close_strategies(rows: list[dict]) -> tuple[list[int], int]:
    """The per-strategy rule applied to plain programs: fresh process k of each case as the run, the median of that
    case's other fresh processes as its yardstick; one count per k, and the number of strategies counted (those
    with a case of three fresh processes or more at the run's speed)."""
    rows = [row for row in rows if row["against_rest"]]
    processes = min((len(row["against_rest"]) for row in rows), default=0)
    counts = [close_strategies(strategy_means(rows, lambda row, k=k: row["against_rest"][k])) for k in range(processes)]
    return counts, len({row["strategy"] for row in rows})
