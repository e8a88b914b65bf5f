"""The "what this means" bullets of a report: which strategy to use, what it costs, what not to miss.

Each function reads one setting's frame (bench/report/frames.py) and its per-shape verdicts (best.best_per_shape) and
returns (label, text) pairs; nothing here draws or writes.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from bench.report.best import NONE_VALID
from bench.report.recommend import leave_one_out
from bench.report.tables import break_even
from bench.schema import AXES, FAILED, fmt_margin, fmt_ratio, fmt_time
from bench.stats import TIE_MARGIN

Items = list[tuple[str, str]]


def regimes(best: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Slices of the measured shapes a user thinks in: batch small or large, in smaller or larger than out."""
    out = [("all shapes", best)]
    batches = sorted(best["batch"].unique())
    if len(batches) >= 2:  # the lower and upper third of the measured batch sizes
        k = -(-len(batches) // 3)
        small, large = batches[k - 1], batches[-k]
        out += [(f"small batch (B ≤ {small})", best[best["batch"] <= small]),
                (f"large batch (B ≥ {large})", best[best["batch"] >= large])]
    out += [("in < out", best[best["in_dim"] < best["out_dim"]]), ("in = out", best[best["in_dim"] == best["out_dim"]]),
            ("in > out", best[best["in_dim"] > best["out_dim"]])]
    return [(label, rows) for label, rows in out if len(rows)]


def summary_items(part: pd.DataFrame, best: pd.DataFrame) -> Items:
    """The "what this means" bullets for one (model, device, dtype, mode) setting: the autodiff choice first."""
    return headline(part, best) + winner_items(best) + cost_items(part, best) + caveat_items(part)


def headline(part: pd.DataFrame, best: pd.DataFrame) -> Items:
    """The autodiff strategy to use and what one Jacobian costs in forward passes; the closed form, when the model
    has one, comes after it (it exists for plain MLPs only)."""
    measured = best[best["fastest"] != NONE_VALID]
    if measured.empty:
        return [("best autodiff", "no autodiff strategy gave a valid result here")]
    counts = measured["fastest"].value_counts()
    lead = counts.index[0]
    jf = measured.loc[measured["fastest"] == lead, "jf_best"].dropna()
    text = f"{lead}: fastest on {counts.iloc[0]} of {len(best)} shapes"
    text += f", at a median {fmt_ratio(jf.median())} the time of one forward pass" if len(jf) else ""
    has_closed_form = (part.loc[part["closed_form"], "status"] == "ok").any()
    text += "" if has_closed_form else "; this model has no closed form to compare with"
    return [("best autodiff", text)]


def winner_items(best: pd.DataFrame) -> Items:
    """Which autodiff strategy wins, overall and in each regime a user thinks in; ties counted as ties."""
    items = []
    for label, rows in regimes(best):
        measured = rows[rows["fastest"] != NONE_VALID]
        if measured.empty:
            items.append((label, f"no valid autodiff strategy on any of {len(rows)} shapes"))
            continue
        wins = measured[measured["verdict"] == "winner"]["fastest"].value_counts()
        ties = measured[measured["verdict"] == "tie"]
        tied = Counter(name for _, r in ties.iterrows() for name in [r["fastest"], *r["tied_with"]])
        lead = wins.index[0] if len(wins) else tied.most_common(1)[0][0]
        if wins.get(lead, 0):
            text = f"{lead} wins {wins[lead]} of {plural(len(rows), 'shape', 'shapes')}"
            text += f" and ties for best on {tied[lead]} more" if tied[lead] else ""
        else:
            text = f"{lead} ties for best on {tied[lead]} of {plural(len(rows), 'shape', 'shapes')}"
        others = [f"{name} wins {n}" for name, n in wins.items() if name != lead]
        text += f"; {', '.join(others)}" if others else ""
        text += f"; {plural(len(ties), 'shape is a tie', 'shapes are ties')} (no strategy surely more than " \
                f"{fmt_margin(TIE_MARGIN)} faster)" if len(ties) else ""
        items.append((f"fastest autodiff, {label}", text))
    return items


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


ONE_CALL = {("jacobian", "jacobian"): "one Jacobian", ("jacobian", "train"): "one training step through J",
            ("hessian", "jacobian"): "one Hessian", ("hessian", "train"): "one PINN step through the Hessian's trace",
            ("laplacian", "jacobian"): "one Laplacian", ("laplacian", "train"): "one PINN step through the Laplacian"}


def one_call(part: pd.DataFrame) -> str:
    """What one timed call is in this setting's mode and quantity."""
    mode = "train" if (part["mode"] == "train").any() else "jacobian"
    quantity = str(part["quantity"].iloc[0]) if len(part) else "jacobian"
    return ONE_CALL.get((quantity, mode), ONE_CALL[("jacobian", mode)])


def cost_items(part: pd.DataFrame, best: pd.DataFrame) -> Items:
    """What the best Jacobian costs: in forward passes, and against the closed form."""
    items = []
    jf = best["jf_best"].dropna()
    if len(jf):
        items.append(("J/F of the best", f"{one_call(part)} costs a median {fmt_ratio(jf.median())} forward passes "
                                         f"(range {fmt_ratio(jf.min())} – {fmt_ratio(jf.max())})"))
    vs = best["vs_analytic"].dropna()
    if len(vs):
        items.append(("best autodiff vs analytic", f"the fastest autodiff strategy takes a median "
                      f"{fmt_ratio(vs.median())} the closed-form (analytic) time; worst {fmt_ratio(vs.max())} "
                      f"({len(vs)} shapes)"))
    elif part["closed_form"].any():
        items.append(("best autodiff vs analytic", "analytic has no valid measurement here (e.g. unsupported model)"))
    items += compile_items(part)
    loo = leave_one_out(part)
    if loo["n"]:
        text = (f"median regret {fmt_ratio(loo['median'])}, 90th percentile {fmt_ratio(loo['p90'])} over {loo['n']} "
                f"shapes (time of the pick / measured best; it picked the best on {loo['best_picks']})")
        items.append(("recommend, leave-one-out", text + (f"; {loo['failed']} picks failed" if loo["failed"] else "")))
    return items


def compile_items(part: pd.DataFrame) -> Items:
    """Eager against compiled: how close each gets to the closed form, what compiling costs, when it pays."""
    valid = part[part["eligible"]]
    if not valid["compiled"].any():
        return []
    per_shape = valid.groupby([*AXES, "compiled"])["time_median_s"].min().unstack("compiled")
    closed = part[part["valid"] & part["closed_form"]].groupby(AXES)["time_median_s"].min()
    items = []
    for compiled, label in ((False, "eager"), (True, "compiled")):
        ratio = (per_shape.get(compiled) / closed).dropna() if compiled in per_shape else pd.Series(dtype=float)
        if len(ratio):
            items.append((f"best {label} autodiff vs analytic", f"a median {fmt_ratio(ratio.median())} the "
                                                               f"closed-form time ({len(ratio)} shapes)"))
    pays = break_even(part)
    if len(pays):
        finite = pays["break_even_calls"].replace(float("inf"), pd.NA).dropna()
        text = f"compiling takes a median {pays['setup_s'].median():.1f} s per shape"
        text += (f"; it pays after a median {finite.median():.0f} calls (setup / time saved per call)" if len(finite)
                 else "; it never paid here: no compiled variant beat its eager form")
        never = int((pays["break_even_calls"] == float("inf")).sum())
        items.append(("compiling", text + (f"; on {never} of {len(pays)} cases the compiled variant was not faster"
                                           if never and len(finite) else "")))
    return items


def caveat_items(part: pd.DataFrame) -> Items:
    """What a reader must not miss: odd timings, sums that are not J, silently wrong strategies, failures."""
    items = []
    odd = part[part["valid"] & part["jf_ratio"].lt(0.9)]
    if len(odd):  # a Jacobian call includes a forward pass: J/F < 1 means one of the two timings is off
        items.append(("check the timings", f"{len(odd)} cases time {one_call(part)} below one forward pass (J/F < 1), "
                                           "impossible since the call includes the forward: the machine was busy or "
                                           "the forward timing is noisy; rerun those shapes"))
    for strategy, rows in part[~part["is_jacobian"]].groupby("strategy"):
        items.append(("not the Jacobian", f"{strategy} returns the sum over outputs at out > 1 ({len(rows)} cases): "
                                          "shown for reference, never a winner"))
    items += estimate_items(part)
    wrong = part[part["status"] == "wrong"]["strategy"].value_counts()
    if len(wrong):
        where = " (the model couples samples)" if part["coupled"].any() else ""
        items.append(("silently wrong" + where, ", ".join(f"{s} ({n})" for s, n in wrong.items())))
    unstable = part[part["unstable"] & (part["status"] == "ok")]
    if len(unstable):
        items.append(("timed under disturbance", f"{len(unstable)} of {int((part['status'] == 'ok').sum())} ok cases "
                      "were timed while other processes loaded the CPUs or the machine ran slow, and stayed so after "
                      "waiting and, where the run has one, in a second process: marked unstable; their numbers are "
                      "less certain"))
    slow = part[part["warnings"].map(len) > 0]
    for strategy, rows in slow.groupby("strategy"):
        items.append((f"warned: {strategy}", f"{len(rows)} cases; {rows['warnings'].iloc[0][0]}"))
    unsupported = part[part["status"] == "unsupported"].drop_duplicates("strategy")
    for message, rows in unsupported.groupby("message", sort=False):
        items.append(("unsupported", f"{', '.join(rows['strategy'])}: {message[:160]}"))
    failed = part[part["status"].isin(FAILED)]
    if len(failed):
        by = failed.groupby(["status", "strategy"]).size()
        text = "; ".join(f"{st}: " + ", ".join(f"{s} ({n})" for (_, s), n in by[by.index.get_level_values(0) == st]
                                                 .items()) for st in by.index.get_level_values(0).unique())
        items.append(("failed or skipped", text))
    return items




def estimate_items(part: pd.DataFrame) -> Items:
    """A stochastic estimator: what it costs against the fastest exact strategy of the same shapes, and its error."""
    items = []
    exact = part[part["eligible"]].groupby(AXES)["time_median_s"].min()
    for strategy, rows in part[part["estimator"] & (part["status"] == "ok")].groupby("strategy"):
        at = rows.set_index(AXES)["time_median_s"]
        ratio = (at / exact).dropna()
        text = f"a stochastic estimate, never a winner ({len(rows)} cases, median {fmt_time(at.median())}"
        text += f", {fmt_ratio(ratio.median())} the fastest exact strategy's time" if len(ratio) else ""
        text += f"); largest error {rows['max_abs_error'].max():.3g}" if rows["max_abs_error"].notna().any() else ")"
        items.append((f"estimate: {strategy}", text))
    return items
