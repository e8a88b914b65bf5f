"""Tables built from a run's frame (bench/report/frames.py): display strings for reports, numbers for CSV.

Tables never show a number for a row whose status is not "ok": the status word takes its place (Markdown/HTML) or
the cell stays empty next to the status column (CSV).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from bench.report.best import NONE_VALID
from bench.report.frames import strategy_order, sweep_line
from bench.schema import (
    AXES,
    FIXED_HIDDEN,
    SETTING,
    SHAPE_COLUMNS,
    STATUSES,
    eager_twin,
    fmt_bytes,
    fmt_ratio,
    fmt_time,
    sizes_id,
    status_kind,
)
from bench.stats import ratio_of_medians

Formatter = Callable[[float], str]


def cell(row: pd.Series, column: str, fmt: Formatter) -> str:
    """A number for an ok row, the status word for any other: failed cases never read as a speed."""
    if row["status"] != "ok":
        return row["status"] or "?"
    value = row[column]
    return fmt(value) if value is not None and not pd.isna(value) else "—"


def shown(columns: list[str], rows: pd.DataFrame) -> list[str]:
    """The columns a display table shows: hidden left out where every row is a model of fixed sizes (hidden is not
    one of its axes; the CSV of numbers keeps the 0 it records)."""
    fixed = "hidden" in rows and len(rows) > 0 and rows["hidden"].eq(FIXED_HIDDEN).all()
    return [c for c in columns if not (fixed and c == "hidden")]


def cases_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every case, display strings: the long table behind all others."""
    out = frame[shown(["device", "model", "dtype", "mode", "quantity", *AXES, "strategy", "status"], frame)].copy()
    rows = [r for _, r in frame.iterrows()]
    out["time"] = [cell(r, "time_median_s", fmt_time) + (" (unstable)" if r["unstable"] else "") for r in rows]
    out["95% CI"] = [f"{fmt_time(r['time_ci_low_s'])}–{fmt_time(r['time_ci_high_s'])}"
                     if r["status"] == "ok" and pd.notna(r["time_ci_low_s"]) else cell(r, "time_ci_low_s", fmt_time)
                     for r in rows]
    out["IQR"] = [cell(r, "time_iqr_s", fmt_time) for r in rows]
    out["J/F"] = [cell(r, "jf_ratio", fmt_ratio) for r in rows]
    out["× best"] = [("estimate" if r["estimator"] else cell(r, "vs_best", fmt_ratio)) if r["is_jacobian"] else "not J"
                     for r in rows]
    out["peak memory"] = [cell(r, "peak_memory_bytes", fmt_bytes) for r in rows]
    out["note"] = [_note(r) for r in rows]
    return out.reset_index(drop=True)


def cases_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Every case, machine-readable (seconds, bytes): numbers only where status is ok, empty cells otherwise."""
    cols = [*SETTING, *AXES, "strategy", "status", "time_median_s", "time_ci_low_s", "time_ci_high_s", "time_iqr_s",
            "forward_median_s", "jf_ratio", "vs_best", "peak_memory_bytes", "is_jacobian", "valid", "unstable", "note"]
    out = frame[cols].copy()
    out.loc[out["status"] != "ok", ["jf_ratio", "vs_best"]] = math.nan
    out["note"] = [_note(r) for _, r in frame.iterrows()]
    return out.reset_index(drop=True)


def _note(row: pd.Series) -> str:
    if row["status"] == "wrong" and pd.notna(row["max_abs_error"]):
        tol = f" > tolerance {row['tolerance']:.1e}" if pd.notna(row["tolerance"]) else ""
        detail = f"max |error| {row['max_abs_error']:.2e}{tol}"
        return f"{row['note']}; {detail}" if row["note"] and row["note"] != detail else detail
    return " ".join(str(row["note"]).split())[:160]


def pivot(part: pd.DataFrame, axis: str, column: str, fmt: Formatter) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`axis` × strategy display table for one sweep line, and a same-shaped mask of the fastest valid cells."""
    line = sweep_line(part, axis)
    strategies = strategy_order(line)
    values, best = {}, {}
    for x, rows in line.groupby(axis):
        by = rows.set_index("strategy")
        values[x] = {s: (cell(by.loc[s], column, fmt) + ("" if by.loc[s, "is_jacobian"] else " (not J)"))
                     if s in by.index else "" for s in strategies}
        fastest = by["time_median_s"].where(by["valid"]).idxmin() if by["valid"].any() else None
        best[x] = {s: s == fastest for s in strategies}
    table = pd.DataFrame.from_dict(values, orient="index", columns=strategies)
    mask = pd.DataFrame.from_dict(best, orient="index", columns=strategies).astype(bool)
    table.index.name = mask.index.name = axis
    return table, mask


