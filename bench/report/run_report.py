"""One run -> results/<id>/report.md + report.html, tables/<name>.csv|md|html, and its plots.

`run_document` builds the report (a `bench.document.Document`) and lists the tables it shows, writing nothing;
`build_report` draws the plots, writes the tables and renders the document.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench import fidelity, stack_depth
from bench.report import peers
from bench.report.answer import answer_rows, answer_table, autotune_line
from bench.report.best import best_per_shape
from bench.report.document import Block, Document, Section, figure_block, render, table_block
from bench.report.environment import environment_section
from bench.report.findings import summary_items
from bench.report.formats import table_paths, write_table
from bench.report.frames import (
    LoadedRun,
    Setting,
    groups,
    load_run,
    quantities,
    quantity_title,
    setting_tag,
    where_label,
)
from bench.report.missing import missing_lines
from bench.report.plots import plot_run
from bench.report.tables import (
    best_table,
    cases_numbers,
    cases_table,
    compile_table,
    coupled_table,
    pivot,
    published_table,
    status_table,
    strategies_table,
    training_table,
)
from bench.report.texts import (
    ANSWER,
    ANSWER_SECOND_ORDER,
    AUTOTUNE,
    COMPILING,
    COUPLED,
    FOLD_ROWS,
    PINN_STEP,
    PUBLISHED,
    READING,
    TRAIN_TITLE,
    TRAINING,
    VERDICTS,
)
from bench.results import plots_dir, read_json, write_json
from bench.schema import (
    AXES,
    AXIS_LABEL,
    SETTING,
    SHAPE_COLUMNS,
    STATUS_MEANING,
    STATUSES,
    fmt_ratio,
    fmt_time,
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


def _of_planned(run: LoadedRun) -> str:
    planned = run.env.get("planned_cases")
    return f" of {planned} planned" if isinstance(planned, int) else ""


def run_warnings(run: LoadedRun) -> list[str]:
    """Warnings a reader must see first: cases missing from the plan, timings taken under disturbance."""
    out = []
    planned = run.env.get("planned_cases")
    if isinstance(planned, int) and len(run.frame) < planned:
        how = "interrupted (Ctrl-C)" if run.env.get("interrupted") else "stopped before the end (killed or crashed)"
        out.append(f"{planned - len(run.frame)} of {planned} planned cases are missing: the run was {how}; "
                   f"`make bench RUN={run.run_id} RESUME=1` (same settings) measures the rest")
    ok = run.frame["status"] == "ok"
    unstable = int((ok & run.frame["unstable"]).sum())
    if unstable:
        out.append(f"{unstable} of {int(ok.sum())} ok cases were timed while the machine was disturbed (other "
                   "processes on the CPUs, stolen or slow CPU time) and stayed so after waiting and, where the run "
                   "has one, in a second process: they are marked unstable; rerun on a quiet machine before trusting "
                   "them")
    checked = run.env.get("fidelity") or {}
    off, _ = fidelity.judged(checked)
    if off:  # one warning: the strategies whose run/fresh interval lies wholly past ±10%
        named = ", ".join(f"{n} {fidelity.interval_text(checked['strategies'][n])}" for n in off)
        out.append(f"the run's numbers of {named} are surely more than {fidelity.TARGET:.0%} from what the same call "
                   "costs in a fresh process (torch.utils.benchmark.Timer; run/fresh with its 95% interval)")
    return out + missing_lines(run.frame, run.playoffs)


@dataclass
class TableFile:
    """A table the report shows, also written as tables/<name>.csv|md|html (the CSV holds `numbers` when given)."""

    name: str
    table: pd.DataFrame
    numbers: pd.DataFrame | None = None
    highlight: pd.DataFrame | None = None
    index: bool = False


@dataclass
class Tables:
    """The tables of one report: each shown in the document, each written once the document is built."""

    folder: Path
    files: list[TableFile] = field(default_factory=list)

    def show(self, name: str, table: pd.DataFrame, caption: str = "", **kwargs: Any) -> Block:
        item = TableFile(name, table, **kwargs)
        self.files.append(item)
        return table_block(table, name, highlight=item.highlight, index=item.index, caption=caption)

    def write(self, name: str, table: pd.DataFrame, numbers: pd.DataFrame | None = None) -> None:
        """A table written as tables/<name>.* but not shown in the document (e.g. best.csv of every quantity)."""
        self.files.append(TableFile(name, table, numbers))

    def paths(self, name: str) -> dict[str, Path]:
        return table_paths(self.folder, name)


def run_document(run: LoadedRun, figures: dict[str, Path], tables: Tables) -> Document:
    """All sections of a run report; the tables it shows are listed in `tables`, nothing is written.

    The answer comes first (which strategy to use, per model and regime, and the figures behind it), then the per
    shape verdicts and the findings; the long lists (bullets per setting, sweeps, statuses, environment) come after,
    folded in HTML.
    """
    frame = run.frame
    doc = Document(title=f"jacobench report — {run.run_id}", warnings=list(run.warnings) + run_warnings(run),
                   subtitle=f"{run_header(run.env)}{len(frame)} cases{_of_planned(run)}, "
                            f"{frame['strategy'].nunique()} strategies, "
                            f"{frame[SHAPE_COLUMNS].drop_duplicates().shape[0]} shapes × settings")
    best = best_per_shape(frame, run.playoffs)
    measured = quantities(frame)
    split = measured != ["jacobian"]  # second order measured: each quantity gets its own answer and verdicts
    above = [name for name, _ in answer_figures(frame, figures)]  # embedded once, in the answer
    answers = answer_rows(frame, run.playoffs)
    for n, quantity in enumerate(measured):
        doc.sections.append(answer_section(run, figures, tables, above, answers, quantity, split, first=n == 0))
    for quantity in measured:
        mine = best[best["quantity"] == quantity]
        title = "Fastest autodiff strategy per shape" + (f" — {quantity_title(quantity)}" if split else "")
        doc.sections.append(Section(title, [
            Block("text", text=READING), Block("text", text=VERDICTS),
            tables.show(f"best-{quantity}" if split else "best", best_table(mine), numbers=mine)]))
    if split:  # best.csv and answer.csv hold every shape and regime, of every quantity
        tables.write("best", best_table(best), numbers=best)
        tables.write("answer", answer_table(answers)[0], numbers=answers)
    doc.sections.append(meaning_section(run, best))
    for key, part in groups(frame):
        section = sweep_section(key, part, run.env, {k: v for k, v in figures.items() if k not in above}, tables,
                                above)
        if section.blocks:
            doc.sections.append(section)
    doc.sections += extra_sections(frame, run.env, best, measured, tables)
    doc.sections += peers_sections(frame, run.env, tables)
    doc.sections += closing_sections(run, frame, tables)
    return doc


def extra_sections(frame: pd.DataFrame, env: dict[str, Any], best: pd.DataFrame, measured: list[str], tables: Tables
                   ) -> list[Section]:
    """The sections a grid has only when it measured them: published shapes, compiling, training, coupled models."""
    sections = []
    for title, name, table, intro in (
            ("Published results, reproduced", "published", published_table(frame, env), PUBLISHED),
            ("Compiling: when it pays", "compile", compile_table(frame), COMPILING),
            *((TRAIN_TITLE.get(q, "Training"), "training" if q == "jacobian" else f"training-{q}",
               training_table(best, q), TRAINING if q == "jacobian" else PINN_STEP) for q in measured),
            ("Models that couple samples", "coupled", coupled_table(frame), COUPLED)):
        if len(table):  # a table longer than a screen is folded
            sections.append(Section(title, [Block("text", text=intro), tables.show(name, table)],
                                    folded=len(table) > FOLD_ROWS))
    return sections


def peers_sections(frame: pd.DataFrame, env: dict[str, Any], tables: Tables) -> list[Section]:
    """PyTorch against another framework on the same weights (bench/report/peers.py), when the run has peers."""
    if not peers.has_peers(frame):
        return []
    rows = peers.peer_rows(frame, peers.pooled_ratio_variance(env))
    if rows.empty:
        return []
    names = ", ".join(dict.fromkeys(rows["peer"]))
    blocks = [Block("text", text=peers.INTRO.format(peer=names))]
    items = peers.batch_items(rows)
    if items:
        blocks.append(Block("bullets", items=items))
    blocks.append(tables.show("peers", peers.peers_table(rows), numbers=rows))
    return [Section(f"PyTorch and its peers ({names})", blocks)]


def closing_sections(run: LoadedRun, frame: pd.DataFrame, tables: Tables) -> list[Section]:
    """Folded reference material: every status, the strategies, the environment, the links to every case."""
    present = set(frame["status"])
    tables.show("cases", cases_table(frame), numbers=cases_numbers(frame))
    cases = tables.paths("cases")
    return [
        Section("Status of every case", [
            Block("bullets", items=[(s, STATUS_MEANING[s]) for s in STATUSES if s in present]),
            tables.show("status", status_table(frame))], folded=True),
        Section("Strategies", [table_block(strategies_table(frame), "strategies"),
                               *stack_depth_blocks(set(frame["strategy"]))], folded=True),
        environment_section(run.env),
        Section("All cases", [Block("links", items=[
            ("every case (Markdown)", cases["md"]), ("every case (CSV, seconds and bytes)", cases["csv"]),
            ("every case (HTML)", cases["html"])])])]


def stack_depth_blocks(measured: set[str]) -> list[Block]:
    """What the caller's stack depth costs the strategies of this run that it moves, from the committed reference
    table (bench/stack_depth.py): a training step in a framework calls the Jacobian 50 or more frames deep."""
    table = stack_depth.load_reference()
    lines = [text for name in sorted(measured) if (text := stack_depth.advice_for(name, table))]
    if not lines:
        return []
    machine = table.get("machine", {})
    intro = (f"The depth of the Python stack a call is made from moves some strategies' cost (measured with `python -m "
             f"bench depth` on {machine.get('cpu_model', 'the reference machine')}, torch {machine.get('torch', '?')}, "
             f"{table.get('measured', '')}; this run timed every call from a shallow stack, as a plain program would):")
    return [Block("text", text=intro), Block("bullets", items=[("stack depth", line) for line in lines])]


def answer_section(run: LoadedRun, figures: dict[str, Path], tables: Tables, shown: list[str],
                   answers: pd.DataFrame, quantity: str = "jacobian", split: bool = False, first: bool = True
                   ) -> Section:
    """The first screen: which strategy to use, per model and regime, with the code to paste; then the winner map
    and the time-vs-batch plot of each device's most measured setting. With `split` (a run that measured second
    order), one such section per quantity."""
    rows = answers[answers["quantity"] == quantity].reset_index(drop=True)
    devices = run.env.get("devices") if isinstance(run.env.get("devices"), dict) else {}
    table, shared = answer_table(rows, devices)
    what = "" if quantity == "jacobian" else f" for the {quantity.capitalize()}"
    section = Section("Which strategy to use" + (f" — {quantity_title(quantity)}" if split else ""), [
        tables.show(f"answer-{quantity}" if split else "answer", table, numbers=rows,
                    highlight=column_mask(table, "use"),
                    caption=f"{shared}: the valid autodiff strategy{what} that wins or ties on the most measured "
                            "shapes of each batch range"),
        Block("note", text=ANSWER if quantity == "jacobian" else ANSWER_SECOND_ORDER),
        *([Block("note", text=checked)] if first and (checked := fidelity.summary_line(run.env.get("fidelity")))
          else []),
        Block("text", text=AUTOTUNE),
        Block("code", text=autotune_line(quantity))])
    mine = [name for name in shown if quantity_of_plot(name) == quantity]
    if mine:
        captions = dict(answer_figures(run.frame, figures))
        section.blocks.append(Block("figures", items=[(figures[name], captions[name]) for name in mine]))
    return section


def quantity_of_plot(name: str) -> str:
    """The quantity a plot of one setting draws (its tag ends in -hessian or -laplacian, then -train if so)."""
    tag = name.removesuffix("-train")
    return next((q for q in ("hessian", "laplacian") if tag.endswith(f"-{q}")), "jacobian")


def column_mask(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """A highlight mask that marks one column."""
    return pd.DataFrame({c: [c == column] * len(table) for c in table.columns}, index=table.index)


def answer_figures(frame: pd.DataFrame, figures: dict[str, Path]) -> list[tuple[str, str]]:
    """(plot name, caption): per device and quantity, the winner map and the time-vs-batch plot of the setting with
    the most shapes that has them."""
    shapes = frame.groupby(SETTING)[AXES].apply(lambda rows: len(rows.drop_duplicates()))
    out: list[tuple[str, str]] = []
    for device, quantity in dict.fromkeys((key[1], key[4]) for key, _ in groups(frame)):
        keys = sorted((key for key, _ in groups(frame) if (key[1], key[4]) == (device, quantity)),
                      key=lambda k: -shapes.get(k, 0))
        for kind, caption in (("winner_map", "fastest valid strategy over the in × out plane"),
                              ("time_vs_batch", "median time per call vs batch size, log-log")):
            name = next((f"{kind}-{setting_tag(k)}" for k in keys if f"{kind}-{setting_tag(k)}" in figures), None)
            if name:
                out.append((name, f"{name}: {caption}"))
    return out


def meaning_section(run: LoadedRun, best: pd.DataFrame) -> Section:
    """The findings of each setting as bullets (bench/report/findings.py), folded: the answer table says it first."""
    section = Section("What this means", folded=True)
    for key, part in groups(run.frame):
        best_part = best[(best[SETTING] == list(key)).all(axis=1)]
        section.blocks += [Block("text", text=where_label(key, run.env)),
                           Block("bullets", items=summary_items(part, best_part))]
    return section


FIGURES = (("jf_ratio_vs_batch", "Jacobian time / forward time vs batch size"),
           ("memory_vs_batch", "peak memory of one call vs batch size"),
           ("memory_vs_time", "peak memory against time at the largest batch, with the Pareto front"),
           ("winner_map", "fastest valid strategy over the in × out plane"),
           ("coupled_status", "validation status per strategy on a model that couples samples"))


def sweep_section(key: Setting, part: pd.DataFrame, env: dict[str, Any], figures: dict[str, Path],
                  tables: Tables, shown_above: list[str] = ()) -> Section:
    """Plots and tables of one (model, device, dtype) setting: time along each swept axis, J/F, memory, winners.
    A plot in `shown_above` is drawn under "Which strategy to use" and only named here."""
    tag = setting_tag(key)
    section = Section(f"Sweeps — {where_label(key, env)}", folded=True, short=f"sweeps {tag}")
    section.blocks += [Block("text", text=f"{name}: drawn above, under \"Which strategy to use\"")
                       for name in shown_above if name.endswith(f"-{tag}")]
    for axis in AXES:
        name = f"time_vs_{axis}-{tag}"
        if name in figures:
            section.blocks.append(figure_block(figures[name], f"{name}: median time per call vs {AXIS_LABEL[axis]}, "
                                                              "log-log"))
        table, mask = pivot(part, axis, "time_median_s", fmt_time)
        if len(table):
            section.blocks.append(tables.show(name, table, highlight=mask, index=True,
                                              caption=f"Time per call vs {AXIS_LABEL[axis]} (bold: fastest valid)"))
    for kind, caption in FIGURES:
        if f"{kind}-{tag}" in figures:
            section.blocks.append(figure_block(figures[f"{kind}-{tag}"], f"{kind}-{tag}: {caption}"))
    table, mask = pivot(part, "batch", "jf_ratio", fmt_ratio)
    if len(table):
        section.blocks.append(tables.show(f"jf_ratio_vs_batch-{tag}", table, highlight=mask, index=True,
                                          caption="J/F ratio vs batch size (bold: fastest valid)"))
    return section


def build_report(run_dir: Path, plots_root: Path | None = None) -> Path:
    """Plots, tables and report.md/html for one run folder; returns the path of report.md (report.html beside it).
    Plots go to plots_root/<run-id>, by default where `results.plots_dir` puts them."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    figures = plot_run(run, Path(plots_root) / run.run_id if plots_root else plots_dir(run_dir))
    tables = Tables(run_dir / "tables")
    doc = run_document(run, figures, tables)
    for t in tables.files:
        write_table(t.table, tables.folder, t.name, numbers=t.numbers, highlight=t.highlight, index=t.index)
    return render(doc, run_dir)


def write_report(run_dir: Path) -> Path:
    """build_report, and the seconds it took in env.json's phases (what `make plan` learns the report's cost from)."""
    started = time.perf_counter()
    path = build_report(run_dir)
    env_path = Path(run_dir) / "env.json"
    env = read_json(env_path) if env_path.exists() else None
    if isinstance(env, dict):
        env.setdefault("phases", {})["report"] = round(time.perf_counter() - started, 2)
        write_json(env_path, env)
    return path
