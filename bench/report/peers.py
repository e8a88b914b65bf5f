"""PyTorch against its peers: per shape, how far PyTorch's best (eager, and compiled) is from another framework's
best on the same weights (JAX: plugins/jacobench-jax), and along the batch axis where that gap closes.

A peer never wins a shape (bench/rules.py); this section is where it is compared. Each ratio is PyTorch's time over
the peer's, with the 95% interval of its true value from the two records' run-to-run spread (log_time_sd, which
holds the rounds' noise and the run's two processes: stats.significantly_different), or, for records without one,
from their rounds (stats.ratio_of_medians). The verdict uses the race's tie rule: one side is ahead only when the
whole interval lies more than TIE_MARGIN beyond 1. Reads result files only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench import stats
from bench.schema import AXES, SETTING, fmt_margin, fmt_ratio, fmt_time
from bench.stats import TIE_MARGIN

GOAL = 1.5  # PyTorch's best within this factor of the peer's best: the gap the project sets out to close
TORCH_AHEAD, PEER_AHEAD, TIE = "torch ahead", "{peer} ahead", "tie"
SIDES = (("eager", False), ("compiled", True))  # PyTorch's best of each kind, compared apart

INTRO = (
    "Another framework's strategies on the same weights (peers), validated against the same float64 reference, timed "
    "in the same rounds; never a winner or a recommendation. A JAX peer is jax.jit-compiled once per shape (its "
    "compiling is setup, like torch.compile's), starts from the weights and the input as JAX arrays and returns a "
    "torch tensor once its result is ready; XLA's CPU pool has the run's threads. × peer: PyTorch's best time over "
    "the peer's best, [95% interval]; verdict: {peer} ahead or torch ahead when the whole interval is more than "
    f"{fmt_margin(TIE_MARGIN)} beyond 1, else tie. compiled: PyTorch's torch.compile and AOT strategies only. The "
    "handoff to torch (waiting for the result, DLPack) and the peer's checks of the model and input are inside its "
    "time, as a PyTorch program calling it pays them: at small batch they can be several times the jitted program's "
    "own time (plugins/jacobench-jax/measure_overhead.py measures the three apart), so a JAX program that stays in "
    "JAX runs faster there than this peer.")


@dataclass(frozen=True)
class Gap:
    """PyTorch's best of one kind against the peer's best at one shape."""

    torch_name: str
    torch_s: float
    ratio: float  # torch time / peer time
    low: float
    high: float
    verdict: str


def has_peers(frame: pd.DataFrame) -> bool:
    return bool(frame["peer"].fillna("").ne("").any())


def gap(torch_row: pd.Series, peer_row: pd.Series, peer: str, pooled: float = 0.0) -> Gap:
    """The ratio of two records' times with its interval, and the verdict by the tie rule. Timed in the same sweeps
    (a run interleaves the peer with the shape's strategies), it is the paired ratio of their rounds with the run's
    between-process variance of ratios (`pooled`), as a shape's verdict is; else the two records' own spreads."""
    paired = _paired(torch_row, peer_row)
    sd_a, sd_b = torch_row.get("log_time_sd"), peer_row.get("log_time_sd")
    if paired is not None:
        ratio, low, high = stats.confidence_interval(paired, pooled)
    elif _finite(sd_a) and _finite(sd_b):
        ratio, low, high = stats.significantly_different(torch_row["time_median_s"], sd_a, peer_row["time_median_s"],
                                                         sd_b)
    else:
        ratio, low, high = stats.ratio_of_medians(_rounds(torch_row), _rounds(peer_row))
    verdict = PEER_AHEAD.format(peer=peer) if low > TIE_MARGIN else TORCH_AHEAD if high < 1 / TIE_MARGIN else TIE
    return Gap(torch_row["strategy"], torch_row["time_median_s"], ratio, low, high, verdict)


def _paired(torch_row: pd.Series, peer_row: pd.Series) -> stats.Spread | None:
    """The spread of the per-sweep ratios torch/peer, process by process; None unless both records hold rounds with
    their sweeps and some process has two paired rounds."""
    rounds = []
    for row in (torch_row, peer_row):
        values, processes, sweeps = (row.get(c) for c in ("round_times_s", "process_rounds", "round_sweeps"))
        if not all(isinstance(v, list) and v for v in (values, processes, sweeps)):
            return None
        rounds.append((values, processes, sweeps))
    ratios, counts = stats.paired_log_ratios(rounds[0], rounds[1])
    return stats.spread(ratios, counts) if any(n >= 2 for n in counts) else None


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _rounds(row: pd.Series) -> list[float]:
    rounds = row.get("round_times_s")
    return list(rounds) if isinstance(rounds, list) and rounds else [row["time_median_s"]]


def fastest(rows: pd.DataFrame) -> pd.Series | None:
    return None if rows.empty else rows.sort_values("time_median_s").iloc[0]


def peer_rows(frame: pd.DataFrame, pooled: float = 0.0) -> pd.DataFrame:
    """One row per shape with a valid peer: the peer's best and PyTorch's best eager and compiled, with the gaps
    (`pooled`: the run's between-process variance of paired ratios, env.json's noise)."""
    rows = []
    timed = frame[frame["valid"]]
    for shape, part in timed.groupby([*SETTING, *AXES], sort=False):
        torch_part = part[part["eligible"]]
        for peer, mine in part[part["peer"].fillna("").ne("")].groupby("peer", sort=False):
            best_peer = fastest(mine)
            row = dict(zip([*SETTING, *AXES], shape, strict=True)) | {
                "peer": peer, "peer_best": best_peer["strategy"], "peer_s": best_peer["time_median_s"]}
            for side, compiled in SIDES:
                best = fastest(torch_part[torch_part["compiled"].astype(bool) == compiled])
                found = gap(best, best_peer, peer, pooled) if best is not None else None
                row |= {f"{side}_{k}": (getattr(found, k) if found else None)
                        for k in ("torch_name", "torch_s", "ratio", "low", "high", "verdict")}
            rows.append(row)
    return pd.DataFrame(rows)


def best_ratio(row: pd.Series) -> float:
    """PyTorch's best of either kind over the peer's best."""
    return min((row[f"{side}_ratio"] for side, _ in SIDES if _finite(row[f"{side}_ratio"])), default=math.nan)


def peers_table(rows: pd.DataFrame) -> pd.DataFrame:
    """peer_rows as display strings."""
    out = []
    for _, r in rows.iterrows():
        cells = {c: r[c] for c in (*SETTING, *AXES) if c != "mode"} | {
            "peer best": f"{r['peer_best']} {fmt_time(r['peer_s'])}"}
        for side, _ in SIDES:
            if not isinstance(r[f"{side}_torch_name"], str):  # none of this kind measured (pandas holds NaN)
                cells |= {f"torch {side}": "—", f"{side} × peer": "—", f"{side} verdict": "—"}
                continue
            cells |= {f"torch {side}": f"{r[f'{side}_torch_name']} {fmt_time(r[f'{side}_torch_s'])}",
                      f"{side} × peer": f"{fmt_ratio(r[f'{side}_ratio'])} [{fmt_ratio(r[f'{side}_low'])}–"
                                        f"{fmt_ratio(r[f'{side}_high'])}]",
                      f"{side} verdict": r[f"{side}_verdict"]}
        ratio = best_ratio(r)
        cells[f"within ×{GOAL:g}"] = "—" if not _finite(ratio) else "yes" if ratio <= GOAL else "no"
        out.append(cells)
    return pd.DataFrame(out)


def pooled_ratio_variance(env: dict) -> float:
    """The run's between-process variance of paired ratios (ln), from env.json's noise model (0 when absent)."""
    sd = (env.get("noise") or {}).get("between_process_sd_ratio")
    return float(sd) ** 2 if _finite(sd) else 0.0


def closes_at(line: pd.DataFrame, side: str) -> str:
    """Along one batch line: the smallest batch from which the peer is never ahead of PyTorch's best of `side`."""
    line = line.dropna(subset=[f"{side}_verdict"]).sort_values("batch")
    if line.empty:
        return "not measured"
    closed = [v in (TIE, TORCH_AHEAD) for v in line[f"{side}_verdict"]]  # the peer is not ahead
    batches = line["batch"].tolist()
    if all(closed):
        return f"closed at every B ({batches[0]}–{batches[-1]})"
    if not closed[-1]:
        return f"open up to B = {batches[-1]}"
    last_open = max(i for i, c in enumerate(closed) if not c)
    return f"closes from B = {batches[last_open + 1]}"


def batch_items(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """Per batch line (setting and every size but B): where the gap closes, for eager and compiled PyTorch, and at how
    many of its shapes PyTorch's best is within GOAL of the peer's."""
    items = []
    fixed = [c for c in (*SETTING, *AXES, "peer") if c != "batch"]
    for key, line in rows.groupby(fixed, sort=False):
        if line["batch"].nunique() < 2:
            continue
        where = dict(zip(fixed, key, strict=True))
        label = (f"{where['model']} {where['quantity']} {where['dtype']} {where['device']} H={where['hidden']} "
                 f"in={where['in_dim']} out={where['out_dim']}")
        within = sum(best_ratio(r) <= GOAL for _, r in line.iterrows())
        items.append((label, f"eager: {closes_at(line, 'eager')}; compiled: {closes_at(line, 'compiled')}; PyTorch's "
                             f"best within ×{GOAL:g} of {where['peer']}'s at {within} of {len(line)} batch sizes"))
    return items