def best_table(best: pd.DataFrame) -> pd.DataFrame:
    """best_per_shape as display strings (the quantity shown only where the rows hold several: a report's section
    per quantity names it)."""
    shape = SHAPE_COLUMNS if best["quantity"].nunique() > 1 else [c for c in SHAPE_COLUMNS if c != "quantity"]
    out = best[shown(shape, best)].copy()
    out["fastest autodiff"] = best["fastest"]
    out["verdict"] = [verdict_text(r) for _, r in best.iterrows()]
    out["time [95% CI]"] = [f"{fmt_time(r.best_s)} [{fmt_time(r.best_ci_low_s)}–{fmt_time(r.best_ci_high_s)}]"
                            if pd.notna(r.best_ci_low_s) else fmt_time(r.best_s) for r in best.itertuples()]
    out["runner-up"] = best["runner_up"]
    out["runner-up / fastest"] = [fmt_interval(r.runner_up_ratio, r.runner_up_ratio_low, r.runner_up_ratio_high,
                                               r.playoff_rounds > 0) for r in best.itertuples()]
    out["J/F"] = best["jf_best"].map(fmt_ratio)
    out["fastest eager"] = [f"{r.best_eager} ({fmt_time(r.best_eager_s)})" if r.best_eager and r.best_eager != r.fastest
                            else "same" if r.best_eager else "—" for r in best.itertuples()]
    out["closed form"] = best["analytic_s"].map(fmt_time)
    out["fastest / closed form"] = best["vs_analytic"].map(fmt_ratio)
    return out


def verdict_text(row: pd.Series) -> str:
    """winner | tie with a, b | no valid strategy; "(unstable)" when a timing behind it was disturbed."""
    if row["fastest"] == NONE_VALID:
        return "no valid strategy"
    text = f"tie with {', '.join(row['tied_with'])}" if row["verdict"] == "tie" else row["verdict"]
    return text + (" (unstable)" if row["unstable"] else "")


def fmt_interval(ratio: float, low: float, high: float, interval: bool = True) -> str:
    """×1.21 [1.10–1.35]: a ratio with its 95% interval (the point alone when no interval was measured; "?" for an
    end the run could not bound, — for an unknown ratio)."""
    if not interval or (pd.isna(low) and pd.isna(high)):
        return fmt_ratio(ratio)
    ends = [f"{v:.2f}" if pd.notna(v) and math.isfinite(v) else "?" for v in (low, high)]
    return f"{fmt_ratio(ratio)} [{ends[0]}–{ends[1]}]"


def break_even(part: pd.DataFrame) -> pd.DataFrame:
    """Per compiled case with a valid eager twin: setup_s, both times, and the calls after which compiling pays,
    setup_s / (eager time - compiled time) (infinite when the compiled variant is not faster)."""
    rows = []
    times = part[part["valid"]].set_index(["strategy", *AXES])["time_median_s"]
    for _, r in part[part["valid"] & part["compiled"] & part["setup_s"].notna()].iterrows():
        eager = times.get((eager_twin(r["strategy"]), *(r[a] for a in AXES)))
        if eager is None:
            continue
        saved = eager - r["time_median_s"]
        rows.append({"strategy": r["strategy"], **{a: r[a] for a in AXES}, "setup_s": r["setup_s"],
                     "eager_s": eager, "compiled_s": r["time_median_s"],
                     "break_even_calls": r["setup_s"] / saved if saved > 0 else float("inf")})
    return pd.DataFrame(rows, columns=["strategy", *AXES, "setup_s", "eager_s", "compiled_s", "break_even_calls"])


