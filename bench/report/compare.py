"""Several runs (or the devices of one run) side by side: speedups, crossover batch sizes, winners per side.

A side is one (run, device): a CPU box and a GPU box are two runs with one device each, a GPU box that also measured
its CPU is one run with two sides. The first side is the baseline "a"; every other side "b" is compared with it on
the cases both measured (KEY_COLUMNS minus device). Speedup = time on a / time on b: above 1, b is faster.
Output: results/compare-<a>-vs-<b>/report.md + report.html, plots/compare-<a>-vs-<b>/*.png, rendered like a run
report (report.render).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.document import Block, Document, Section, figure_block, render, table_block
from bench.report.frames import load_run, quantity_rank, quantity_title, strategy_order, sweep_line
from bench.report.plots import save, speedup_vs_batch
from bench.report.rerun import reproducibility, rerun_agreement, same_machine
from bench.report.sides import SHAPE, Side, sides_of
from bench.report.tables import env_table, fmt_interval, verdict_cell
from bench.results import ResultsError
from bench.schema import (
    AXES,
    FIXED_HIDDEN,
    KEY_COLUMNS,
    fmt_ratio,
    fmt_time,
    sizes_id,
    slug,
)
from bench.stats import ratio_of_medians, significant, significantly_different

JOIN = [k for k in KEY_COLUMNS if k != "device"]
KEEP = ["status", "time_median_s", "valid", "is_jacobian", "sweeps", "rank", "round_times_s", "unstable", "log_time_sd",
        "time_ci_low_s", "time_ci_high_s", "forward_median_s"]


def join(a: Side, b: Side) -> tuple[pd.DataFrame, list[str]]:
    """Cases measured on both sides; when their dtypes do not overlap at all, join across dtypes with a warning."""
    notes = []
    keys = JOIN
    left, right = a.frame[JOIN + KEEP], b.frame[JOIN + KEEP]
    if not set(left["dtype"]) & set(right["dtype"]):
        keys = [k for k in JOIN if k != "dtype"]
        notes.append(f"{a.label} measured {sorted(set(left['dtype']))}, {b.label} {sorted(set(right['dtype']))}: "
                     "compared across dtypes, speedups mix precision and hardware")
        right = right.drop(columns="dtype")
    both = left.merge(right, on=keys, suffixes=("_a", "_b"))
    if both.empty:
        shapes = {s.label: s.frame[AXES].drop_duplicates().shape[0] for s in (a, b)}
        raise ResultsError(
            f"{a.label} ({a.run.path}) and {b.label} ({b.run.path}) share no cases (same strategy, model, dtype and "
            f"B, H, in, out); models {sorted(set(a.frame['model']))} vs {sorted(set(b.frame['model']))}, "
            f"{shapes[a.label]} vs {shapes[b.label]} shapes: run both with the same GRID and MODEL")
    timed = both["time_median_s_a"].between(0, math.inf, inclusive="neither") \
        & both["time_median_s_b"].between(0, math.inf, inclusive="neither")  # a hole in a record is not a time
    ok = (both["status_a"] == "ok") & (both["status_b"] == "ok") & timed
    both["speedup"] = (both["time_median_s_a"] / both["time_median_s_b"]).where(ok)
    intervals = [speedup_interval(r) if is_ok else (math.nan,) * 3
                 for is_ok, (_, r) in zip(ok, both.iterrows(), strict=True)]
    both["speedup_low"] = [i[1] for i in intervals]
    both["speedup_high"] = [i[2] for i in intervals]
    # Significant: the interval excludes 1. Without round times (an older run) the point estimate is taken as is.
    both["significant"] = ok & pd.Series([significant(i) or math.isnan(i[1]) for i in intervals], index=both.index)
    both["unstable"] = both["unstable_a"] | both["unstable_b"]
    return both.rename(columns={"sweeps_a": "sweeps", "rank_a": "rank"}), notes


def speedup_interval(row: pd.Series) -> tuple[float, float, float]:
    """time on a / time on b with the 95% interval of that ratio between the two runs: from each run's estimate of
    how far its medians move from run to run (log_time_sd: rounds, blocks and processes), so two runs of one machine
    differ significantly only where the difference exceeds what a rerun shows. Runs older than log_time_sd fall back
    to a bootstrap over their rounds, which knows only the noise inside one block of rounds."""
    sd_a, sd_b = row["log_time_sd_a"], row["log_time_sd_b"]
    if pd.notna(sd_a) and pd.notna(sd_b):
        return significantly_different(row["time_median_s_a"], sd_a, row["time_median_s_b"], sd_b)
    return ratio_of_medians(row["round_times_s_a"], row["round_times_s_b"])


def speedup_cell(row: pd.Series) -> str:
    """A ratio when both sides are ok; otherwise which side did what (never a number for a failed case)."""
    if row["status_a"] == "ok" and row["status_b"] == "ok":
        text = fmt_interval(row["speedup"], row["speedup_low"], row["speedup_high"])
        text += "" if row["significant"] else " (not significant)"
        return text + (" (unstable)" if row["unstable"] else "")
    if row["status_a"] == row["status_b"]:
        return f"both {row['status_a']}"
    return "; ".join(f"{s}: {row[f'status_{s}']}" for s in ("a", "b") if row[f"status_{s}"] != "ok")


def b_wins(row: pd.Series) -> bool | None:
    """Whether side b wins this case: surely faster when both ran, or the only one that ran; None when neither ran
    or the difference is not significant."""
    ok_a, ok_b = row["status_a"] == "ok", row["status_b"] == "ok"
    if ok_a and ok_b:
        return bool(row["speedup"] > 1) if row["significant"] else None
    if ok_a != ok_b and "unsupported" not in (row["status_a"], row["status_b"]):
        return ok_b
    return None


NO_CROSSOVER = "—"  # the runs differ significantly at too few of the line's batches to say


def crossover(line: pd.DataFrame) -> tuple[str, Any]:
    """Smallest batch from which b wins at every larger measured batch of this strategy's line. Said only where
    the runs differ significantly at most of the line's batches: a few significant differences on a line are what
    two runs of one machine show by chance (about one in twenty), not a crossover."""
    rows = line.sort_values("batch")
    decided = [(int(r["batch"]), w) for _, r in rows.iterrows() if (w := b_wins(r)) is not None]
    if len(decided) < max(2, (len(rows) + 1) // 2):
        return NO_CROSSOVER, None
    start = None
    for batch, win in reversed(decided):
        if not win:
            break
        start = batch
    if start is None:
        return f"never (a wins up to B={decided[-1][0]})", None
    if start == decided[0][0]:
        return f"b wins at every measured batch (B ≥ {start})", start
    return f"from B = {start}", start


def pair_sections(a: Side, b: Side, both: pd.DataFrame, plot_dir: Path) -> list[Section]:
    """Speedup tables, crossover and plot for one (a, b) pair, one section per (model, dtype, mode, quantity)."""
    sections = []
    for (model, dtype, mode, quantity), part in both.groupby(["model", "dtype", "mode", "quantity"]):
        where = f"{model} · {dtype}" + ("" if quantity == "jacobian" else f" · {quantity}") \
            + ("" if mode == "jacobian" else f" · {mode}")
        line = sweep_line(part, "batch")
        section = Section(f"{b.label} over {a.label} — {where}", [
            Block("text", text=f"Speedup = time on a ({a.label}, {a.device}) / time on b ({b.label}, {b.device}); "
                               "above 1× b is faster. A cell names the side whose case did not run ok.")])
        if len(line):
            name = f"speedup_vs_batch-{slug(a.label)}-vs-{slug(b.label)}-{slug(model)}-{slug(dtype)}" \
                + ("" if quantity == "jacobian" else f"-{slug(quantity)}") + ("" if mode == "jacobian" else
                                                                              f"-{slug(mode)}")
            fig = speedup_vs_batch(line, a.label, b.label, where)
            if fig is not None:
                section.blocks.append(figure_block(save(fig, plot_dir, name), f"{name}: speedup per strategy vs batch"))
            table = line.assign(cell=[speedup_cell(r) for _, r in line.iterrows()]).pivot_table(
                index="batch", columns="strategy", values="cell", aggfunc="first")
            table = table[strategy_order(line)].fillna("")
            table.columns.name = None
            section.blocks.append(table_block(table, f"speedup-{name}", index=True,
                                              caption=f"Speedup of {b.label} over {a.label} vs batch size "
                                                      f"({_fixed(line)})"))
            cross = [{"strategy": s, "crossover": crossover(rows)[0],
                      "speedup at smallest B": _at(rows, "first"), "speedup at largest B": _at(rows, "last")}
                     for s, rows in line.groupby("strategy")]
            cross_table = pd.DataFrame(cross).set_index("strategy").reindex(strategy_order(line))
            section.blocks.append(table_block(cross_table.reset_index(), f"cross-{name}",
                                              caption=f"Crossover: batch size from which {b.label} wins"))
        else:
            shapes = [sizes_id(r) for _, r in part.iterrows()]
            table = part.assign(shape=shapes, cell=[speedup_cell(r) for _, r in part.iterrows()])
            table = table.pivot_table(index="shape", columns="strategy", values="cell", aggfunc="first").fillna("")
            caption = f"Speedup of {b.label} over {a.label} per shape (no batch sweep)"
            tag = "" if quantity == "jacobian" else f"-{slug(quantity)}"
            section.blocks.append(table_block(table, f"speedup-{slug(model)}-{slug(dtype)}{tag}", index=True,
                                              caption=caption))
        sections.append(section)
    return sections


def _fixed(line: pd.DataFrame) -> str:
    return ", ".join(f"{a}={line[a].iloc[0]}" for a in ("hidden", "in_dim", "out_dim")
                     if not (a == "hidden" and line[a].iloc[0] == FIXED_HIDDEN))


def _at(rows: pd.DataFrame, end: str) -> str:
    row = rows.sort_values("batch").iloc[0 if end == "first" else -1]
    return f"B={row['batch']}: {speedup_cell(row)}"


def winners(sides: list[Side]) -> pd.DataFrame:
    """The verdict per shape on every side, next to each other (shapes measured by all sides)."""
    shape = SHAPE
    merged = None
    for side in sides:
        best = side.best
        best = best[shape].assign(**{f"fastest on {side.label}": [verdict_cell(r) for _, r in best.iterrows()],
                                     f"time on {side.label}": best["best_s"].map(fmt_time)})
        merged = best if merged is None else merged.merge(best, on=shape)
    return merged if merged is not None else pd.DataFrame()


def warnings_for(sides: list[Side]) -> list[str]:
    """Differences that make a speedup mean something else than the hardware: software versions, precision."""
    out = []
    for key, what in (("torch", "torch versions"), ("cuda", "CUDA versions"), ("tf32", "TF32 settings")):
        values = {s.label: s.run.env.get(key) for s in sides if s.run.env.get(key) is not None}
        if len({str(v) for v in values.values()}) > 1:
            out.append(f"{what} differ ({', '.join(f'{k}: {v}' for k, v in values.items())}): the speedups mix "
                       "software and hardware")
    dtypes = {s.label: sorted(set(s.frame["dtype"])) for s in sides}
    if len({tuple(v) for v in dtypes.values()}) > 1:
        out.append(f"dtypes differ ({', '.join(f'{k}: {v}' for k, v in dtypes.items())}): only matching cases compare")
    return out


def quantity_items(a: Side, b: Side, both: pd.DataFrame) -> list[tuple[str, str]]:
    """The speedup of each quantity apart: a Laplacian and a Jacobian can move differently between two sides."""
    items = []
    for quantity in sorted(set(both["quantity"]), key=quantity_rank):
        part = both[both["quantity"] == quantity]
        speed = part["speedup"].dropna()
        if len(speed):
            items.append((f"{b.label} over {a.label}, {quantity}",
                          f"{len(speed)} cases ok on both sides; median speedup {fmt_ratio(speed.median())} (range "
                          f"{fmt_ratio(speed.min())} – {fmt_ratio(speed.max())})" + _significance(part)))
    return items


def _significance(both: pd.DataFrame) -> str:
    ok = both["speedup"].notna()
    text = f"; {int((ok & ~both['significant']).sum())} of {int(ok.sum())} not significant (the 95% interval of " \
           "the speedup holds 1)"
    unstable = int((ok & both["unstable"]).sum())
    return text + (f"; {unstable} rely on a case timed under disturbance (unstable)" if unstable else "")


def pair_summary(a: Side, b: Side, both: pd.DataFrame) -> list[tuple[str, str]]:
    """What b against a means: the speedups (per quantity), on one machine how far the runs agree, the crossovers."""
    speed = both["speedup"].dropna()
    text = f"{len(both)} common cases, {len(speed)} ok on both sides"
    if len(speed):
        text += (f"; {b.label} faster on {int((speed > 1).sum())}; median speedup {fmt_ratio(speed.median())} "
                 f"(range {fmt_ratio(speed.min())} – {fmt_ratio(speed.max())})")
    items = [(f"{b.label} over {a.label}", text + _significance(both))]
    if set(both["quantity"]) != {"jacobian"}:
        items += quantity_items(a, b, both)
    if same_machine(a, b):
        items += rerun_agreement(a, b, both) + reproducibility(a, b)
    line = sweep_line(both, "batch") if len(both) else both
    found = [(f"crossover, {strategy}", crossover(rows)[0]) for strategy, rows in
             (line.groupby("strategy") if len(line) else [])]
    said = [(name, text) for name, text in found if text != NO_CROSSOVER]
    if found and not said:  # one line, not one dash per strategy
        said = [("crossover", "none: no strategy's batch line differs significantly between the two at most of its "
                              "batches")]
    return items + said


def build_compare(run_dirs: list[Path], out_root: Path = Path("results"), plots_root: Path = Path("plots")) -> Path:
    """Compare ≥ 2 sides (runs, or the devices of one run); returns the path of report.md (report.html beside it)."""
    if not run_dirs:
        raise ResultsError("compare needs at least 2 run folders (or one run with several devices)")
    runs = [load_run(Path(d)) for d in run_dirs]
    sides = sides_of(runs)
    if len(sides) < 2:
        raise ResultsError(f"compare needs at least 2 runs or devices, got {len(runs)} run(s) with device "
                           f"{sides[0].device if sides else '?'} only: give a second run folder")
    name = "compare-" + "-vs-".join(slug(s.label) for s in sides)
    plot_dir = Path(plots_root) / name
    a = sides[0]
    doc = Document(title=f"jacobench comparison — {' vs '.join(s.label for s in sides)}",
                   subtitle=f"baseline a = {a.label}; " + "; ".join(f"{s.label}: {s.device} of run {s.run.run_id}"
                                                                    for s in sides),
                   warnings=warnings_for(sides) + [w for r in runs for w in r.warnings])
    env = {s.label: {**s.run.env, "devices": {s.device: (s.run.env.get("devices") or {}).get(s.device, s.device)}}
           for s in sides}
    doc.sections.append(Section("Environments", [table_block(env_table(env), "envs")]))
    summary = Section("What this means")
    pair_parts = []
    for b in sides[1:]:
        both, notes = join(a, b)
        doc.warnings += notes
        summary.blocks.append(Block("bullets", items=pair_summary(a, b, both)))
        pair_parts += pair_sections(a, b, both, plot_dir)
    doc.sections += [summary, *pair_parts]
    win = winners(sides)
    measured = sorted(set(win["quantity"]), key=quantity_rank) if len(win) else []
    for quantity in measured:  # a Jacobian comparison has one section, as before the QUANTITY axis
        split = measured != ["jacobian"]
        mine = win[win["quantity"] == quantity].drop(columns="quantity")
        doc.sections.append(Section("Fastest autodiff strategy per shape, side by side"
                                    + (f" — {quantity_title(quantity)}" if split else ""),
                                    [table_block(mine, f"winners-{quantity}" if split else "winners")]))
    only = {s.label: sorted(set(s.frame["strategy"]) - set.intersection(*(set(t.frame["strategy"]) for t in sides)))
            for s in sides}
    if any(only.values()):
        doc.sections.append(Section("Not on every side", [Block("bullets", items=[
            (label, ", ".join(names)) for label, names in only.items() if names])]))
    return render(doc, Path(out_root) / name)
