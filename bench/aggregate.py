"""Run folder -> pandas: one row per case with the derived numbers every report needs, and the tables built from it.

Derived columns (added by `to_frame`):
  computes_j  the strategy returns J for this shape (False for "output_sum" strategies when out_dim > 1)
  valid       status "ok" and computes_j: the only rows that may be "fastest", a winner or a recommendation
  note        "sum over outputs — not the Jacobian" where computes_j is False, else the failure message
  jf_ratio    time_median_s / forward_median_s (the ADBench/GradBench J/F ratio); ok rows only
  vs_best     time_median_s / fastest valid time of the same shape (model, device, dtype, B, H, in, out); valid rows
Tables never show a number for a row whose status is not "ok": the status word takes its place (Markdown/HTML) or
the cell stays empty next to the status column (CSV). Reading is from files only: no `strategies`, no `torch`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.results import CASE_FIELDS, ResultsError, atomic_write_text, case_key, read_cases, read_json
from bench.schema import STATUSES, status_kind

AXES = ["batch", "hidden", "in_dim", "out_dim"]  # the four swept shape dimensions
GROUP = ["model", "device", "dtype"]  # one "setting": numbers are only compared inside it
SHAPE = GROUP + AXES  # one measured shape; every strategy ran on it
NOT_J = "sum over outputs — not the Jacobian"
NUMERIC = ["time_median_s", "time_iqr_s", "forward_median_s", "peak_memory_bytes", "max_abs_error", "jf_ratio",
           "vs_best", "time_min_s", "time_mean_s", "tolerance", "wall_s"]
AXIS_LABEL = {"batch": "batch size B", "hidden": "hidden width H", "in_dim": "input dim in",
              "out_dim": "output dim out"}
DEVICE_ORDER = {"cpu": 0, "cuda": 1}


@dataclass
class Run:
    """One run folder as read from disk: its id (the folder name, which names its plots too), env.json and cases."""

    run_id: str
    path: Path
    env: dict[str, Any]
    frame: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def load_run(run_dir: Path) -> Run:
    """Read cases.jsonl (+ env.json when present) of one run; a clear ResultsError for anything unusable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"{run_dir}: no such run folder (give results/<run-id>)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_cases(run_dir / "cases.jsonl")
    notes = [str(w.message) for w in caught]
    if not records:
        torn = f" ({len(notes)} corrupt lines skipped)" if notes else ""
        raise ResultsError(f"{run_dir / 'cases.jsonl'}: no case records{torn}; the run is empty or broken: run "
                           "`make bench` again")
    env_path = run_dir / "env.json"
    env = read_json(env_path) if env_path.exists() else {}
    if not isinstance(env, dict):
        raise ResultsError(f"{env_path}: expected a JSON object; delete it or rerun the benchmark")
    if not env_path.exists():
        notes.append(f"{env_path}: missing, environment unknown")
    frame = to_frame(records, base=_grid_base(env))
    return Run(run_id=run_dir.resolve().name, path=run_dir, env=env, frame=frame, warnings=notes)


def to_frame(records: Iterable[dict[str, Any]], base: dict[str, int] | None = None) -> pd.DataFrame:
    """Records -> DataFrame with the derived columns; the last record of a case wins (a resumed run)."""
    latest = {case_key(r): r for r in records}
    frame = pd.DataFrame(list(latest.values()))
    for col in CASE_FIELDS:
        if col not in frame:
            frame[col] = None
    for col in AXES:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    bad = frame[AXES].isna().any(axis=1)
    if bad.all():
        raise ResultsError("no record has integer batch/hidden/in_dim/out_dim: not a jacobench cases.jsonl")
    frame = frame[~bad].copy()
    frame[AXES] = frame[AXES].astype(int)
    for col in ["strategy", "model", "device", "dtype", "status", "message", "returns", "summary", "cost"]:
        frame[col] = frame[col].fillna("").astype(str)
    for col in NUMERIC:
        if col in frame:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["coupled"] = frame["coupled"].map(lambda v: v is True)
    ok = frame["status"] == "ok"
    # A time or memory figure belongs to a validated case only: drop stray numbers of failed cases at the source.
    frame.loc[~ok, ["time_median_s", "time_iqr_s", "peak_memory_bytes"]] = math.nan
    frame["computes_j"] = (frame["returns"] != "output_sum") | (frame["out_dim"] == 1)
    frame["valid"] = ok & frame["computes_j"] & frame["time_median_s"].gt(0)
    frame["note"] = frame["message"].where(~ok, "")
    frame.loc[~frame["computes_j"], "note"] = NOT_J
    frame["jf_ratio"] = (frame["time_median_s"] / frame["forward_median_s"]).where(ok & frame["forward_median_s"].gt(0))
    best = frame["time_median_s"].where(frame["valid"]).groupby([frame[c] for c in SHAPE]).transform("min")
    frame["vs_best"] = (frame["time_median_s"] / best).where(frame["valid"])
    frame["sweeps"] = _sweeps(frame, base)
    order = frame["device"].map(lambda d: DEVICE_ORDER.get(d, 9))
    return frame.assign(_o=order).sort_values(["_o", "model", "dtype", *AXES, "strategy"]).drop(columns="_o")


