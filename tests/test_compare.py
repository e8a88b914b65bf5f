"""Comparison of runs (a CPU box and a GPU box) and of the devices of one run, on small synthetic runs."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest
from run_fixtures import BASE, make_run

from bench.report.compare import build_compare
from bench.results import ResultsError, read_cases
from bench.schema import fmt_ratio

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_boxes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    a = make_run(root / "results", "cpu-box", devices=("cpu",), coupled=False, small=True)
    b = make_run(root / "results", "gpu-box", devices=("cuda",), coupled=False, small=True, torch="2.5.0")
    md = build_compare([a, b], root / "results", root / "plots")
    return {"root": root, "html": md.with_suffix(".html"), "md": md}


def test_output_location(two_boxes: dict[str, Path]) -> None:
    assert two_boxes["md"] == two_boxes["root"] / "results" / "compare-cpu-box-vs-gpu-box" / "report.md"
    assert two_boxes["html"].is_file()
    plots = list((two_boxes["root"] / "plots" / "compare-cpu-box-vs-gpu-box").glob("*.png"))
    assert plots and all(p.read_bytes()[:8] == PNG for p in plots)


def test_speedup_table_per_strategy_vs_batch(two_boxes: dict[str, Path]) -> None:
    md = two_boxes["md"].read_text()
    assert "Speedup of gpu-box over cpu-box vs batch size" in md
    table = md.split("Speedup of gpu-box over cpu-box vs batch size", 1)[1].split("\n\n", 2)[1]
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header[0] == "batch" and {"vmap_jacrev", "grad_loop", "analytic"} <= set(header)
    batches = [line.strip("|").split("|")[0].strip() for line in table.splitlines()[2:]]
    assert batches == ["1", "4", "16", "64"]  # the small sweep plus the base point, which lies on it
    assert re.search(r"\d×", table)
    assert "Crossover" in md and "crossover, vmap_jacrev" in md


def test_winners_side_by_side_and_warnings(two_boxes: dict[str, Path]) -> None:
    md, html = two_boxes["md"].read_text(), two_boxes["html"].read_text()
    assert "fastest on cpu-box" in md and "fastest on gpu-box" in md
    for text in (md, html):
        assert "torch versions differ" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)


def test_devices_of_one_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "results", "both", coupled=False, small=True)
    md = build_compare([run], tmp_path / "results", tmp_path / "plots")
    assert md.parent.name == "compare-cpu-vs-cuda" and md.with_suffix(".html").is_file()
    assert "Speedup of cuda over cpu" in md.read_text()


def test_dtype_difference_is_visible(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", devices=("cpu",), coupled=False, small=True)
    b = make_run(tmp_path, "b", devices=("cuda",), coupled=False, small=True, dtype="float64")
    md = build_compare([a, b], tmp_path / "out", tmp_path / "plots").read_text()
    assert "dtypes differ" in md and "across dtypes" in md


def test_user_errors(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", devices=("cpu",), coupled=False, small=True)
    with pytest.raises(ResultsError, match="at least 2"):
        build_compare([a], tmp_path / "out", tmp_path / "plots")
    with pytest.raises(ResultsError, match="at least 2"):
        build_compare([], tmp_path / "out", tmp_path / "plots")
    other = tmp_path / "other"
    other.mkdir()
    lines = (tmp_path / "a" / "cases.jsonl").read_text().replace('"model": "mlp"', '"model": "deep_mlp"')
    (other / "cases.jsonl").write_text(lines.replace('"device": "cpu"', '"device": "cuda"'))
    with pytest.raises(ResultsError, match="share no cases"):
        build_compare([a, other], tmp_path / "out", tmp_path / "plots")
    with pytest.raises(ResultsError, match="no such run folder"):
        build_compare([a, tmp_path / "missing"], tmp_path / "out", tmp_path / "plots")


def test_two_runs_of_one_machine_report_significance_and_reproducibility(tmp_path: Path) -> None:
    a = make_run(tmp_path / "results", "first", devices=("cpu",), coupled=False, small=True)
    b = make_run(tmp_path / "results", "second", devices=("cpu",), coupled=False, small=True, speed=1.0)
    c = make_run(tmp_path / "results", "faster", devices=("cpu",), coupled=False, small=True, speed=2.0)
    same = build_compare([a, b], tmp_path / "results", tmp_path / "plots").read_text()
    assert "(not significant)" in same  # the same numbers: every interval of the speedup holds 1
    assert "verdicts that hold" in same and "0 shapes where the runs name different winners" in same
    faster = build_compare([a, c], tmp_path / "results", tmp_path / "plots").read_text()
    table = faster.split("Speedup of faster over first vs batch size", 1)[1].split("\n\n", 2)[1]
    assert re.search(r"\| [12](\.\d+)?× \[\d\.\d\d–\d\.\d\d\]", table)  # a speedup with its interval
    assert "(not significant)" not in table


def test_speedups_are_the_ratio_of_the_two_runs_medians(tmp_path: Path) -> None:
    """Every speedup cell and the median of the summary are time on a / time on b, case by case."""
    a = make_run(tmp_path / "results", "slow", devices=("cpu",), coupled=False, small=True)
    b = make_run(tmp_path / "results", "fast", devices=("cpu",), coupled=False, small=True, speed=2.0)
    times = {run: {(r.strategy, r.batch, r.hidden, r.in_dim, r.out_dim): r.time_median_s
                   for r in read_cases(run / "cases.jsonl") if r.status == "ok"} for run in (a, b)}
    speedups = {k: times[a][k] / times[b][k] for k in times[a].keys() & times[b].keys()}
    md = build_compare([a, b], tmp_path / "results", tmp_path / "plots").read_text()
    assert f"median speedup {fmt_ratio(statistics.median(speedups.values()))}" in md
    assert f"range {fmt_ratio(min(speedups.values()))} – {fmt_ratio(max(speedups.values()))}" in md
    table = md.split("Speedup of fast over slow vs batch size", 1)[1].split("\n\n", 2)[1]
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    rows = {line.strip("|").split("|")[0].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines()[2:]}
    for batch in ("1", "16", "64"):
        cell = rows[batch][header.index("grad_loop")]
        expected = speedups[("grad_loop", int(batch), BASE["hidden"], BASE["in_dim"], BASE["out_dim"])]
        assert cell.startswith(fmt_ratio(expected) + " ["), cell
        low, high = map(float, re.search(r"\[(\d\.\d\d)–(\d\.\d\d)\]", cell).groups())
        assert low <= round(expected, 2) <= high


def test_a_slower_machine_is_one_change_not_many_slower_strategies(tmp_path: Path) -> None:
    """Two runs of one machine, the second with every call 25% slower (a slow hour of a VM): compare says the
    machine moved, and that no difference remains once that is taken out."""
    a = make_run(tmp_path / "results", "calm", devices=("cpu",), coupled=False, small=True)
    b = make_run(tmp_path / "results", "slowed", devices=("cpu",), coupled=False, small=True, speed=1 / 1.25)
    md = build_compare([a, b], tmp_path / "results", tmp_path / "plots").read_text()
    assert "cases moved 1.25× from calm to slowed" in md
    raw = re.search(r"(\d+) of (\d+) not significant", md)
    assert raw and raw.group(1) == "0"  # raw, every case is slower beyond its interval
    after = re.search(r"significant after the machine's change\*\*: (\d+) of (\d+) cases differ", md)
    assert after and int(after.group(1)) <= 0.05 * int(after.group(2))  # once it is taken out, next to none
    spread = re.search(r"spread ×(\d\.\d+) raw, ×(\d\.\d+) after the machine's change", md)
    assert spread and float(spread.group(1)) > 1.2 and float(spread.group(2)) < 1.02
    held = re.search(r"hold the other run's median\*\*: (\d+)% of the first run's, (\d+)% of the second's \(they claim "
                     r"95%\); after the machine's change, (\d+)% of the first run's, (\d+)% of the second's", md)
    assert held and max(map(int, held.group(1, 2))) < 50 and min(map(int, held.group(3, 4))) >= 80  # per-call costs
    # do not scale with the machine here: not every case moved by exactly its median change
