"""Run folder -> pandas: one row per case with the derived numbers every report needs, and the slices reports draw.

Derived columns (added by `to_frame`; the recorded ones are schema.CaseRecord's):
  valid        status "ok", is_jacobian and not an estimator: a timed, correct result
  eligible     valid, and a strategy that may win a shape (bench/rules.py: not a closed form, not another
               framework's peer): the only rows that may be "fastest", a winner or a recommendation
  note         "sum over outputs — not the Jacobian" where is_jacobian is False, the measured error of an estimator,
               else the failure message
  jf_ratio     time_median_s / forward_median_s (the ADBench/GradBench J/F ratio); ok rows only
  vs_best      time_median_s / fastest valid time of the same shape (model, device, dtype, B, H, in, out); valid rows
  rank         the strategy's place in the run (the order its cases were written, which is the registry's order)
Reading is from files only: no `strategies`, no `torch`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench import rules
from bench.results import ResultsError, read_run
from bench.schema import (
    AXES,
    CASE_FIELDS,
    DEVICE_ORDER,
    QUANTITIES,
    QUANTITY_LABEL,
    SETTING,
    SHAPE_COLUMNS,
    CaseRecord,
    VerdictRecord,
    slug,
)

NOT_J = "sum over outputs — not the Jacobian"
ESTIMATE = "stochastic, never a winner"
NUMERIC = ["time_median_s", "time_iqr_s", "forward_median_s", "peak_memory_bytes", "max_abs_error", "jf_ratio",
           "vs_best", "time_min_s", "time_mean_s", "tolerance", "wall_s", "time_ci_low_s", "time_ci_high_s", "setup_s",
           "log_time_sd"]
TEXT = ["strategy", "model", "device", "dtype", "mode", "quantity", "status", "message", "returns", "summary", "cost"]


@dataclass
class LoadedRun:
    """One run folder as read from disk: its id (the folder name, which names its plots too), env.json and cases."""

    run_id: str
    path: Path
    env: dict[str, Any]
    frame: pd.DataFrame
    playoffs: pd.DataFrame  # one row per shape (playoffs.jsonl): contenders re-timed interleaved, and the verdict
    warnings: list[str] = field(default_factory=list)


def load_run(run_dir: Path) -> LoadedRun:
    """Read cases.jsonl (+ env.json, playoffs.jsonl when present) of one run, of any format version (results.read_run
    upgrades it); a clear ResultsError for anything unusable."""
    files = read_run(Path(run_dir))
    return LoadedRun(run_id=Path(run_dir).resolve().name, path=Path(run_dir), env=files.env,
                     frame=to_frame(files.cases, base=_grid_base(files.env)), playoffs=playoffs_frame(files.verdicts),
                     warnings=files.warnings)


PLAYOFF_COLUMNS = [*SHAPE_COLUMNS, "best", "verdict", "tied_with", "runner_up", "runner_up_ratio", "contenders",
                   "rounds", "unstable", "message", "ratios"]


def playoffs_frame(verdicts: list[VerdictRecord]) -> pd.DataFrame:
    """Verdict records -> one row per shape (the last one wins); an older run without playoffs gives no rows."""
    rows = {tuple(getattr(v, c) for c in SHAPE_COLUMNS): v.as_dict() for v in verdicts}
    return pd.DataFrame(list(rows.values()), columns=PLAYOFF_COLUMNS)


def to_frame(records: Iterable[CaseRecord], base: dict[str, int] | None = None) -> pd.DataFrame:
    """Records -> DataFrame with the derived columns; the last record of a case wins (a resumed run)."""
    records = list(records)
    if not records:
        raise ResultsError("no case records")
    rank = {name: i for i, name in enumerate(dict.fromkeys(r.strategy for r in records))}
    frame = pd.DataFrame([r.as_dict() for r in {r.key: r for r in records}.values()], columns=CASE_FIELDS)
    for col in TEXT:
        frame[col] = frame[col].fillna("").astype(str)
    for col in NUMERIC:
        if col in frame:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["coupled"] = frame["coupled"].map(lambda v: v is True)
    frame["rank"] = frame["strategy"].map(rank)
    ok = frame["status"] == "ok"
    # A time or memory figure belongs to a validated case only: drop stray numbers of failed cases at the source.
    frame.loc[~ok, ["time_median_s", "time_iqr_s", "time_ci_low_s", "time_ci_high_s", "peak_memory_bytes"]] = math.nan
    for flag in ("estimator", "closed_form"):
        frame[flag] = frame[flag].map(lambda v: v is True)
    frame["valid"] = ok & frame["is_jacobian"] & ~frame["estimator"] & frame["time_median_s"].gt(0)
    frame["eligible"] = frame["valid"] & rules.eligible_rows(frame)
    frame["note"] = frame["message"].where(~ok, "")
    frame.loc[~frame["is_jacobian"], "note"] = NOT_J
    estimates = ok & frame["estimator"]
    frame.loc[estimates, "note"] = [f"{ESTIMATE}; {m}" if m else ESTIMATE for m in frame.loc[estimates, "message"]]
    frame["jf_ratio"] = (frame["time_median_s"] / frame["forward_median_s"]).where(ok & frame["forward_median_s"].gt(0))
    best = frame["time_median_s"].where(frame["valid"]).groupby([frame[c] for c in SHAPE_COLUMNS]).transform("min")
    frame["vs_best"] = (frame["time_median_s"] / best).where(frame["valid"])
    frame["sweeps"] = _sweeps(frame, base)
    order = frame["device"].map(lambda d: DEVICE_ORDER.get(d, 9))
    quantity = frame["quantity"].map(quantity_rank)
    return frame.assign(_o=order, _q=quantity).sort_values(["_o", "mode", "_q", "model", "dtype", *AXES, "rank"]) \
        .drop(columns=["_o", "_q"])


def strategy_order(rows: pd.DataFrame) -> list[str]:
    """The strategies of these rows in the run's order (the registry's): one order in every table and legend."""
    return rows.drop_duplicates("strategy").sort_values(["rank", "strategy"])["strategy"].tolist()


def _grid_base(env: dict[str, Any]) -> dict[str, int] | None:
    grid = env.get("grid")
    base = grid.get("base") if isinstance(grid, dict) else None
    if not isinstance(base, dict) or not set(AXES) <= set(base):
        return None
    return {a: base[a] for a in AXES}


def _sweeps(frame: pd.DataFrame, base: dict[str, int] | None) -> pd.Series:
    """Keep the harness's sweep tags; infer them (from env's grid base, else the most common value) when missing."""
    given = frame["sweeps"].map(tuple)
    if given.map(len).all():
        return given
    inferred = pd.Series([()] * len(frame), index=frame.index, dtype=object)
    for _, part in frame.groupby(SETTING):
        point = base or {a: int(part[a].mode().iloc[0]) for a in AXES}
        for idx, row in part.iterrows():
            off = [a for a in AXES if row[a] != point[a]]
            tags = ["base", *AXES] if not off else list(off) if len(off) == 1 else []
            if set(off) <= {"in_dim", "out_dim"}:
                tags.append("plane")
            inferred[idx] = tuple(tags)
    return given.where(given.map(len) > 0, inferred)


Setting = tuple[str, str, str, str, str]  # (model, device, dtype, mode, quantity): the SETTING columns of one group


def groups(frame: pd.DataFrame) -> list[tuple[Setting, pd.DataFrame]]:
    """(model, device, dtype, mode, quantity) settings in report order: cpu before cuda, the Jacobian before the
    Hessian and the Laplacian, the quantity alone before training through it."""
    keys = frame[SETTING].drop_duplicates().itertuples(index=False, name=None)
    ordered = sorted(keys, key=lambda k: (DEVICE_ORDER.get(k[1], 9), k[1], quantity_rank(k[4]), k[3] != "jacobian",
                                          k[0], k[2]))
    return [(k, frame[(frame[SETTING] == list(k)).all(axis=1)]) for k in ordered]


def quantity_rank(quantity: str) -> int:
    return QUANTITIES.index(quantity) if quantity in QUANTITIES else len(QUANTITIES)


def quantities(frame: pd.DataFrame) -> list[str]:
    """The quantities a frame holds, in QUANTITIES' order: each has its own sections in a report."""
    return sorted(set(frame["quantity"]), key=quantity_rank)