def _grid_base(env: dict[str, Any]) -> dict[str, int] | None:
    grid = env.get("grid")
    base = grid.get("base") if isinstance(grid, dict) else None
    if not isinstance(base, dict):
        return None
    alias = {"in": "in_dim", "out": "out_dim", "B": "batch", "H": "hidden"}
    out = {alias.get(k, k): v for k, v in base.items() if isinstance(v, int)}
    return out if set(AXES) <= set(out) else None


def _sweeps(frame: pd.DataFrame, base: dict[str, int] | None) -> pd.Series:
    """Keep the harness's sweep tags; infer them (from env's grid base, else the most common value) when missing."""
    given = frame["sweeps"].map(lambda s: tuple(s) if isinstance(s, list) else tuple(str(s).split("|")) if s else ())
    if given.map(len).all():
        return given
    inferred = pd.Series([()] * len(frame), index=frame.index, dtype=object)
    for _, part in frame.groupby(GROUP):
        point = base or {a: int(part[a].mode().iloc[0]) for a in AXES}
        for idx, row in part.iterrows():
            off = [a for a in AXES if row[a] != point[a]]
            tags = ["base", *AXES] if not off else list(off) if len(off) == 1 else []
            if set(off) <= {"in_dim", "out_dim"}:
                tags.append("plane")
            inferred[idx] = tuple(tags)
    return given.where(given.map(len) > 0, inferred)


