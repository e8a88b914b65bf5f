"""One run -> results/<id>/report.md + report.html (+ tables/*.csv|md|html, plots/<id>/*.png).

The report is a `Document` (sections of text, bullet, table and figure blocks) rendered by two Jinja2 templates
(bench/templates/report.{md,html}.j2); compare.py builds its own Document and reuses `render`. Every string that
comes from result files goes through escaping: HTML autoescape, and Markdown escaping of '<', '>', '&' and '|'.
The HTML is self-contained: plots are embedded as data URIs, styles are inline, nothing is fetched.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

from bench import aggregate as agg
from bench.aggregate import Run, fmt_ratio, fmt_time, load_run, where_label
from bench.plots import plot_run, slug
from bench.recommend import leave_one_out
from bench.results import atomic_write_text
from bench.schema import FAILED

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Block:
    """One piece of a section. kind: "text", "bullets" ([(label, text)]), "warning", "table", "figure", "links"."""

    kind: str
    text: str = ""
    items: list[Any] = field(default_factory=list)
    md: Markup = Markup("")  # pre-rendered, already escaped (tables)
    html: Markup = Markup("")
    image: Path | None = None


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return slug(self.title).lower()


@dataclass
class Document:
    title: str
    subtitle: str = ""
    warnings: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


def table_block(table: pd.DataFrame, name: str, highlight: pd.DataFrame | None = None, index: bool = False,
                caption: str = "") -> Block:
    """A table rendered once for each format (escaped in both)."""
    return Block("table", text=caption, md=Markup(agg.to_markdown(table, index=index)),
                 html=Markup(agg.to_html(table, name, highlight=highlight, index=index)))


def figure_block(path: Path, caption: str) -> Block:
    return Block("figure", text=caption, image=path)


def render(doc: Document, out_dir: Path) -> Path:
    """Write out_dir/report.md and out_dir/report.html from the templates; returns the path of report.md."""
    import jinja2

    def md_links(path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()

    def data_uri(path: Path) -> str:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    loader = jinja2.FileSystemLoader(TEMPLATES)
    html_env = jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                  undefined=jinja2.StrictUndefined)
    md_env = jinja2.Environment(loader=loader, autoescape=False, trim_blocks=True, lstrip_blocks=True,
                                undefined=jinja2.StrictUndefined,
                                finalize=lambda v: v if isinstance(v, Markup) else agg.md_escape(v))
    for env in (html_env, md_env):
        env.filters.update(relpath=md_links, data_uri=data_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.html", html_env.get_template("report.html.j2").render(doc=doc))
    atomic_write_text(out_dir / "report.md", md_env.get_template("report.md.j2").render(doc=doc))
    return out_dir / "report.md"


# ---- the run report ----------------------------------------------------------------------------------------------

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


def summary_items(part: pd.DataFrame) -> list[tuple[str, str]]:
    """The "what this means" bullets for one (model, device, dtype) setting."""
    best = agg.best_per_shape(part)
    items = []
    for label, rows in regimes(best):
        won = rows[rows["winner"] != "none"]
        if won.empty:
            items.append((label, f"no valid strategy on any of {len(rows)} shapes"))
            continue
        counts = won["winner"].value_counts()
        text = f"{counts.index[0]} (fastest on {counts.iloc[0]}/{len(rows)} shapes"
        text += f"; then {counts.index[1]} on {counts.iloc[1]})" if len(counts) > 1 else ")"
        items.append((f"fastest, {label}", text))
    jf = best["jf_best"].dropna()
    if len(jf):
        items.append(("J/F of the best", f"one Jacobian costs a median {fmt_ratio(jf.median())} forward passes "
                                         f"(range {fmt_ratio(jf.min())} – {fmt_ratio(jf.max())})"))
    vs = best["vs_analytic"].dropna()
    if len(vs):
        items.append(("best autodiff vs analytic", f"the fastest autodiff strategy takes a median "
                      f"{fmt_ratio(vs.median())} the closed-form (analytic) time; worst {fmt_ratio(vs.max())} "
                      f"({len(vs)} shapes)"))
    elif (part["strategy"] == "analytic").any():
        items.append(("best autodiff vs analytic", "analytic has no valid measurement here (e.g. unsupported model)"))
    odd = part[part["valid"] & part["jf_ratio"].lt(0.9)]
    if len(odd):  # a Jacobian call includes a forward pass: J/F < 1 means one of the two timings is off
        items.append(("check the timings", f"{len(odd)} cases time a Jacobian below one forward pass (J/F < 1), "
                                           "impossible since the call includes the forward: the machine was busy or "
                                           "the forward timing is noisy; rerun those shapes"))
    not_j = part[~part["computes_j"]]
    for strategy, rows in not_j.groupby("strategy"):
        items.append(("not the Jacobian", f"{strategy} returns the sum over outputs at out > 1 ({len(rows)} cases): "
                                          "shown for reference, never a winner"))
    wrong = part[part["status"] == "wrong"]["strategy"].value_counts()
    if len(wrong):
        where = " (the model couples samples)" if part["coupled"].any() else ""
        items.append(("silently wrong" + where, ", ".join(f"{s} ({n})" for s, n in wrong.items())))
    failed = part[part["status"].isin(FAILED)]
    if len(failed):
        by = failed.groupby(["status", "strategy"]).size()
        text = "; ".join(f"{st}: " + ", ".join(f"{s} ({n})" for (_, s), n in by[by.index.get_level_values(0) == st]
                                                 .items()) for st in by.index.get_level_values(0).unique())
        items.append(("failed or skipped", text))
    loo = leave_one_out(part)
    if loo["n"]:
        text = (f"median regret {fmt_ratio(loo['median'])}, 90th percentile {fmt_ratio(loo['p90'])} over {loo['n']} "
                f"shapes (time of the pick / measured best; it picked the best on {loo['best_picks']})")
        items.append(("recommend, leave-one-out", text + (f"; {loo['failed']} picks failed" if loo["failed"] else "")))
    return items


READING = (
    "time: median of one full fn(model, x) call (forward included), validated first against a float64 reference. "
    "J/F: that time over the forward pass model(x) alone. × best: over the fastest valid strategy of the same shape. "
    "A case that is not ok shows its status instead of a number: wrong (validation failed, silently incorrect), oom, "
    "over_budget (not run: predicted over the memory budget), timeout, skipped (not run: a smaller shape timed out or "
    "ran out of memory), unsupported, error. "
    "Strategies returning the sum over outputs are not the Jacobian when out > 1 and never count as fastest."
)


def run_header(env: dict[str, Any]) -> str:
    """"grid quick · cpu · float32 · 2 threads · torch 2.14.1 — ": what was run, before any number."""
    grid = env.get("grid") if isinstance(env.get("grid"), dict) else {}
    fingerprint = env.get("fingerprint") if isinstance(env.get("fingerprint"), dict) else {}
    parts = [f"grid {grid['name']}" if grid.get("name") else "",
             ", ".join(fingerprint.get("devices") or []),
             ", ".join(fingerprint.get("dtypes") or []),
             f"{env['threads']} threads" if env.get("threads") else "",
             f"torch {env['torch']}" if env.get("torch") else ""]
    text = " · ".join(p for p in parts if p)
    return f"{text} — " if text else ""


def _of_planned(run: Run) -> str:
    planned = run.env.get("planned_cases")
    return f" of {planned} planned" if isinstance(planned, int) else ""


def completeness(run: Run) -> list[str]:
    """A warning when the run holds fewer cases than it planned (interrupted, killed, or crashed)."""
    planned = run.env.get("planned_cases")
    if not isinstance(planned, int) or len(run.frame) >= planned:
        return []
    how = "interrupted (Ctrl-C)" if run.env.get("interrupted") else "stopped before the end (killed or crashed)"
    return [f"{planned - len(run.frame)} of {planned} planned cases are missing: the run was {how}; "
            f"`make bench RUN={run.run_id} RESUME=1` (same settings) measures the rest"]


def run_document(run: Run, figures: dict[str, Path], tables_dir: Path) -> Document:
    """All sections of a run report; also writes the tables into tables_dir."""
    frame = run.frame
    doc = Document(title=f"jacobench report — {run.run_id}", warnings=list(run.warnings) + completeness(run),
                   subtitle=f"{run_header(run.env)}{len(frame)} cases{_of_planned(run)}, "
                            f"{frame['strategy'].nunique()} strategies, "
                            f"{frame[agg.SHAPE].drop_duplicates().shape[0]} shapes × settings")
    env = Section("Environment", [table_block(env_table({"value": run.env}).rename(columns={"": "key"}), "env")])
    if not run.env:
        env.blocks = [Block("warning", text="env.json is missing: machine and versions unknown")]
    doc.sections.append(env)

    meaning = Section("What this means")
    for key, part in agg.groups(frame):
        meaning.blocks += [Block("text", text=where_label(key, run.env)), Block("bullets", items=summary_items(part))]
    doc.sections.append(meaning)

    best = agg.best_table(frame)
    agg.write_table(best, tables_dir, "best", numbers=agg.best_per_shape(frame))
    doc.sections.append(Section("Fastest valid strategy per shape", [
        Block("text", text=READING),
        table_block(best, "best"),
    ]))

    for key, part in agg.groups(frame):
        tag = "-".join(slug(k) for k in (key[1], key[0], key[2]))
        section = Section(f"Sweeps — {where_label(key, run.env)}")
        for axis in agg.AXES:
            name = f"time_vs_{axis}-{tag}"
            if name in figures:
                section.blocks.append(figure_block(figures[name], f"{name}: median time per call vs "
                                                                  f"{agg.AXIS_LABEL[axis]}, log-log"))
            table, mask = agg.pivot(part, axis, "time_median_s", fmt_time)
            if len(table):
                agg.write_table(table, tables_dir, f"time_vs_{axis}-{tag}", highlight=mask, index=True)
                section.blocks.append(table_block(table, f"time_vs_{axis}-{tag}", highlight=mask, index=True,
                                                  caption=f"Time per call vs {agg.AXIS_LABEL[axis]} "
                                                          "(bold: fastest valid)"))
        for kind, caption in (("jf_ratio_vs_batch", "Jacobian time / forward time vs batch size"),
                              ("memory_vs_batch", "peak memory of one call vs batch size"),
                              ("winner_map", "fastest valid strategy over the in × out plane"),
                              ("coupled_status", "validation status per strategy on a model that couples samples")):
            if f"{kind}-{tag}" in figures:
                section.blocks.append(figure_block(figures[f"{kind}-{tag}"], f"{kind}-{tag}: {caption}"))
        table, mask = agg.pivot(part, "batch", "jf_ratio", fmt_ratio)
        if len(table):
            agg.write_table(table, tables_dir, f"jf_ratio_vs_batch-{tag}", index=True)
            section.blocks.append(table_block(table, f"jf-{tag}", highlight=mask, index=True,
                                              caption="J/F ratio vs batch size (bold: fastest valid)"))
        if len(section.blocks):
            doc.sections.append(section)

    coupled = agg.coupled_table(frame)
    if len(coupled):
        agg.write_table(coupled, tables_dir, "coupled")
        doc.sections.append(Section("Models that couple samples", [
            Block("text", text="Output row b depends on other rows (e.g. BatchNorm in training mode): strategies that "
                               "assume independent samples return a wrong Jacobian without any error."),
            table_block(coupled, "coupled")]))

    status = agg.status_table(frame)
    agg.write_table(status, tables_dir, "status")
    doc.sections.append(Section("Status of every case", [table_block(status, "status")]))
    doc.sections.append(Section("Strategies", [table_block(strategies_table(frame), "strategies")]))

    cases = agg.write_table(agg.cases_table(frame), tables_dir, "cases", numbers=agg.cases_numbers(frame))
    doc.sections.append(Section("All cases", [Block("links", items=[
        ("every case (Markdown)", cases["md"]), ("every case (CSV, seconds and bytes)", cases["csv"]),
        ("every case (HTML)", cases["html"])])]))
    return doc


def strategies_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name in agg.strategy_order(frame["strategy"]):
        first = frame[frame["strategy"] == name].iloc[0]
        rows.append({"strategy": name, "returns": first["returns"] or "—", "what it does": first["summary"] or "—",
                     "cost": first["cost"] or "—"})
    return pd.DataFrame(rows)


def build_report(run_dir: Path, plots_root: Path = Path("plots")) -> Path:
    """Tables, plots and report.md/html for one run folder; returns the path of report.md (report.html beside it)."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    figures = plot_run(run, Path(plots_root) / run.run_id)
    doc = run_document(run, figures, run_dir / "tables")
    return render(doc, run_dir)
