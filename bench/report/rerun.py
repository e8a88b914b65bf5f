"""Two runs of one machine and one grid (a rerun): how far their verdicts and numbers agree, before and after the
machine's own change of speed (bench/report/compare.py shows it)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.report.best import NONE_VALID
from bench.report.sides import SHAPE, Side
from bench.schema import fmt_ratio, sizes_id
from bench.stats import significant, significantly_different


def same_machine(a: Side, b: Side) -> bool:
    """Two runs of one machine and one grid: their verdicts should agree."""
    ea, eb = a.run.env, b.run.env
    keys = ("hostname", "cpu_model")
    return (a.run.path != b.run.path and all(ea.get(k) and ea.get(k) == eb.get(k) for k in keys)
            and (ea.get("devices") or {}).get(a.device) == (eb.get("devices") or {}).get(b.device)
            and (ea.get("grid") or {}).get("name") == (eb.get("grid") or {}).get("name"))


def reproducibility(a: Side, b: Side) -> list[tuple[str, str]]:
    """How far two runs of the same machine and grid agree: verdicts, contradictions, regret of one's pick."""
    shape = SHAPE
    both = a.best.merge(b.best, on=shape, suffixes=("_a", "_b"))
    both = both[(both["fastest_a"] != NONE_VALID) & (both["fastest_b"] != NONE_VALID)]
    if both.empty:
        return []
    held, decisive = 0, 0
    for x, y in (("a", "b"), ("b", "a")):
        for _, r in both[both[f"verdict_{x}"] == "winner"].iterrows():
            decisive += 1
            held += r[f"fastest_{x}"] in (r[f"fastest_{y}"], *r[f"tied_with_{y}"])
    contradictions = [f"{sizes_id(r)}: {r['fastest_a']} vs {r['fastest_b']}" for _, r in both.iterrows()
                      if r["verdict_a"] == r["verdict_b"] == "winner" and r["fastest_a"] != r["fastest_b"]]
    times_b = b.frame[b.frame["valid"]].set_index([*shape, "strategy"])["time_median_s"]
    regret = np.array([times_b.get((*(r[c] for c in shape), r["fastest_a"]), math.inf) / r["best_s_b"]
                       for _, r in both.iterrows()])
    median, p90 = (float(np.quantile(regret, q, method="inverted_cdf")) for q in (0.5, 0.9))
    return [
        ("verdicts that hold", f"{held} of {decisive} winner verdicts ({held / max(decisive, 1):.0%}) hold in the "
                               "other run (the same winner, or the winner among its tied strategies)"),
        ("contradictions", f"{len(contradictions)} shapes where the runs name different winners"
                           + (": " + "; ".join(contradictions) if contradictions else "")),
        (f"regret of {a.label}'s pick in {b.label}", f"median {fmt_ratio(median)}, 90th percentile {fmt_ratio(p90)} "
                                                      f"over {len(regret)} shapes (time in {b.label} of {a.label}'s "
                                                      f"fastest / {b.label}'s fastest)"),
        ("ties", f"{a.label}: {int((both['verdict_a'] == 'tie').sum())} of {len(both)} shapes, "
                 f"{b.label}: {int((both['verdict_b'] == 'tie').sum())}"),
    ]


def rerun_agreement(a: Side, b: Side, both: pd.DataFrame) -> list[tuple[str, str]]:
    """How far the case medians of two runs of one machine agree, before and after the machine's own change of speed
    (the median shift of all cases; the calibration call says the same from outside the strategies), how far the
    ratios the report shows ("× forward", "× best") move, and how often each run's interval holds the other run's
    median (the intervals claim 95%). A spread is exp(root mean square of the log ratios): ×1.10 means a case's
    number typically moves by 10% from one run to the other."""
    ok = both[both["speedup"].notna()].copy()
    if ok.empty:
        return []
    ok["log_ratio"] = np.log(ok["time_median_s_b"] / ok["time_median_s_a"])
    shift = float(ok["log_ratio"].median())
    by_shape = ok.groupby(SHAPE)["log_ratio"].transform("median")
    within = (np.abs(ok["log_ratio"] - shift) <= math.log(1.1)).mean()
    items = [("the machine itself", _machine_change(a, b, shift)),
             ("medians from run to run", f"spread {_spread(ok['log_ratio'])} raw, {_spread(ok['log_ratio'] - shift)} "
                                         f"after the machine's change, {_spread(ok['log_ratio'] - by_shape)} after "
                                         f"each shape's; {within:.0%} of the {len(ok)} cases within ×1.1 after the "
                                         "machine's change")]
    forward = ok.dropna(subset=["forward_median_s_a", "forward_median_s_b"])
    if len(forward):
        per_forward = np.log(forward["forward_median_s_a"] / forward["forward_median_s_b"]) + forward["log_ratio"]
        items.append(("× forward from run to run", f"spread {_spread(per_forward)} over {len(forward)} cases"))
    best_a = ok.groupby(SHAPE)["time_median_s_a"].transform("min")
    best_b = ok.groupby(SHAPE)["time_median_s_b"].transform("min")
    items.append(("× best from run to run", f"spread {_spread(ok['log_ratio'] - np.log(best_b / best_a))} over "
                                            f"{len(ok)} cases (a case's time over its shape's fastest)"))
    items.append(("intervals that hold the other run's median", f"{_coverage(ok, 1.0)} (they claim 95%); after the "
                                                                f"machine's change, {_coverage(ok, math.exp(shift))}"))
    adjusted = [significant(significantly_different(r["time_median_s_a"], r["log_time_sd_a"],
                                                    r["time_median_s_b"] / math.exp(shift), r["log_time_sd_b"]))
                for _, r in ok.iterrows() if pd.notna(r["log_time_sd_a"]) and pd.notna(r["log_time_sd_b"])]
    if adjusted:
        items.append(("significant after the machine's change", f"{sum(adjusted)} of {len(adjusted)} cases differ "
                                                                "beyond what both runs' intervals allow, once the "
                                                                "machine's change is taken out"))
    return items


def _coverage(ok: pd.DataFrame, machine: float) -> str:
    """How often each run's interval holds the other run's median, that median divided by the machine's change
    (`machine`: the median of b's times over a's, 1.0 for none)."""
    holds_b = (ok["time_median_s_b"] / machine).between(ok["time_ci_low_s_a"], ok["time_ci_high_s_a"])
    holds_a = (ok["time_median_s_a"] * machine).between(ok["time_ci_low_s_b"], ok["time_ci_high_s_b"])
    return f"{holds_b.mean():.0%} of the first run's, {holds_a.mean():.0%} of the second's"


def _spread(log_ratios: pd.Series) -> str:
    return f"×{math.exp(math.sqrt(float(np.mean(np.square(log_ratios))))):.3f}"


def _machine_change(a: Side, b: Side, shift: float) -> str:
    text = f"cases moved {fmt_ratio(math.exp(shift))} from {a.label} to {b.label} (median of all cases)"
    speed = [(s.run.env.get("machine_speed") or {}).get("calibration_s") for s in (a, b)]
    if all(speed):
        text += f"; the calibration call {fmt_ratio(speed[1] / speed[0])} (a fixed workload timed between blocks)"
    return text