def groups(frame: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """(model, device, dtype) settings in report order: cpu before cuda."""
    keys = frame[GROUP].drop_duplicates().itertuples(index=False, name=None)
    ordered = sorted(keys, key=lambda k: (DEVICE_ORDER.get(k[1], 9), k[1], k[0], k[2]))
    return [(k, frame[(frame[GROUP] == list(k)).all(axis=1)]) for k in ordered]


def where_label(key: tuple[str, str, str], env: dict[str, Any]) -> str:
    """"mlp · cuda (NVIDIA H100) · float32": a setting as titles and headings name it."""
    model, device, dtype = key
    devices = env.get("devices") if isinstance(env.get("devices"), dict) else {}
    return f"{model} · {device}" + (f" ({devices[device]})" if devices.get(device) else "") + f" · {dtype}"


def sweep_line(part: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Rows of one setting on the line that varies `axis` with the other three dimensions fixed.

    The fixed point comes from the rows tagged with `axis` (the grid's sweep); every row on that line is used,
    base point included. Without tags (e.g. a cartesian grid) the line with the most distinct `axis` values is used.
    """
    others = [a for a in AXES if a != axis]
    tagged = part[part["sweeps"].map(lambda s: axis in s)]
    source = tagged if len(tagged) else part
    if source.empty:
        return source
    counts = source.groupby(others)[axis].nunique()
    fixed = counts.idxmax() if len(counts) else None
    line = part[(part[others] == pd.Series(dict(zip(others, fixed, strict=True)))).all(axis=1)]
    return line if line[axis].nunique() >= 2 else line.iloc[0:0]


def plane(part: pd.DataFrame) -> pd.DataFrame:
    """Rows of one setting on the in × out plane (tagged "plane"), at the most common (batch, hidden)."""
    rows = part[part["sweeps"].map(lambda s: "plane" in s)]
    if rows.empty:
        return rows
    bh = rows.groupby(["batch", "hidden"]).size().idxmax()
    rows = rows[(rows["batch"] == bh[0]) & (rows["hidden"] == bh[1])]
    return rows if rows["in_dim"].nunique() >= 2 or rows["out_dim"].nunique() >= 2 else rows.iloc[0:0]


def best_per_shape(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per measured shape: fastest valid strategy, runner-up, J/F of the best and best/analytic.

    `vs_analytic` compares the fastest autodiff strategy (analytic excluded) with the closed form: how far generic
    autodiff is from the physical limit for this model. Shapes where nothing is valid keep winner "none".
    """
    rows = []
    for shape, part in frame.groupby(SHAPE, sort=False):
        valid = part[part["valid"]].sort_values("time_median_s")
        auto = valid[valid["strategy"] != "analytic"]
        analytic = valid[valid["strategy"] == "analytic"]
        row = dict(zip(SHAPE, shape, strict=True))
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
    columns = SHAPE + ["winner", "best_s", "runner_up", "runner_up_s", "jf_best", "vs_analytic", "forward_s", "n_valid"]
    return pd.DataFrame(rows, columns=columns)


# ---- formatting: one place decides how a number reads --------------------------------------------------------------

def fmt_time(s: float) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_bytes(b: float) -> str:
    if b is None or not math.isfinite(b):
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_ratio(r: float) -> str:
    if r is None or not math.isfinite(r):
        return "∞" if r == math.inf else "—"
    return f"{r:.0f}×" if abs(r) >= 1000 else f"{r:.3g}×"


def cell(row: pd.Series, column: str, fmt: Any) -> str:
    """A number for an ok row, the status word for any other: failed cases never read as a speed."""
    if row["status"] != "ok":
        return row["status"] or "?"
    value = row[column]
    return fmt(value) if value is not None and not pd.isna(value) else "—"


# ---- tables ----------------------------------------------------------------------------------------------------------

def cases_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every case, display strings: the long table behind all others."""
    out = frame[["device", "model", "dtype", "batch", "hidden", "in_dim", "out_dim", "strategy", "status"]].copy()
    out["time"] = [cell(r, "time_median_s", fmt_time) for _, r in frame.iterrows()]
    out["IQR"] = [cell(r, "time_iqr_s", fmt_time) for _, r in frame.iterrows()]
    out["J/F"] = [cell(r, "jf_ratio", fmt_ratio) for _, r in frame.iterrows()]
    out["× best"] = [cell(r, "vs_best", fmt_ratio) if r["computes_j"] else "not J" for _, r in frame.iterrows()]
    out["peak memory"] = [cell(r, "peak_memory_bytes", fmt_bytes) for _, r in frame.iterrows()]
    out["note"] = [_note(r) for _, r in frame.iterrows()]
    return out.reset_index(drop=True)


def cases_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Every case, machine-readable (seconds, bytes): numbers only where status is ok, empty cells otherwise."""
    cols = SHAPE[:3] + AXES + ["strategy", "status", "time_median_s", "time_iqr_s", "forward_median_s", "jf_ratio",
                               "vs_best", "peak_memory_bytes", "computes_j", "valid", "note"]
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


def pivot(part: pd.DataFrame, axis: str, column: str, fmt: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`axis` × strategy display table for one sweep line, and a same-shaped mask of the fastest valid cells."""
    line = sweep_line(part, axis)
    strategies = sorted(line["strategy"].unique(), key=_strategy_order)
    values, best = {}, {}
    for x, rows in line.groupby(axis):
        by = rows.set_index("strategy")
        values[x] = {s: (cell(by.loc[s], column, fmt) + ("" if by.loc[s, "computes_j"] else " (not J)"))
                     if s in by.index else "" for s in strategies}
        fastest = by["time_median_s"].where(by["valid"]).idxmin() if by["valid"].any() else None
        best[x] = {s: s == fastest for s in strategies}
    table = pd.DataFrame.from_dict(values, orient="index", columns=strategies)
    mask = pd.DataFrame.from_dict(best, orient="index", columns=strategies).astype(bool)
    table.index.name = mask.index.name = axis
    return table, mask


def best_table(frame: pd.DataFrame) -> pd.DataFrame:
    """best_per_shape as display strings."""
    best = best_per_shape(frame)
    out = best[SHAPE].copy()
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
    not_j = frame[~frame["computes_j"]].groupby(["device", "strategy"]).size()
    out["not J (sum over outputs)"] = [int(not_j.get((d, s), 0)) for d, s in zip(out["device"], out["strategy"],
                                                                                   strict=True)]
    return out


def coupled_table(frame: pd.DataFrame) -> pd.DataFrame:
    """For models that couple samples: per strategy, how many cases were ok / silently wrong / failed."""
    part = frame[frame["model"].isin(frame.loc[frame["coupled"], "model"].unique())]
    if part.empty:
        return pd.DataFrame()
    kinds = part.assign(kind=part["status"].map(status_kind))
    counts = kinds.groupby(["model", "device", "strategy", "kind"]).size().unstack("kind", 0)
    return counts.reindex(columns=["ok", "wrong", "failed", "unsupported"], fill_value=0).reset_index()


def _strategy_order(name: str) -> tuple[int, str]:
    known = ["analytic", "grad_summed", "grad_loop", "grad_batched", "jacobian_diagonal", "jacobian_sum",
             "vmap_jacrev", "vmap_jacfwd", "jvp_loop"]
    return (known.index(name), name) if name in known else (len(known), name)


def strategy_order(names: Iterable[str]) -> list[str]:
    """Strategies in a stable reading order: the reference first, then the built-ins, then plugins by name."""
    return sorted(set(names), key=_strategy_order)


# ---- writing ---------------------------------------------------------------------------------------------------------

def to_markdown(table: pd.DataFrame, index: bool = False) -> str:
    """GitHub Markdown; strings from result files are escaped (no raw HTML, no broken '|' columns)."""
    safe = table.reset_index() if index else table.copy()  # the index as a named first column
    safe.columns = [md_escape(c) for c in safe.columns]
    for col in safe.columns:
        safe[col] = safe[col].map(md_escape)
    return safe.to_markdown(index=False, disable_numparse=True)


def md_escape(value: Any) -> str:
    """Markdown-safe text: without '<' no HTML tag can start; '|' would split a table cell; one line per cell."""
    return " ".join(str(value).split()).replace("<", "&lt;").replace("|", "\\|")


def to_html(table: pd.DataFrame, name: str, highlight: pd.DataFrame | None = None, index: bool = False) -> str:
    """pandas Styler table with every cell and header HTML-escaped; `highlight` marks cells (the fastest) in bold."""
    if index:  # the index as a named first column, like the Markdown table
        highlight = None if highlight is None else highlight.reindex(index=table.index, columns=table.columns,
                                                                        fill_value=False).reset_index(drop=True)
        table = table.reset_index()
    styler = table.style.format(escape="html").format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    styler = styler.set_uuid(_css_id(name)).hide(axis="index")
    numeric = [c for c in table.columns if table[c].astype(str).str.match(r"^[-\d.∞—]").mean() > 0.5]
    if numeric:  # numbers right-aligned so magnitudes line up; text stays left
        styler = styler.set_properties(subset=numeric, **{"text-align": "right"})
    if highlight is not None:
        css = highlight.reindex(index=table.index, columns=table.columns, fill_value=False).astype(bool)
        styler = styler.apply(lambda _: css.replace({True: "font-weight: bold; background: #e6f4ea", False: ""}),
                              axis=None)
    return styler.to_html()


def _css_id(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:40] or "t"


def write_table(table: pd.DataFrame, out_dir: Path, name: str, numbers: pd.DataFrame | None = None,
                highlight: pd.DataFrame | None = None, index: bool = False) -> dict[str, Path]:
    """tables/<name>.csv (+ .md, .html); the CSV gets `numbers` (machine-readable) when given."""
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "html")}
    atomic_write_text(paths["csv"], (numbers if numbers is not None else table).to_csv(index=index))
    atomic_write_text(paths["md"], to_markdown(table, index=index) + "\n")
    body = to_html(table, name, highlight=highlight, index=index)
    atomic_write_text(paths["html"], f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{_css_id(name)}"
                                     f"</title></head><body>\n{body}\n</body></html>\n")
    return paths
