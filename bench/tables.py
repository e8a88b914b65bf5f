"""Tables built from a run's frame (bench/frames.py): display strings for reports, numbers for CSV.

Tables never show a number for a row whose status is not "ok": the status word takes its place (Markdown/HTML) or
the cell stays empty next to the status column (CSV).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from bench.frames import strategy_order, sweep_line
from bench.schema import AXES, SETTING, SHAPE_COLUMNS, STATUSES, fmt_bytes, fmt_ratio, fmt_time, status_kind

Formatter = Callable[[float], str]


def best_per_shape(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per measured shape: fastest valid strategy, runner-up, J/F of the best and best/analytic.

    `vs_analytic` compares the fastest autodiff strategy (analytic excluded) with the closed form: how far generic
    autodiff is from the physical limit for this model. Shapes where nothing is valid keep winner "none".
    """
    rows = []
    for shape, part in frame.groupby(SHAPE_COLUMNS, sort=False):
        valid = part[part["valid"]].sort_values("time_median_s")
        auto = valid[valid["strategy"] != "analytic"]
        analytic = valid[valid["strategy"] == "analytic"]
        row = dict(zip(SHAPE_COLUMNS, shape, strict=True))
        row.update(winner="none", best_s=math.nan, runner_up="", runner_up_s=math.nan, jf_best=math.nan,
                   vs_analytic=math.nan, forward_s=part["forward_median_s"].median(), n_valid=len(valid))
        if len(valid):
            row.update(winner=valid["strategy"].iloc[0], best_s=valid["time_median_s"].iloc[0],
                       jf_best=valid["jf_ratio"].iloc[0])
        if len(valid) > 1:
            row.update(runner_up=valid["strategy"].iloc[1], runner_up_s=valid["time_median_s"].iloc[1])
        if len(auto) and len(analytic):
            row["vs_analytic"] = auto["time_median_s"].iloc[0] / analytic["time_median_s"].iloc[0]
        rows.append(row)
    columns = [*SHAPE_COLUMNS, "winner", "best_s", "runner_up", "runner_up_s", "jf_best", "vs_analytic", "forward_s",
               "n_valid"]
    return pd.DataFrame(rows, columns=columns)


def cell(row: pd.Series, column: str, fmt: Formatter) -> str:
    """A number for an ok row, the status word for any other: failed cases never read as a speed."""
    if row["status"] != "ok":
        return row["status"] or "?"
    value = row[column]
    return fmt(value) if value is not None and not pd.isna(value) else "—"


def cases_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every case, display strings: the long table behind all others."""
    out = frame[["device", "model", "dtype", *AXES, "strategy", "status"]].copy()
    rows = [r for _, r in frame.iterrows()]
    out["time"] = [cell(r, "time_median_s", fmt_time) for r in rows]
    out["IQR"] = [cell(r, "time_iqr_s", fmt_time) for r in rows]
    out["J/F"] = [cell(r, "jf_ratio", fmt_ratio) for r in rows]
    out["× best"] = [cell(r, "vs_best", fmt_ratio) if r["is_jacobian"] else "not J" for r in rows]
    out["peak memory"] = [cell(r, "peak_memory_bytes", fmt_bytes) for r in rows]
    out["note"] = [_note(r) for r in rows]
    return out.reset_index(drop=True)


def cases_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Every case, machine-readable (seconds, bytes): numbers only where status is ok, empty cells otherwise."""
    cols = [*SETTING, *AXES, "strategy", "status", "time_median_s", "time_iqr_s", "forward_median_s", "jf_ratio",
            "vs_best", "peak_memory_bytes", "is_jacobian", "valid", "note"]
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
    """best_per_shape as display strings."""
    out = best[SHAPE_COLUMNS].copy()
    out["fastest valid"] = best["winner"]
    out["time"] = best["best_s"].map(fmt_time)
    out["runner-up"] = best["runner_up"]
    out["runner-up time"] = best["runner_up_s"].map(fmt_time)
    out["J/F of best"] = best["jf_best"].map(fmt_ratio)
    out["best autodiff / analytic"] = best["vs_analytic"].map(fmt_ratio)
    return out


def status_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Cases per strategy and status, per device: where the failures are."""
    counts = frame.groupby(["device", "strategy", "status"]).size().unstack("status", fill_value=0)
    counts = counts.reindex(columns=[s for s in STATUSES if s in counts.columns]
                            + [c for c in counts.columns if c not in STATUSES])
    out = counts.reset_index()
    not_j = frame[~frame["is_jacobian"]].groupby(["device", "strategy"]).size()
    out["not J (sum over outputs)"] = [int(not_j.get((d, s), 0)) for d, s in zip(out["device"], out["strategy"],
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
    ("threads", "threads"), ("TF32", "tf32"), ("seed", "seed"), ("git commit", "git_commit"),
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