def compile_table(frame: pd.DataFrame) -> pd.DataFrame:
    """break_even of every setting, as display strings."""
    rows = []
    for _, part in frame.groupby(SETTING, sort=False):
        pays = break_even(part)
        for _, r in pays.iterrows():
            setting = part.iloc[0]
            rows.append({**{c: setting[c] for c in SETTING if c != "mode"}, **{a: r[a] for a in AXES},
                         "compiled": r["strategy"], "setup (compiling)": f"{r['setup_s']:.1f} s",
                         "eager": fmt_time(r["eager_s"]), "compiled time": fmt_time(r["compiled_s"]),
                         "speedup": fmt_ratio(r["eager_s"] / r["compiled_s"]),
                         "pays after": "never" if r["break_even_calls"] == math.inf
                         else f"{math.ceil(r['break_even_calls']):,} calls"})
    table = pd.DataFrame(rows)
    return table[shown(list(table.columns), table)] if len(table) else table


TRAIN_HEADERS = {  # (alone, training step, their ratio) per quantity
    "jacobian": ("fastest for J", "fastest to train through J", "train step / J (each its fastest)"),
    "hessian": ("fastest for H", "fastest PINN step", "PINN step / H (each its fastest)"),
    "laplacian": ("fastest for the Laplacian", "fastest PINN step", "PINN step / Laplacian (each its fastest)"),
}


def training_table(best: pd.DataFrame, quantity: str = "jacobian") -> pd.DataFrame:
    """Per shape of one quantity measured in both modes: the fastest strategy for the quantity alone and to train
    through it (the Jacobian penalty, or for second order the PINN step), and what the training step costs over the
    quantity alone, each with its fastest strategy."""
    best = best[best["quantity"] == quantity]
    shape = [c for c in SHAPE_COLUMNS if c not in ("mode", "quantity")]
    jac, train = best[best["mode"] == "jacobian"], best[best["mode"] == "train"]
    both = jac.merge(train, on=shape, suffixes=("_j", "_t"))
    if both.empty:
        return pd.DataFrame()
    alone, step, ratio = TRAIN_HEADERS.get(quantity, TRAIN_HEADERS["jacobian"])
    out = both[shown(shape, both)].copy()
    out[alone] = [verdict_cell(r, "_j") for _, r in both.iterrows()]
    out[step] = [verdict_cell(r, "_t") for _, r in both.iterrows()]
    out[ratio] = (both["best_s_t"] / both["best_s_j"]).map(fmt_ratio)
    out["same choice"] = ["yes" if r["fastest_j"] == r["fastest_t"] else "no" for _, r in both.iterrows()]
    return out


def verdict_cell(row: pd.Series, suffix: str = "") -> str:
    """grad_batched, or "tie: a, b" (with "(unstable)" when a timing behind it was disturbed)."""
    fastest, verdict = row[f"fastest{suffix}"], row[f"verdict{suffix}"]
    if fastest == NONE_VALID:
        return "none valid"
    text = f"tie: {', '.join([fastest, *row[f'tied_with{suffix}']])}" if verdict == "tie" else fastest
    return text + (" (unstable)" if row[f"unstable{suffix}"] else "")


def published_table(frame: pd.DataFrame, env: dict[str, Any]) -> pd.DataFrame:
    """The grid's published ratios (env.json's grid.published) beside this run's, measured at the same shape:
    time(slower) / time(faster), with the 95% interval of the ratio of medians."""
    published = (env.get("grid") or {}).get("published") or []
    rows = []
    for entry in published:
        at = frame[(frame["model"] == entry["model"]) & (frame["dtype"] == entry["dtype"])
                   & (frame["mode"] == "jacobian")]
        at = at[(at[AXES] == [entry[a] for a in AXES]).all(axis=1)]
        for device, part in at.groupby("device"):
            by = part[part["status"] == "ok"].set_index("strategy")
            ours = "not measured ok"
            if entry["slower"] in by.index and entry["faster"] in by.index:
                rounds = by["round_times_s"]
                ours = fmt_interval(*ratio_of_medians(rounds[entry["slower"]], rounds[entry["faster"]]))
            rows.append({"source": entry["source"], "shape": sizes_id(entry), "device": device,
                         "ratio": f"{entry['slower']} / {entry['faster']}", "published": fmt_ratio(entry["ratio"]),
                         "this run [95% CI]": ours, "this run's threads": env.get("threads", "?"),
                         "published conditions": entry["conditions"]})
    return pd.DataFrame(rows)


