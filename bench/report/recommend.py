"""Which strategy for my shape? The best valid strategy from measured runs, interpolated in log space.

For each strategy, the k measured shapes nearest to the query (distance in log2 of B, H, in, out) give its expected
time: the measurement itself on an exact match, else the inverse-distance-weighted mean of log time
(bench/neighbours.py, the project's one interpolation). A strategy whose nearest measured shape failed (wrong,
timeout, oom, over budget, error) is not a candidate: extrapolating from its successes would recommend it exactly
where it breaks. "output_sum" strategies compute J only when out == 1.
`leave_one_out` scores this honestly: hide one shape, recommend from the rest, compare with what was measured there.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.neighbours import EXACT, K_NEAREST, idw, log2_distances
from bench.report.best import NONE_VALID, best_per_shape, playoffs_among
from bench.report.frames import load_run
from bench.results import ResultsError
from bench.schema import AXES, FIXED_HIDDEN, SETTING, sizes_id


def recommend(run_dirs: list[Path], batch: int, hidden: int, in_dim: int, out_dim: int, device: str | None = None,
              model: str | None = None, dtype: str | None = None, mode: str = "jacobian",
              quantity: str = "jacobian") -> dict[str, Any]:
    """The best valid strategy for (batch, hidden, in_dim, out_dim), its expected time and the runner-up.

    `device`, `model` and `dtype` narrow the measurements; left out, the one present is used (for model and dtype,
    "mlp" and "float32" when several are) and, across several devices, the fastest device wins. `mode`: the
    quantity alone, or a training step through it ("train": the Jacobian penalty, or for second order the PINN
    step). `quantity`: what is computed, "jacobian", "hessian" or "laplacian"; each has its own strategies.
    """
    if not run_dirs:
        raise ResultsError("recommend needs at least one run folder (--results results/<run-id>)")
    frame = pd.concat([load_run(Path(d)).frame for d in run_dirs], ignore_index=True)
    if quantity not in set(frame["quantity"]):
        raise ResultsError(f"the runs measured no {quantity} (they have {', '.join(sorted(set(frame['quantity'])))}): "
                           f"measure it with QUANTITY={quantity}, or ask for one of those with --quantity")
    # a closed form is the limit the report compares with, and a peer is another framework: neither is a PyTorch
    # strategy for the user's own model, so never recommended, as never in a verdict (bench/rules.py)
    frame = frame[(frame["quantity"] == quantity) & ~frame["closed_form"] & frame["peer"].eq("")]
    if frame.empty:
        raise ResultsError(f"the runs measured no PyTorch strategy for the {quantity} (only closed forms or peers): "
                           "measure some with STRATEGIES=")
    shape = {"batch": batch, "hidden": hidden, "in_dim": in_dim, "out_dim": out_dim}
    for axis, value in shape.items():
        smallest = FIXED_HIDDEN if axis == "hidden" else 1  # hidden 0: a model of fixed sizes
        if not isinstance(value, (int, np.integer)) or value < smallest:
            raise ResultsError(f"--{axis.replace('_', '-')} must be a positive integer, not {value!r}")
    model = model or _pick(frame["model"], "mlp")
    dtype = dtype or _pick(frame["dtype"], "float32")
    devices = [device] if device else sorted(frame["device"].unique())
    picks = []
    for dev in devices:
        part = frame[(frame["model"] == model) & (frame["device"] == dev) & (frame["dtype"] == dtype)
                     & (frame["mode"] == mode)]
        if part.empty:
            have = sorted(set(map(tuple, frame[SETTING].drop_duplicates().to_numpy())))
            raise ResultsError(f"no measurement for model={model} device={dev} dtype={dtype} mode={mode} "
                               f"quantity={quantity}; the runs have (model, device, dtype, mode, quantity) = {have}: "
                               "choose one of those")
        pick = predict(part, shape)
        if pick is not None:
            picks.append({**pick, "device": dev, "model": model, "dtype": dtype, "mode": mode, "quantity": quantity})
    if not picks:
        raise ResultsError(f"no valid measurement near B={batch} H={hidden} in={in_dim} out={out_dim} for "
                           f"{model}/{dtype} on {', '.join(devices)}: every strategy failed there; measure this "
                           f"shape (e.g. a custom GRID) or relax the budgets")
    return min(picks, key=lambda p: p["expected_time_s"])


def _pick(values: pd.Series, preferred: str) -> str:
    present = values.value_counts()
    return preferred if preferred in present.index else str(present.index[0])


def predict(part: pd.DataFrame, shape: dict[str, int]) -> dict[str, Any] | None:
    """Recommendation inside one (model, device, dtype) frame; None when no strategy is a candidate."""
    target = [[shape[a] for a in AXES]]  # [1, 4]
    expected: dict[str, float] = {}
    basis: dict[str, str] = {}
    unstable: dict[str, bool] = {}  # a measurement it rests on was timed under disturbance
    for strategy, rows in part.groupby("strategy"):
        if (rows["returns"] == "output_sum").any() and shape["out_dim"] > 1:
            continue  # it returns J.sum(1) at this shape: never a recommendation
        if rows["estimator"].any():
            continue  # a stochastic estimate: never a recommendation against exact strategies
        ok = rows["status"].eq("ok") & rows["time_median_s"].gt(0)
        dist = log2_distances(target, rows[AXES].to_numpy(float))[0]  # [rows]
        nearest = np.argsort(dist, kind="stable")[:K_NEAREST]
        if not ok.iloc[nearest[0]]:
            continue  # failed (or was skipped) at the closest measured shape
        use = [i for i in nearest if ok.iloc[i]]  # the nearest shapes where it was valid
        logt = np.log(rows["time_median_s"].to_numpy(float)[use])  # [use]
        unstable[strategy] = bool(rows["unstable"].to_numpy()[use].any()) if "unstable" in rows else False
        estimate, _ = idw(dist[None, use], logt, k=len(use))  # [1, 1]
        expected[strategy] = float(math.exp(estimate[0, 0]))
        basis[strategy] = "exact" if dist[use[0]] < EXACT else ", ".join(sizes_id(rows.iloc[i]) for i in use)
    if not expected:
        return None
    ranked = sorted(expected.items(), key=lambda kv: kv[1])
    best = ranked[0][0]
    where = sizes_id(shape)
    if basis[best] == "exact":
        text = f"measured at {where}"
    else:
        text = f"log-time inverse-distance interpolation to {where} from the {K_NEAREST} nearest shapes: {basis[best]}"
    if unstable[best]:
        text += "; it rests on a measurement timed under disturbance (unstable): rerun that shape on a quiet machine"
    return {
        "strategy": best,
        "expected_time_s": ranked[0][1],
        "runner_up": ranked[1][0] if len(ranked) > 1 else None,
        "runner_up_time_s": ranked[1][1] if len(ranked) > 1 else None,
        "exact": basis[best] == "exact",
        "basis": text,
        "unstable": unstable[best],
        "candidates": dict(ranked),
    }


def measured_at(run_dirs: list[Path], device: str, dtype: str, mode: str, batch: int, in_dim: int, out_dim: int,
                strategies: list[str] | None = None, quantity: str = "jacobian") -> list[dict[str, Any]]:
    """What runs measured at one input shape, for a model known by its sizes alone (autotune's `results=`).

    One answer per (run, model, hidden width, device) measured at (batch, in_dim, out_dim) in this dtype and mode, on
    devices of `device`'s type ("cuda:0" matches "cuda"). An answer names the model's spec (env.json's `models`) so
    the caller can rebuild it and check that it is the same model, and ranks the strategies among `strategies` that
    were valid there: the shape's verdict first (best_per_shape: its playoff, else the tie rule on first timings),
    then those tied with it, then the rest by measured time (`predict` at an exact match).
    """
    kind = device.split(":")[0]
    answers = []
    for folder in run_dirs:
        run = load_run(Path(folder))
        frame = run.frame
        at = frame[(frame["device"].str.split(":").str[0] == kind) & (frame["dtype"] == dtype)
                   & (frame["mode"] == mode) & (frame["quantity"] == quantity) & (frame["batch"] == batch)
                   & (frame["in_dim"] == in_dim) & (frame["out_dim"] == out_dim)]
        if strategies is not None:
            at = at[at["strategy"].isin(strategies)]
        models = run.env.get("models") if isinstance(run.env.get("models"), dict) else {}
        names = run.env.get("devices") if isinstance(run.env.get("devices"), dict) else {}
        for (model, hidden, dev), part in at.groupby(["model", "hidden", "device"], sort=False):
            shape = {"batch": batch, "hidden": int(hidden), "in_dim": in_dim, "out_dim": out_dim}
            ranked = predict(part, shape)
            best = best_per_shape(part, playoffs_among(run.playoffs, set(part["strategy"]))).iloc[0]
            lead = [] if best["fastest"] == NONE_VALID else [best["fastest"], *best["tied_with"]]
            order = list(dict.fromkeys(lead + list(ranked["candidates"] if ranked else [])))
            answers.append({"run": str(folder), "model": model, "spec": models.get(model, model), "hidden": int(hidden),
                            "device": dev, "device_name": names.get(dev) or run.env.get("cpu_model") or dev,
                            "torch": run.env.get("torch"), "threads": run.env.get("threads"), "order": order,
                            "verdict": best["verdict"] if lead else "", "tied_with": list(best["tied_with"]),
                            "times": ranked["candidates"] if ranked else {}})
    return answers


def leave_one_out(frame: pd.DataFrame) -> dict[str, Any]:
    """Regret of `predict` when each measured shape is hidden in turn: time of the pick / time of the measured best.

    A pick that was not valid at the hidden shape (it failed there) counts as infinite regret and as `failed`.
    Quantiles use observed values only (no interpolation), so an infinite regret never turns into NaN.
    """
    regrets = []
    for _, part in frame.groupby(SETTING):
        for shape, rows in part.groupby(AXES):
            valid = rows[rows["valid"]]
            rest = part[(part[AXES] != pd.Series(dict(zip(AXES, shape, strict=True)))).any(axis=1)]
            if valid.empty or rest.empty:
                continue
            pick = predict(rest, dict(zip(AXES, map(int, shape), strict=True)))
            if pick is None:
                continue
            chosen = valid[valid["strategy"] == pick["strategy"]]
            best = valid["time_median_s"].min()
            regrets.append(chosen["time_median_s"].iloc[0] / best if len(chosen) else math.inf)
    if not regrets:
        return {"median": None, "p90": None, "n": 0, "failed": 0, "best_picks": 0}
    values = np.array(regrets)
    return {
        "median": float(np.quantile(values, 0.5, method="inverted_cdf")),
        "p90": float(np.quantile(values, 0.9, method="inverted_cdf")),
        "n": len(values),
        "failed": int(np.isinf(values).sum()),
        "best_picks": int((values == 1.0).sum()),
    }

