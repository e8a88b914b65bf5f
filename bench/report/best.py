"""Each measured shape's best strategy and its verdict, from a run's frame (bench/report/frames.py) and its verdict
records: the table every reader of a run's answer uses (answer, findings, plots, recommend, compare's sides).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.schema import SHAPE_COLUMNS
from bench.stats import as_interval, is_contender, ratio_of_medians, verdict_of

BEST_COLUMNS = [*SHAPE_COLUMNS, "fastest", "verdict", "tied_with", "best_s", "best_ci_low_s", "best_ci_high_s",
                "runner_up", "runner_up_s", "runner_up_ratio", "runner_up_ratio_low", "runner_up_ratio_high",
                "jf_best", "analytic_s", "vs_analytic", "forward_s", "n_valid", "unstable", "playoff_rounds",
                "best_eager", "best_eager_s"]
NONE_VALID = ""  # `fastest` of a shape where no autodiff strategy gave a valid result


def best_per_shape(frame: pd.DataFrame, playoffs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per measured shape: the fastest valid autodiff strategy (`fastest`), and whether it wins or ties.

    The verdict, its contenders and `tied_with` (a list) come from the shape's playoff record (bench/verdicts.py).
    A shape without one (a run older than playoffs, or a shape finished before a kill) is decided from its first
    timings by the same rule (stats.verdict_of). A closed form (analytic, hessian_analytic, laplacian_analytic) is
    not a contender: `analytic_s` is the fastest closed form of the shape and `vs_analytic` says how far the fastest
    autodiff strategy is from it. A stochastic estimator is not valid (frames.to_frame): never the fastest.
    """
    by_shape = {} if playoffs is None else {tuple(r[c] for c in SHAPE_COLUMNS): r for _, r in playoffs.iterrows()}
    rows = []
    for shape, part in frame.groupby(SHAPE_COLUMNS, sort=False):
        valid = part[part["valid"]].sort_values("time_median_s")
        auto, analytic = valid[valid["eligible"]], valid[valid["closed_form"]]["time_median_s"]  # fastest first
        row = dict(zip(SHAPE_COLUMNS, shape, strict=True)) | dict.fromkeys(BEST_COLUMNS[len(SHAPE_COLUMNS):], math.nan)
        row.update(fastest=NONE_VALID, verdict="", tied_with=[], runner_up="", best_eager="",
                   forward_s=part["forward_median_s"].median(),
                   n_valid=len(auto), unstable=bool(auto["unstable"].any()), playoff_rounds=0,
                   analytic_s=analytic.iloc[0] if len(analytic) else math.nan)
        if len(auto):
            row.update(_verdict(auto, by_shape.get(shape)))
            by = auto.set_index("strategy")
            best = by.loc[row["fastest"]]
            row.update(best_s=best["time_median_s"], best_ci_low_s=best["time_ci_low_s"],
                       best_ci_high_s=best["time_ci_high_s"], jf_best=best["jf_ratio"],
                       vs_analytic=best["time_median_s"] / row["analytic_s"])
            if row["runner_up"] in by.index:  # a verdict's runner-up may have no valid time left (a rerun's record)
                row["runner_up_s"] = by.loc[row["runner_up"], "time_median_s"]
            eager = auto[~auto["compiled"]]  # for whoever cannot or will not compile: first timings
            if len(eager):
                row.update(best_eager=eager["strategy"].iloc[0], best_eager_s=eager["time_median_s"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows, columns=BEST_COLUMNS)


def playoffs_among(playoffs: pd.DataFrame | None, names: set[str]) -> pd.DataFrame | None:
    """The playoffs as if only `names` had raced (the eager strategies, say): a shape whose best is not among them is
    left out (best_per_shape then decides it on first timings); the others keep their best, and the tie rule is
    applied again to the paired ratios of the contenders left."""
    if playoffs is None or playoffs.empty:
        return playoffs
    rows = []
    for _, p in playoffs.iterrows():
        if p["best"] not in names:
            continue
        ratios = p["ratios"] if isinstance(p["ratios"], dict) else {}
        if ratios or p["verdict"] != "tie":
            verdict = verdict_of(p["best"], {n: r for n, r in ratios.items() if n in names})
            tied, runner_up = verdict.tied_with, verdict.runner_up
            ratio = list(verdict.ratios[runner_up]) if runner_up else None
        else:  # a record without its ratios: the ties that are left
            tied = [n for n in p["tied_with"] if n in names]
            runner_up, ratio = (tied[0], p["runner_up_ratio"]) if tied else (None, None)
        rows.append({**p.to_dict(), "verdict": "tie" if tied else "winner", "tied_with": tied, "runner_up": runner_up,
                     "runner_up_ratio": ratio, "contenders": [c for c in p["contenders"] if c in names]})
    return pd.DataFrame(rows, columns=playoffs.columns)


def _verdict(auto: pd.DataFrame, playoff: pd.Series | None) -> dict[str, Any]:
    """fastest, verdict, tied_with, runner-up and its ratio: from the playoff record, else from the first timings."""
    if playoff is not None and playoff["best"] in set(auto["strategy"]):
        ratio = as_interval(playoff["runner_up_ratio"])  # null or missing numbers read as NaN: shown as —
        runner_up = playoff["runner_up"] if isinstance(playoff["runner_up"], str) else ""
        following = [s for s in auto["strategy"] if s != playoff["best"]]
        if not runner_up and following and math.isfinite(ratio[0]):
            # a sole contender: its lead over the next strategy, two medians timed apart (a point, no interval)
            runner_up, ratio = following[0], (ratio[0], math.nan, math.nan)
        return {"fastest": playoff["best"], "verdict": playoff["verdict"], "tied_with": list(playoff["tied_with"]),
                "runner_up": runner_up, "runner_up_ratio": ratio[0], "runner_up_ratio_low": ratio[1],
                "runner_up_ratio_high": ratio[2], "playoff_rounds": int(playoff["rounds"] or 0),
                "unstable": bool(playoff["unstable"] or auto["unstable"].any())}
    best = auto.iloc[0]
    verdict = verdict_of(best["strategy"], {r["strategy"]: _first_timing_ratio(r, best)
                                            for _, r in auto.iloc[1:].iterrows()})
    ratio = verdict.ratios.get(verdict.runner_up, (math.nan,) * 3)
    return {"fastest": verdict.best, "verdict": verdict.verdict, "tied_with": verdict.tied_with,
            "runner_up": verdict.runner_up or "", "runner_up_ratio": ratio[0], "runner_up_ratio_low": ratio[1],
            "runner_up_ratio_high": ratio[2]}


def _first_timing_ratio(row: pd.Series, best: pd.Series) -> tuple[float, float, float]:
    """row / best from the first timings: the bootstrap interval of the ratio of medians; without round times (a
    run older than round times), the point ratio, taken as a tie while the strategy is still a contender."""
    if len(row["round_times_s"]) and len(best["round_times_s"]):
        return ratio_of_medians(row["round_times_s"], best["round_times_s"])
    ratio = row["time_median_s"] / best["time_median_s"]
    return ratio, 1.0 if is_contender(row["time_median_s"], best["time_median_s"]) else ratio, ratio