TRAIN_STEP = {"jacobian": "J with its graph, penalty, gradient",
              "hessian": "PINN step: the trace of H with its graph, residual, gradient",
              "laplacian": "PINN step: the Laplacian with its graph, residual, gradient"}


def where_label(key: Setting, env: dict[str, Any]) -> str:
    """"mlp · cuda (NVIDIA H100) · float32", "· laplacian" for a second-order quantity, "· train" in train mode: a
    setting as titles and headings name it."""
    model, device, dtype, mode, quantity = key
    devices = env.get("devices") if isinstance(env.get("devices"), dict) else {}
    return f"{model} · {device}" + (f" ({devices[device]})" if devices.get(device) else "") + f" · {dtype}" \
        + ("" if quantity == "jacobian" else f" · {quantity}") \
        + ("" if mode == "jacobian" else f" · {mode} ({TRAIN_STEP.get(quantity, TRAIN_STEP['jacobian'])})")


def quantity_title(quantity: str) -> str:
    """"Laplacian (B, out), the trace of each output's Hessian": a quantity as section titles name it."""
    return QUANTITY_LABEL.get(quantity, quantity)


def setting_tag(key: Setting) -> str:
    """cpu-mlp-float32 (-laplacian) (-train): the part of a plot's or table's file name that names its setting."""
    model, device, dtype, mode, quantity = key
    tag = "-".join(slug(k) for k in (device, model, dtype))
    return tag + ("" if quantity == "jacobian" else f"-{slug(quantity)}") + ("" if mode == "jacobian" else
                                                                            f"-{slug(mode)}")


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
