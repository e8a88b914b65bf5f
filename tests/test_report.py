"""The run report, checked structurally on a synthetic run folder: contents, plots, escaping, self-containment."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from run_fixtures import BASE, STRATEGIES, make_run, record

from bench import stats
from bench.report import frames
from bench.report.run_report import build_report
from bench.results import ResultsError, append_case, append_line
from bench.schema import AXES, VerdictRecord, fmt_ratio, slug

EVIL = "<script>alert(1)</script>"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_report without drawing (seconds of matplotlib): for tests of tables and text; `built` checks the plots."""
    from bench.report import run_report

    monkeypatch.setattr(run_report, "plot_run", lambda run, folder: {})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    run = make_run(root / "results", "synth", extra_strategy=EVIL)
    md = build_report(run, root / "plots")
    return {"run": run, "html": md.with_suffix(".html"), "md": md, "plots": root / "plots" / "synth"}


def test_report_files_are_written(built: dict[str, Path]) -> None:
    assert built["md"] == built["run"] / "report.md"
    assert built["md"].is_file() and built["html"].is_file()
    for name in ("best", "status", "cases", "coupled", "time_vs_batch-cpu-mlp-float32"):
        for ext in ("csv", "md", "html"):
            assert (built["run"] / "tables" / f"{name}.{ext}").is_file(), f"{name}.{ext}"
    assert not list(built["run"].rglob("*.tmp")), "atomic writes leave no temporary file"


def test_every_strategy_appears(built: dict[str, Path]) -> None:
    md, html = built["md"].read_text(), built["html"].read_text()
    for name in STRATEGIES:
        assert name in md and name in html, name


def test_every_plot_is_a_png_and_linked(built: dict[str, Path]) -> None:
    import matplotlib.image

    expected = {f"time_vs_{axis}-{dev}-mlp-float32" for axis in AXES for dev in ("cpu", "cuda")}
    expected |= {f"{kind}-{dev}-mlp-float32" for kind in ("jf_ratio_vs_batch", "memory_vs_batch", "winner_map")
                 for dev in ("cpu", "cuda")}
    expected.add("coupled_status-cpu-mlp_batchnorm-float32")
    found = {p.stem for p in built["plots"].glob("*.png")}
    assert expected <= found
    md = built["md"].read_text()
    for path in built["plots"].glob("*.png"):
        assert path.read_bytes()[:8] == PNG
        assert matplotlib.image.imread(path).shape[0] > 100
        link = re.search(rf"\]\(([^)]*{re.escape(path.name)})\)", md)
        assert link, f"{path.name} not linked from report.md"
        assert (built["md"].parent / link.group(1)).resolve() == path.resolve()


def test_html_is_self_contained(built: dict[str, Path]) -> None:
    html = built["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"<link\b", html, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", html, re.I)
    assert "<script" not in html.lower()
    assert html.count("data:image/png;base64,") == len(list(built["plots"].glob("*.png")))


def test_strategy_names_are_escaped(built: dict[str, Path]) -> None:
    html, md = built["html"].read_text(), built["md"].read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert EVIL not in md and "&lt;script>alert(1)&lt;/script>" in md
    for table in (built["run"] / "tables").glob("*.html"):
        assert EVIL not in table.read_text(), table.name