def status_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Cases per strategy and status, per device: where the failures are."""
    counts = frame.groupby(["device", "strategy", "status"]).size().unstack("status", fill_value=0)
    counts = counts.reindex(columns=[s for s in STATUSES if s in counts.columns]
                            + [c for c in counts.columns if c not in STATUSES])
    out = counts.reset_index()
    not_j = frame[~frame["is_jacobian"]].groupby(["device", "strategy"]).size()
    out["not J (sum over outputs)"] = [int(not_j.get((d, s), 0)) for d, s in zip(out["device"], out["strategy"],
                                                                                   strict=True)]
    unstable = frame[frame["unstable"] & (frame["status"] == "ok")].groupby(["device", "strategy"]).size()
    out["ok but unstable"] = [int(unstable.get((d, s), 0)) for d, s in zip(out["device"], out["strategy"],
                                                                          strict=True)]
    rank = frame.drop_duplicates("strategy").set_index("strategy")["rank"]
    return out.assign(_r=out["strategy"].map(rank)).sort_values(["device", "_r"]).drop(columns="_r")


def coupled_table(frame: pd.DataFrame) -> pd.DataFrame:
    """For models that couple samples: per strategy, how many cases were ok / silently wrong / failed."""
    part = frame[frame["model"].isin(frame.loc[frame["coupled"], "model"].unique())]
    if part.empty:
        return pd.DataFrame()
    kinds = part.assign(kind=part["status"].map(status_kind))
    counts = kinds.groupby(["model", "device", "strategy", "kind"]).size().unstack("kind", 0)
    return counts.reindex(columns=["ok", "wrong", "failed", "unsupported"], fill_value=0).reset_index()


def strategies_table(frame: pd.DataFrame) -> pd.DataFrame:
    """What each strategy of the run does, as its records describe it."""
    rows = []
    for name in strategy_order(frame):
        first = frame[frame["strategy"] == name].iloc[0]
        rows.append({"strategy": name, "returns": first["returns"] or "—", "what it does": first["summary"] or "—",
                     "cost": first["cost"] or "—"})
    return pd.DataFrame(rows)


ENV_FIELDS = [
    ("run id", "run_id"), ("created", "created"), ("torch", "torch"), ("CUDA", "cuda"), ("cuDNN", "cudnn"),
    ("python", "python"), ("platform", "platform"), ("host", "hostname"), ("CPU", "cpu_model"),
    ("threads", "threads"), ("TF32", "tf32"), ("inductor cache", "inductor_cache"), ("calibration", "calibration"),
    ("seed", "seed"),
    ("git commit", "git_commit"),
]


def env_rows(env: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) for the keys present; nothing is required (runs from older versions or other machines)."""
    rows = [(label, _text(env[key])) for label, key in ENV_FIELDS if env.get(key) not in (None, "", {})]
    devices = env.get("devices")
    if isinstance(devices, dict):
        rows += [(f"device {d}", _text(name)) for d, name in devices.items()]
    grid = env.get("grid")
    if isinstance(grid, dict) and grid.get("name"):
        rows.append(("grid", _text(grid["name"])))
    if env.get("settings"):
        rows.append(("settings", _text(env["settings"])))
    return rows


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return value if isinstance(value, str) else json.dumps(value, default=str)


def env_table(envs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One column per run (or side): the environments next to each other."""
    columns = {name: dict(env_rows(env)) for name, env in envs.items()}
    labels = list(dict.fromkeys(label for col in columns.values() for label in col))
    return pd.DataFrame({"": labels, **{n: [c.get(label, "—") for label in labels] for n, c in columns.items()}})
