"""Figures of one run (and of a comparison), matplotlib with the Agg backend, imported only when drawing.

Each plot has one name, which is its file name: plots/<run-id>/<name>.png, e.g. time_vs_batch-cpu-mlp-float32.
A strategy has the same colour and marker in every plot of every run (fixed map, then a stable hash for plugins).
Failed points are drawn at the top edge of the axes: 'x' = wrong (validation failed: silently incorrect), '^' =
failed or not run (oom, timeout, over budget, skipped, error). `unsupported` is not drawn: the strategy does not apply.
A plot with no data in this run (e.g. the smoke grid has no sweep) is skipped, not drawn empty.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.best import NONE_VALID, best_per_shape
from bench.report.frames import LoadedRun, groups, plane, setting_tag, strategy_order, sweep_line, where_label
from bench.report.style import FORWARD, STATUS_COLORS, TRACE_PREFIX, color, marker
from bench.results import atomic_write_bytes
from bench.schema import (
    AXES,
    AXIS_LABEL,
    FAILED,
    FIXED_HIDDEN,
    SETTING,
    SHAPE_COLUMNS,
    fmt_margin,
    fmt_ratio,
    fmt_time,
    sizes_id,
    status_kind,
)
from bench.stats import TIE_MARGIN


def what(part: pd.DataFrame) -> str:
    """What one call computes in these rows, as a plot's title names it: Jacobian, Hessian, Laplacian."""
    quantity = str(part["quantity"].iloc[0]) if len(part) and "quantity" in part else "jacobian"
    return quantity.capitalize()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, out_dir: Path, name: str) -> Path:
    """Write <out_dir>/<name>.png atomically and close the figure (long reports draw many)."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    path = out_dir / f"{name}.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_run(run: LoadedRun, out_dir: Path) -> dict[str, Path]:
    """Every plot the run has data for, name -> path; the names are ordered as the report shows them."""
    out: dict[str, Path] = {}
    best = best_per_shape(run.frame, run.playoffs)
    for key, part in groups(run.frame):
        tag = setting_tag(key)
        draws = [*[(f"time_vs_{axis}", functools.partial(time_vs_axis, axis=axis)) for axis in AXES],
                 ("jf_ratio_vs_batch", jf_vs_batch), ("memory_vs_batch", memory_vs_batch),
                 ("memory_vs_time", memory_vs_time),
                 ("winner_map", functools.partial(winner_map, best=best[(best[SETTING] == list(key)).all(axis=1)])),
                 ("coupled_status", coupled_status)]
        for kind, draw in draws:  # draw(part, where=...) returns a figure, or None when the run has no data for it
            fig = draw(part, where=where_label(key, run.env))
            if fig is not None:
                out[f"{kind}-{tag}"] = save(fig, out_dir, f"{kind}-{tag}")
    return out


def _fixed(line: pd.DataFrame, axis: str) -> str:
    short = {"batch": "B", "hidden": "H", "in_dim": "in", "out_dim": "out"}
    return ", ".join(f"{short[a]}={line[a].iloc[0]}" for a in AXES
                     if a != axis and not (a == "hidden" and line[a].iloc[0] == FIXED_HIDDEN))


def _lines(ax: Any, line: pd.DataFrame, axis: str, column: str, forward: bool = False) -> None:
    """One line per strategy over `axis`; failed points as markers on the top edge; legend outside on the right."""
    from matplotlib.lines import Line2D

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    top = ax.get_xaxis_transform()  # x in data, y in axes coordinates: 0.97 is the top edge
    flags: set[str] = set()
    stacked: dict[int, int] = {}
    for strategy in strategy_order(line):
        rows = line[line["strategy"] == strategy].sort_values(axis)
        ok = rows[(rows["status"] == "ok") & rows[column].gt(0)]
        not_j = not rows["is_jacobian"].all()
        estimate = bool(rows["estimator"].any())
        if len(ok):
            label = strategy + (" (sum over outputs, not J)" if not_j else " (estimate)" if estimate else "")
            # the two closed forms of a Laplacian share black and the star: the trace of the Hessian's dash-dotted
            closed_form = bool(rows["closed_form"].any())
            trace_closed_form = closed_form and strategy.startswith(TRACE_PREFIX[0])
            style = ":" if not_j or estimate else "--" if rows["compiled"].any() else "-." if trace_closed_form else "-"
            ax.plot(ok[axis], ok[column], color=color(strategy, closed_form), marker=marker(strategy, closed_form),
                    markersize=5, linestyle=style, linewidth=2.2 if closed_form else 1.5, label=label)
        for status, sym in (("wrong", "x"), *((s, "^") for s in FAILED)):
            bad = rows[rows["status"] == status]
            if len(bad):
                flags.add(sym)
                ys = []  # stack the markers of several strategies failing at the same x downwards from the top
                for x in bad[axis]:
                    ys.append(0.97 - 0.04 * stacked.get(x, 0))
                    stacked[x] = stacked.get(x, 0) + 1
                ax.scatter(bad[axis], ys, transform=top, marker=sym, s=60, color=color(strategy),
                           linewidths=2, clip_on=False, zorder=5, label=None if len(ok) else strategy)
    if forward:
        fwd = line.groupby(axis)["forward_median_s"].median().dropna()
        if len(fwd):
            ax.plot(fwd.index, fwd.values, color="#bbbbbb", linestyle="--", linewidth=2, label=FORWARD)
    if flags:  # headroom so the failure markers on the top edge do not sit on data
        lo, hi = ax.get_ylim()
        if 0 < lo < hi:
            ax.set_ylim(lo, hi * (hi / lo) ** (0.1 + 0.05 * max(stacked.values())))
    handles, labels = ax.get_legend_handles_labels()
    for sym, text in (("x", "wrong (silently incorrect)"), ("^", "failed/not run (oom, timeout, budget, error)")):
        if sym in flags:
            handles.append(Line2D([], [], color="#555555", marker=sym, linestyle="none", markersize=8, mew=2))
            labels.append(text)
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    log_axes(ax, sorted(line[axis].unique()), fmt_time if column == "time_median_s" else _fmt_plain)
    ax.set_xlabel(AXIS_LABEL[axis] + " (log scale)")


def _fmt_plain(v: float) -> str:
    return f"{v:g}"


def log_axes(ax: Any, xs: list[int], yfmt: Callable[[float], str]) -> None:
    """Log-log with readable ticks: the measured x values as integers, y at 1-2-5 steps in the quantity's unit.

    Plain text ticks instead of matplotlib's 10^k mathtext: easier to read, and much faster to draw.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: yfmt(v)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.grid(True, which="major", alpha=0.3)