def _md_rows(path: Path) -> list[dict[str, str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return [dict(zip(split[0], row, strict=True)) for row in split[2:]]


def test_failed_rows_never_show_a_time(built: dict[str, Path]) -> None:
    rows = _md_rows(built["run"] / "tables" / "cases.md")
    statuses = {r["status"] for r in rows}
    assert {"ok", "wrong", "timeout", "over_budget", "oom", "error", "unsupported"} <= statuses
    for row in rows:
        if row["status"] != "ok":
            for col in ("time", "IQR", "J/F", "peak memory"):
                assert row[col] == row["status"], row
    numbers = pd.read_csv(built["run"] / "tables" / "cases.csv")
    failed = numbers[numbers["status"] != "ok"]
    assert failed[["time_median_s", "time_iqr_s", "jf_ratio", "vs_best", "peak_memory_bytes"]].isna().all().all()
    pivot = _md_rows(built["run"] / "tables" / "time_vs_batch-cpu-mlp_batchnorm-float32.md")
    assert {r["jacobian_sum"] for r in pivot} == {"wrong"}


def test_output_sum_is_flagged_and_never_a_winner(built: dict[str, Path]) -> None:
    md = built["md"].read_text()
    assert frames.NOT_J in (built["run"] / "tables" / "cases.md").read_text()
    assert "not the Jacobian" in md
    best = pd.read_csv(built["run"] / "tables" / "best.csv")
    assert not ((best["fastest"] == "grad_summed") & (best["out_dim"] > 1)).any()
    assert ((best["fastest"] == "grad_summed") & (best["out_dim"] == 1)).any(), "at out == 1 it is the Jacobian"


def _at(table: pd.DataFrame, shape: dict[str, int], device: str = "cpu") -> pd.Series:
    (row,) = [r for _, r in table.iterrows() if r["device"] == device and r["model"] == "mlp"
              and all(r[k] == v for k, v in shape.items())]
    return row


def _tied(row: pd.Series) -> list[str]:
    return str(row["tied_with"]).split("|") if isinstance(row["tied_with"], str) and row["tied_with"] else []


def test_every_shape_has_a_verdict_by_the_tie_rule(built: dict[str, Path]) -> None:
    """The best table's verdicts, from first timings here (the synthetic run has no verdicts.jsonl): the fastest
    valid autodiff strategy, a tie exactly where a runner-up's interval reaches down to the tie margin."""
    best = pd.read_csv(built["run"] / "tables" / "best.csv", keep_default_na=False)
    run_shapes = {(r.device, r.model, *(getattr(r, a) for a in AXES)) for r in frames.load_run(built["run"]).frame
                  .itertuples()}
    assert len(best) == len(run_shapes) > 0
    decided = best[best["fastest"] != ""]
    assert len(decided) == len(best) - (best["n_valid"] == 0).sum() > 0
    for _, row in decided.iterrows():
        assert row["verdict"] in ("winner", "tie"), row
        assert (row["verdict"] == "tie") == bool(_tied(row)) == (float(row["runner_up_ratio_low"]) <= stats.TIE_MARGIN)
        assert row["fastest"] not in _tied(row) and row["runner_up"]
    base = _at(decided, BASE)
    assert (base["fastest"], base["verdict"], _tied(base)) == ("vmap_jacrev", "tie", ["vmap_jacfwd"])  # 1.4% apart
    wide = _at(decided, {**BASE, "out_dim": 64})
    assert (wide["fastest"], wide["verdict"], wide["runner_up"]) == ("vmap_jacfwd", "winner", "vmap_jacrev")  # ×2.9
    section = built["md"].read_text().split("## Fastest autodiff strategy per shape", 1)[1].split("\n## ", 1)[0]
    assert "tie with vmap_jacfwd" in section and "| winner" in section


def test_a_runs_verdicts_decide_the_best_table(tmp_path: Path, no_plots: None) -> None:
    """A shape with a verdict in verdicts.jsonl (contenders re-timed in two processes) takes it over first timings:
    here the playoff tells vmap_jacrev from vmap_jacfwd, which first timings call a tie."""
    run = make_run(tmp_path / "results", "played", devices=("cpu",), coupled=False, small=True)
    playoff = VerdictRecord(model="mlp", device="cpu", dtype="float32", **BASE, best="vmap_jacrev", verdict="winner",
                            runner_up="vmap_jacfwd", runner_up_ratio=[1.09, 1.06, 1.12],
                            ratios={"vmap_jacfwd": [1.09, 1.06, 1.12]}, contenders=["vmap_jacrev", "vmap_jacfwd"],
                            rounds=40, processes=2)
    append_line(run / "verdicts.jsonl", playoff.as_dict())
    md = build_report(run, tmp_path / "plots").read_text()
    best = pd.read_csv(run / "tables" / "best.csv", keep_default_na=False)
    base = _at(best, BASE)
    assert (base["fastest"], base["verdict"], _tied(base), base["playoff_rounds"]) == ("vmap_jacrev", "winner", [],
                                                                                       40)
    assert float(base["runner_up_ratio_low"]) == pytest.approx(1.06)
    assert (best[best["fastest"] != ""]["verdict"] != "").all()  # the shapes without a playoff keep their own
    (row,) = [r for r in _md_rows(run / "tables" / "best.md")
              if (r["device"], r["batch"], r["hidden"], r["in_dim"], r["out_dim"]) == ("cpu", "64", "32", "16", "16")]
    assert (row["fastest autodiff"], row["verdict"]) == ("vmap_jacrev", "winner")
    assert "[1.06–1.12]" in row["runner-up / fastest"]
    assert "| winner " in md.split("## Fastest autodiff strategy per shape", 1)[1]


def test_summary_per_device(built: dict[str, Path]) -> None:
    md = built["md"].read_text()
    section = md.split("## What this means", 1)[1].split("\n## ", 1)[0]
    for where in ("mlp · cpu", "mlp · cuda"):
        assert where in section
    for label in ("fastest autodiff, all shapes", "J/F of the best", "best autodiff vs analytic",
                  "recommend, leave-one-out", "silently wrong"):
        assert label in section, label
    assert "Synthetic GPU" in md and "2.4.0" in md  # environment from env.json


def test_missing_or_empty_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no such run folder"):
        build_report(tmp_path / "nope", tmp_path / "plots")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="cases.jsonl"):
        build_report(tmp_path / "empty", tmp_path / "plots")
    (tmp_path / "empty" / "cases.jsonl").write_text("{torn\n")
    with pytest.raises(ResultsError, match="corrupt"):
        build_report(tmp_path / "empty", tmp_path / "plots")


def test_tiny_run_without_env_or_sweeps(tmp_path: Path) -> None:
    """A smoke-sized run: one shape, no env.json; reports without plots instead of failing."""
    run = tmp_path / "results" / "smoke"
    run.mkdir(parents=True)
    shape = {"batch": 4, "hidden": 8, "in_dim": 3, "out_dim": 2}
    for name in ("vmap_jacrev", "grad_summed", "analytic"):
        append_case(run / "cases.jsonl", record(name, "cpu", shape, None))
    text = build_report(run, tmp_path / "plots").with_suffix(".html").read_text()
    assert "vmap_jacrev" in text and "env.json is missing" in text
    # no sweep, so no line plot: only the memory-against-time scatter, which needs one shape
    assert {p.stem for p in (tmp_path / "plots").rglob("*.png")} == {"memory_vs_time-cpu-mlp-float32"}


def test_sweeps_inferred_when_missing(tmp_path: Path) -> None:
    run = make_run(tmp_path, "nosweeps", devices=("cpu",), coupled=False, env=False, sweeps=False)
    frame = frames.load_run(run).frame
    line = frames.sweep_line(frame, "batch")
    assert sorted(line["batch"].unique()) == [1, 4, 16, 64, 256, 1024]
    assert set(line["hidden"]) == {32} and set(line["in_dim"]) == {16}
    assert len(frames.plane(frame)) == 9 * len(STRATEGIES)


def test_missing_cases_are_counted_against_the_plan(tmp_path: Path, no_plots: None) -> None:
    run = make_run(tmp_path / "results", "cut", devices=("cpu",), coupled=False, small=True)
    env = json.loads((run / "env.json").read_text())
    finished = len((run / "cases.jsonl").read_text().splitlines())
    (run / "env.json").write_text(json.dumps(env | {"planned_cases": finished + 7, "interrupted": True}))
    md = build_report(run, tmp_path / "plots").read_text()
    assert f"{finished} cases of {finished + 7} planned" in md
    assert f"7 of {finished + 7} planned cases are missing: the run was interrupted (Ctrl-C)" in md
    assert "RESUME=1" in md


def test_published_ratios_beside_this_runs(tmp_path: Path, no_plots: None) -> None:
    run = make_run(tmp_path / "results", "pub", devices=("cpu",), coupled=False, small=True)
    env = json.loads((run / "env.json").read_text())
    env["threads"] = 1
    env["grid"]["published"] = [{"source": "a tutorial", "conditions": "1 thread", "model": "mlp",
                                 "dtype": "float32", **BASE, "slower": "vmap_jacfwd", "faster": "vmap_jacrev",
                                 "ratio": 9.44}]
    (run / "env.json").write_text(json.dumps(env))
    md = build_report(run, tmp_path / "plots").read_text()
    assert "## Published results, reproduced" in md
    table = pd.read_csv(run / "tables" / "published.csv")
    assert table["published"].tolist() == ["9.44×"] and table["this run's threads"].tolist() == [1]
    frame = frames.load_run(run).frame.set_index("strategy")
    at_base = frame[(frame[list(BASE)] == list(BASE.values())).all(axis=1)]["time_median_s"]
    ours = at_base["vmap_jacfwd"] / at_base["vmap_jacrev"]
    assert table["this run [95% CI]"].iloc[0].startswith(f"{ours:.3g}×")


def test_the_report_opens_on_which_strategy_to_use(built: dict[str, Path]) -> None:
    md, html = built["md"].read_text(), built["html"].read_text()
    sections = re.findall(r"^## (.+)$", md, re.M)
    assert sections[0] == "Which strategy to use" and sections[1] == "Fastest autodiff strategy per shape"
    answer = _md_rows(built["run"] / "tables" / "answer.md")
    assert {r["device"] for r in answer} == {"cpu (Synthetic CPU &lt;8 cores>)", "cuda (Synthetic GPU)"}
    for row in answer:
        if row["use"] != "none valid":
            assert row["code"] == f'J = strategies.REGISTRY["{row["use"]}"](model, x)', row
    first = html.split('<section id="which_strategy_to_use">', 1)[1].split("</section>", 1)[0]
    assert 'id="T_answer"' in first and "from bench import autotune" in first
    assert "winner_map-cpu-mlp-float32" in first and "time_vs_batch-cpu-mlp-float32" in first
    assert html.index('id="which_strategy_to_use"') < html.index('id="fastest_autodiff_strategy_per_shape"')
    for title in ("What this means", "Status of every case", "Environment"):  # the long lists, folded
        anchor = slug(title).lower()
        assert f'<details id="{anchor}">' in html, title
        assert f'href="#{anchor}"' in html, f"{title} is not in the contents"


def test_the_answer_names_a_strategy_that_is_best_or_tied_where_it_says(built: dict[str, Path]) -> None:
    answer = pd.read_csv(built["run"] / "tables" / "answer.csv")
    best = pd.read_csv(built["run"] / "tables" / "best.csv")
    assert not answer.empty and set(answer["how"]) == {"eager"}  # the synthetic run compiles nothing
    for row in answer.itertuples():
        shapes = best[(best["model"] == row.model) & (best["device"] == row.device) & (best["mode"] == row.mode)
                      & best["batch"].between(row.batch_min, row.batch_max)]
        good = [row.use == r.fastest or row.use in str(r.tied_with).split("|") for r in shapes.itertuples()]
        assert len(shapes) == row.shapes and sum(good) == row.wins + row.ties, row
        assert not (row.use == "grad_summed" and (shapes["out_dim"] > 1).any() and row.wins + row.ties == len(shapes))


def test_compiled_strategies_get_their_own_answer(tmp_path: Path) -> None:
    from bench.report.answer import answer_rows, answer_table

    run = tmp_path / "results" / "compiled"
    run.mkdir(parents=True)
    for batch in (1, 4, 16):
        shape = {**BASE, "batch": batch}
        for name in ("grad_batched", "vmap_jacrev", "grad_summed"):
            append_case(run / "cases.jsonl", record(name, "cpu", shape, ["batch"]))
        append_case(run / "cases.jsonl", record("vmap_jacrev_compiled", "cpu", shape, ["batch"], speed=20.0,
                                                compiled=True, setup_s=0.5))
    loaded = frames.load_run(run)
    rows = answer_rows(loaded.frame, loaded.playoffs)
    assert list(rows["how"]) == ["eager", "compiled"]
    assert rows["use"].iloc[1] == "vmap_jacrev_compiled" and rows["use"].iloc[0] != "vmap_jacrev_compiled"
    assert list(rows["batch_min"]) == [1, 1] and list(rows["batch_max"]) == [16, 16]
    assert list(rows["wins"] + rows["ties"]) == [3, 3]
    table, shared = answer_table(rows, {"cpu": "Box CPU"})
    assert shared == "cpu (Box CPU) · float32 · jacobian" and "how" in table.columns
    assert table["code"].iloc[1] == 'J = strategies.REGISTRY["vmap_jacrev_compiled"](model, x)'


def test_code_lines_train_through_j_and_shape_the_output_sum() -> None:
    from bench.report.answer import code_line

    assert code_line("func_sum_jacrev", "train") == \
        'J = strategies.REGISTRY["func_sum_jacrev"](model, x, create_graph=True)'
    assert code_line("grad_summed", "jacobian", "output_sum").endswith("(model, x).unsqueeze(1)")


def test_where_the_time_went_says_how_much_of_the_timing_was_waiting():
    from bench.report.environment import phases_line

    env = {"phases": {"timing": 300.0, "validation": 40.0, "report": 10.0},
           "processes": [{"process": 1, "wall_s": 250.0, "waited_s": 31.2}, {"process": 2, "wall_s": 100.0,
                                                                              "waited_s": 8.9}]}
    assert phases_line(env) == (
        "Where the harness's time went: 360 s in all over 2 worker processes: timed rounds 300 s (40 s of it waiting "
        "for a slow episode of the machine or other processes' load to pass), validation 40 s, report 10 s.")
    older = {**env, "processes": [{k: v for k, v in p.items() if k != "waited_s"} for p in env["processes"]]}
    assert "waiting" not in phases_line(older)


def test_a_sole_contender_names_the_next_strategy_and_its_lead_as_a_point() -> None:
    # a playoff of one contender: no paired rounds, its lead over the next strategy is two medians timed apart
    from bench.report.best import best_per_shape
    from bench.report.tables import best_table

    cases = [record(name, "cpu", BASE, ["batch"]) for name in ("vmap_jacrev", "grad_batched", "grad_loop")]
    fast, following = sorted((r.time_median_s, r.strategy) for r in cases)[:2]
    lead = following[0] / fast[0]
    playoff = VerdictRecord(model="mlp", device="cpu", dtype="float32", **BASE, best=fast[1], verdict="winner",
                            runner_up=None, runner_up_ratio=[lead] * 3, contenders=[fast[1]], rounds=59)
    best = best_per_shape(frames.to_frame(cases), frames.playoffs_frame([playoff])).iloc[0]
    assert best["fastest"] == fast[1] and best["runner_up"] == following[1]
    assert best["runner_up_ratio"] == pytest.approx(lead) and pd.isna(best["runner_up_ratio_low"])
    shown = best_table(best_per_shape(frames.to_frame(cases), frames.playoffs_frame([playoff]))).iloc[0]
    assert shown["runner-up / fastest"] == fmt_ratio(lead)  # no interval: none was measured
