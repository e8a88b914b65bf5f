"""The peers section of a run report (bench/report/peers.py): PyTorch's best eager and compiled against the peer's
best per shape, the tie rule on the ratio's interval, and where along the batch axis the gap closes. From result
files only: no JAX needed."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from run_fixtures import record

from bench.report import peers
from bench.report.frames import load_run, to_frame
from bench.report.run_report import build_report
from bench.results import append_case, write_json

BATCHES = [1, 16, 512, 4096]


def shape(batch: int) -> dict[str, int]:
    return {"batch": batch, "hidden": 64, "in_dim": 16, "out_dim": 16}


def records(sd: float = 0.02) -> list:
    """JAX 3x faster at B=1 and 16, even at 512, PyTorch's compiled strategy ahead at 4096; eager always behind."""
    out = []
    for b in BATCHES:
        jax_s = 1e-4 * b ** 0.5
        compiled_s = jax_s * {1: 3.0, 16: 3.0, 512: 1.01, 4096: 0.6}[b]
        for name, time_s, fields in (
                ("vmap_jacrev", jax_s * 4.0, {}),
                ("vmap_jacrev_compiled", compiled_s, {"compiled": True}),
                ("analytic", jax_s * 0.1, {"closed_form": True}),
                ("jax_vmap_jacrev", jax_s, {"compiled": True, "peer": "jax"}),
                ("jax_vmap_jacfwd", jax_s * 1.5, {"compiled": True, "peer": "jax"})):
            out.append(record(name, "cpu", shape(b), ["batch"], time_median_s=time_s, log_time_sd=sd,
                              round_times_s=[time_s] * 5, **fields))
    return out


def test_the_best_of_each_side_and_the_verdict_per_shape():
    rows = peers.peer_rows(to_frame(records())).set_index("batch")
    assert set(rows["peer_best"]) == {"jax_vmap_jacrev"}  # the peer's fastest, never the closed form
    assert set(rows["eager_torch_name"]) == {"vmap_jacrev"}
    assert set(rows["compiled_torch_name"]) == {"vmap_jacrev_compiled"}
    assert rows.loc[1, "compiled_verdict"] == "jax ahead"
    assert rows.loc[512, "compiled_verdict"] == "tie"
    assert rows.loc[4096, "compiled_verdict"] == "torch ahead"
    assert set(rows["eager_verdict"]) == {"jax ahead"}
    ratio, low, high = rows.loc[4096, ["compiled_ratio", "compiled_low", "compiled_high"]]
    assert low < ratio < high and ratio == pytest.approx(0.6)


def test_a_wide_interval_is_a_tie():
    rows = peers.peer_rows(to_frame(records(sd=1.0))).set_index("batch")
    assert set(rows["compiled_verdict"]) == {"tie"}


def test_where_the_gap_closes_along_batch():
    rows = peers.peer_rows(to_frame(records()))
    (label, text), = peers.batch_items(rows)
    assert "mlp jacobian float32 cpu H=64 in=16 out=16" == label
    assert "eager: open up to B = 4096" in text and "compiled: closes from B = 512" in text
    assert "within ×1.5 of jax's at 2 of 4 batch sizes" in text


def test_closes_at_covers_every_case():
    line = pd.DataFrame({"batch": [1, 2, 4], "eager_verdict": ["tie", "torch ahead", "tie"]})
    assert peers.closes_at(line, "eager") == "closed at every B (1–4)"
    line["eager_verdict"] = ["tie", "jax ahead", "tie"]
    assert peers.closes_at(line, "eager") == "closes from B = 4"
    line["eager_verdict"] = ["tie", "tie", "jax ahead"]
    assert peers.closes_at(line, "eager") == "open up to B = 4"


def test_without_rounds_spread_the_ratio_comes_from_the_rounds():
    recs = [r.__class__(**{**r.as_dict(), "log_time_sd": None}) for r in records()]
    rows = peers.peer_rows(to_frame(recs)).set_index("batch")
    assert rows.loc[1, "compiled_ratio"] == pytest.approx(3.0)
    assert rows.loc[1, "compiled_verdict"] == "jax ahead"  # identical rounds: an interval of one point


def test_a_shape_without_a_compiled_torch_strategy_shows_a_dash():
    recs = [r for r in records() if r.strategy != "vmap_jacrev_compiled"]
    rows = peers.peer_rows(to_frame(recs))
    table = peers.peers_table(rows)
    assert set(table["compiled × peer"]) == {"—"} and math.isnan(rows["compiled_ratio"].astype(float).iloc[0])


def test_the_report_has_the_section_only_with_peers(tmp_path):
    run = tmp_path / "results" / "with-peers"
    run.mkdir(parents=True)
    for r in records():
        append_case(run / "cases.jsonl", r)
    write_json(run / "env.json", {"run_id": "with-peers", "threads": 2})
    report = build_report(run)
    text = report.read_text() if report.suffix == ".md" else (run / "report.md").read_text()
    assert "PyTorch and its peers (jax)" in text and (run / "tables" / "peers.csv").exists()
    assert "compiled: closes from B = 512" in text
    plain = tmp_path / "results" / "no-peers"
    plain.mkdir(parents=True)
    for r in records():
        if not r.peer:
            append_case(plain / "cases.jsonl", r)
    write_json(plain / "env.json", {"run_id": "no-peers", "threads": 2})
    build_report(plain)
    assert "its peers" not in (plain / "report.md").read_text()
    assert not peers.has_peers(load_run(plain).frame)


def test_rounds_timed_in_the_same_sweeps_give_the_paired_ratio():
    """A slow moment hits both sides of a sweep: the per-sweep ratio stays 2 while each side's own times swing ×3,
    so the paired interval is narrow where the two records' own spreads (log_time_sd 0.5) would give a tie."""
    swing = [1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0]
    sweeps = {"process_rounds": [4, 4], "round_sweeps": [0, 1, 2, 3, 0, 1, 2, 3], "log_time_sd": 0.5}
    torch_row = pd.Series({"strategy": "vmap_jacrev", "time_median_s": 2e-3,
                           "round_times_s": [2e-3 * s for s in swing], **sweeps})
    peer_row = pd.Series({"strategy": "jax_vmap_jacrev", "time_median_s": 1e-3,
                          "round_times_s": [1e-3 * s for s in swing], **sweeps})
    paired = peers.gap(torch_row, peer_row, "jax", pooled=0.01)
    assert paired.ratio == pytest.approx(2.0) and paired.verdict == "jax ahead"
    assert paired.low == pytest.approx(2.0 * math.exp(-1.96 * math.sqrt(0.01 / 2)), rel=1e-3)  # pooled over 2 processes
    unpaired = peers.gap(torch_row.drop("round_sweeps"), peer_row.drop("round_sweeps"), "jax")
    assert unpaired.verdict == "tie" and unpaired.low < 1.1