def _figure(title: str, subtitle: str) -> tuple[Any, Any]:
    fig, ax = _pyplot().subplots(figsize=(8.5, 4.8))
    ax.set_title(f"{title}\n{subtitle}", fontsize=10)
    return fig, ax


def time_vs_axis(part: pd.DataFrame, where: str, axis: str) -> Any | None:
    """Time per call (a Jacobian, Hessian or Laplacian) against one swept dimension, the others at the grid's base
    point."""
    line = sweep_line(part, axis)
    if line.empty or not (line["status"] == "ok").any():
        return None
    fig, ax = _figure(f"Time per {what(part)} call vs {AXIS_LABEL[axis]} ({_fixed(line, axis)})", where)
    _lines(ax, line, axis, "time_median_s", forward=True)
    ax.set_ylabel("median time per call [s]")
    return fig


def jf_vs_batch(part: pd.DataFrame, where: str) -> Any | None:
    """J/F: how many forward passes one Jacobian costs; flat means the strategy scales like the model itself."""
    line = sweep_line(part, "batch")
    if line.empty or not line["jf_ratio"].gt(0).any():
        return None
    fig, ax = _figure(f"{what(part)} time / forward time vs batch size ({_fixed(line, 'batch')})", where)
    _lines(ax, line, "batch", "jf_ratio")
    ax.yaxis.set_major_formatter(_formatter(fmt_ratio))
    ax.axhline(1.0, color="#bbbbbb", linestyle="--", linewidth=1)
    ax.set_ylabel("J/F ratio = time(J) / time(model(x)) [×]")
    return fig


def memory_vs_batch(part: pd.DataFrame, where: str) -> Any | None:
    line = sweep_line(part, "batch")
    if line.empty or not line["peak_memory_bytes"].gt(0).any():
        return None
    line = line.assign(peak_mib=line["peak_memory_bytes"] / 2**20)
    fig, ax = _figure(f"Peak memory of one call vs batch size ({_fixed(line, 'batch')})", where)
    _lines(ax, line, "batch", "peak_mib")
    ax.set_ylabel("peak memory above baseline [MiB]")
    return fig


def memory_vs_time(part: pd.DataFrame, where: str) -> Any | None:
    """Peak memory against time at one shape (the largest batch of the batch sweep): every valid strategy a point,
    the Pareto front (no other strategy is both faster and leaner) joined and labelled."""
    line = sweep_line(part, "batch")
    rows = line[line["batch"] == line["batch"].max()] if len(line) else part
    if len(rows) and rows[SHAPE_COLUMNS].drop_duplicates().shape[0] > 1:  # no sweep: the shape most strategies ran
        counts = rows[rows["valid"]].groupby(AXES).size()
        rows = rows[(rows[AXES] == list(counts.idxmax())).all(axis=1)] if len(counts) else rows.iloc[0:0]
    points = rows[rows["valid"] & rows["peak_memory_bytes"].gt(0)].sort_values("time_median_s")
    if len(points) < 2:
        return None
    front = pareto_front(points)
    fig, ax = _figure(f"Peak memory against time per call at {sizes_id(points.iloc[0])}: the Pareto front", where)
    for _, r in points.iterrows():
        on_front = r["strategy"] in set(front["strategy"])
        ax.scatter(r["time_median_s"], r["peak_memory_bytes"] / 2**20, color=color(r["strategy"], r["closed_form"]),
                   marker=marker(r["strategy"], r["closed_form"]), s=70 if on_front else 35, zorder=3,
                   edgecolors="black" if on_front else "none", label=r["strategy"])
        if on_front:
            ax.annotate(r["strategy"], (r["time_median_s"], r["peak_memory_bytes"] / 2**20), fontsize=7,
                        xytext=(5, 4), textcoords="offset points")
    ax.step(front["time_median_s"], front["peak_memory_bytes"] / 2**20, where="post", color="#555555",
            linestyle="--", linewidth=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(_formatter(fmt_time))
    ax.set_xlabel("median time per call (log scale)")
    ax.set_ylabel("peak memory above baseline [MiB] (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The points no other point beats on both time and memory, fastest first."""
    front, leanest = [], float("inf")
    for _, r in points.sort_values(["time_median_s", "peak_memory_bytes"]).iterrows():
        if r["peak_memory_bytes"] < leanest:
            front.append(r)
            leanest = r["peak_memory_bytes"]
    return pd.DataFrame(front)


def _formatter(fmt: Callable[[float], str]) -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: fmt(v))


TIE_COLOR = "#eeeeee"


def winner_map(part: pd.DataFrame, where: str, best: pd.DataFrame) -> Any | None:
    """Verdict at each (in, out) of the plane: the winning autodiff strategy (and how much slower the runner-up is),
    or a tie with the strategies tied; and how far the fastest is from the closed form. `analytic` is not in the race:
    it exists for the MLP family only."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rows = plane(part)
    if rows.empty:
        return None
    b, h = rows["batch"].iloc[0], rows["hidden"].iloc[0]
    cells = best[(best["batch"] == b) & (best["hidden"] == h) & (best["fastest"] != NONE_VALID)
                 & best["in_dim"].isin(rows["in_dim"]) & best["out_dim"].isin(rows["out_dim"])]
    if cells.empty:
        return None
    ins, outs = sorted(rows["in_dim"].unique()), sorted(rows["out_dim"].unique())
    winners = cells[cells["verdict"] == "winner"]
    names = strategy_order(rows[rows["strategy"].isin(winners["fastest"])])  # only winners get a colour
    palette = ["#ffffff", "#dddddd", TIE_COLOR] + [color(s) for s in names]  # not measured, none valid, tie
    grid = [[0] * len(ins) for _ in outs]
    text = [["not measured"] * len(ins) for _ in outs]
    for (i, o), _ in rows.groupby(["in_dim", "out_dim"]):
        y, x = outs.index(o), ins.index(i)
        cell = cells[(cells["in_dim"] == i) & (cells["out_dim"] == o)]
        if cell.empty:
            grid[y][x], text[y][x] = 1, "none valid"
            continue
        grid[y][x], text[y][x] = _winner_cell(cell.iloc[0], names)
    fig, ax = _pyplot().subplots(figsize=(1.5 + 1.9 * len(ins), 1.2 + 0.95 * len(outs)))
    ax.imshow(grid, cmap=ListedColormap(palette), vmin=0, vmax=len(palette) - 1, origin="lower", aspect="auto")
    for y in range(len(outs)):
        for x in range(len(ins)):
            ax.text(x, y, text[y][x], ha="center", va="center", fontsize=7, color=_ink(palette[grid[y][x]]))
    ax.set_xticks(range(len(ins)), [str(v) for v in ins])
    ax.set_yticks(range(len(outs)), [str(v) for v in outs])
    ax.set_xlabel("input dim in")
    ax.set_ylabel("output dim out")
    ax.set_title(f"Fastest autodiff strategy over in × out (B={b}, H={h}): winner or tie\n{where}", fontsize=10)
    handles = [Patch(color=color(s), label=s) for s in names]
    if (cells["verdict"] == "tie").any():
        handles.append(Patch(facecolor=TIE_COLOR, edgecolor="#999999",
                             label=f"tie: none surely >{fmt_margin(TIE_MARGIN)} faster"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def _winner_cell(row: pd.Series, names: list[str]) -> tuple[int, str]:
    """(palette index, text) of one winner-map cell."""
    closed = [f"{row['vs_analytic']:.1f}× analytic"] if pd.notna(row["vs_analytic"]) else []
    if row["verdict"] == "tie":
        tied = [row["fastest"], *row["tied_with"]]
        shown = tied[:3] + ([f"+{len(tied) - 3} more"] if len(tied) > 3 else [])
        return 2, "\n".join(["tie:", *shown, *closed, *_eager_line(row)])
    lines = [row["fastest"]]
    if pd.notna(row["runner_up_ratio"]):
        lines.append(f"next ×{row['runner_up_ratio']:.2f}")
    return 3 + names.index(row["fastest"]), "\n".join(lines + closed + _eager_line(row))


def _eager_line(row: pd.Series) -> list[str]:
    """Under a compiled winner: the fastest eager strategy and how much slower it is (no compiling needed)."""
    if not row["best_eager"] or row["best_eager"] == row["fastest"] or pd.isna(row["best_eager_s"]):
        return []
    return [f"eager: {row['best_eager']} ×{row['best_eager_s'] / row['best_s']:.1f}"]


def _ink(background: str) -> str:
    """Black or white text, whichever reads on this fill colour."""
    r, g, b = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def coupled_status(part: pd.DataFrame, where: str) -> Any | None:
    """For a model whose output rows depend on other rows: which strategies are silently wrong, which are fine."""
    if not part["coupled"].any():
        return None
    kinds = part.assign(kind=part["status"].map(status_kind))
    counts = kinds.groupby(["strategy", "kind"]).size().unstack("kind", fill_value=0)
    counts = counts.reindex(index=strategy_order(part)[::-1], columns=list(STATUS_COLORS), fill_value=0)
    fig, ax = _pyplot().subplots(figsize=(8.5, 0.9 + 0.4 * len(counts)))
    left = pd.Series(0, index=counts.index)
    for status, c in STATUS_COLORS.items():
        label = {"wrong": "wrong (silently incorrect)", "failed": "failed (oom, timeout, budget, error)"}.get(status,
                                                                                                            status)
        ax.barh(counts.index, counts[status], left=left, color=c, label=label)
        left += counts[status]
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cases (shapes measured)")
    ax.set_title(f"Model couples samples (output row b depends on other rows): validation per strategy\n{where}",
                 fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def speedup_vs_batch(table: pd.DataFrame, a: str, b: str, where: str) -> Any | None:
    """Compare: time on side a / time on side b per strategy vs batch; above 1 side b is faster."""
    data = table.dropna(subset=["speedup"])
    if data.empty or data["batch"].nunique() < 2:
        return None
    fig, ax = _figure(f"Speedup of {b} over {a} vs batch size (time {a} / time {b})", where)
    for strategy in strategy_order(data):
        rows = data[data["strategy"] == strategy].sort_values("batch")
        ax.plot(rows["batch"], rows["speedup"], color=color(strategy), marker=marker(strategy), markersize=5,
                label=strategy)
    ax.axhline(1.0, color="#555555", linestyle="--", linewidth=1, label=f"parity (above: {b} faster)")
    log_axes(ax, sorted(data["batch"].unique()), fmt_ratio)
    ax.set_xlabel("batch size B (log scale)")
    ax.set_ylabel(f"speedup = time {a} / time {b} [×]")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig
