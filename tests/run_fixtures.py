"""Synthetic run folders for the report, compare and recommend tests: realistic records, no measuring.

Times follow a simple cost model per strategy (overhead + work), so the fastest strategy differs by regime, as in real
runs. The grid has a batch sweep, in/out/hidden sweeps and an in × out plane, on cpu and cuda; it includes every
status a report must handle: wrong (a coupled model), timeout, oom, over_budget, unsupported, error, and grad_summed
returning the sum over outputs.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from bench.results import append_case, write_json
from bench.schema import CaseRecord

BASE = {"batch": 64, "hidden": 32, "in_dim": 16, "out_dim": 16}
SWEEP = {"batch": [1, 4, 16, 64, 256, 1024], "hidden": [16, 32, 128], "in_dim": [4, 16, 64], "out_dim": [1, 16, 64]}
PLANE = {"in_dim": [4, 16, 64], "out_dim": [1, 16, 64]}

# name -> (returns, independent_samples, relative cost as a function of (B, H, in, out) in forward passes)
STRATEGIES: dict[str, tuple[str, bool, Any]] = {
    "analytic": ("jacobian", False, lambda b, h, i, o: 2.0 + 0.5 * min(i, o)),
    "grad_summed": ("output_sum", True, lambda b, h, i, o: 2.0),
    "grad_loop": ("jacobian", False, lambda b, h, i, o: 3.0 * o),
    "grad_batched": ("jacobian", False, lambda b, h, i, o: 3.0 + 0.8 * o),
    "jacobian_diagonal": ("jacobian", False, lambda b, h, i, o: 3.0 * o * b),
    "jacobian_sum": ("jacobian", True, lambda b, h, i, o: 3.0 + 0.7 * o),
    "vmap_jacrev": ("jacobian", True, lambda b, h, i, o: 2.5 + 0.3 * o),
    "vmap_jacfwd": ("jacobian", True, lambda b, h, i, o: 2.6 + 0.3 * i),
    "jvp_loop": ("jacobian", False, lambda b, h, i, o: 2.0 * i),
}
DEVICE_SPEED = {"cpu": (2e-6, 1e-10, 1e-6), "cuda": (3e-5, 2e-13, 2e-5)}  # (forward overhead, s per flop, per call)


def shapes(small: bool = False) -> list[tuple[dict[str, int], list[str]]]:
    """(shape, sweeps) of the synthetic grid; the base point is on every sweep and on the plane."""
    found: dict[tuple, list[str]] = {}
    for axis, values in SWEEP.items():
        for v in values[:3] if small else values:
            shape = {**BASE, axis: v}
            tags = found.setdefault(tuple(shape.values()), [])
            tags += ["base"] if shape == BASE and "base" not in tags else []
            tags.append(axis)
    for i, o in itertools.product(*PLANE.values()):
        found.setdefault(tuple({**BASE, "in_dim": i, "out_dim": o}.values()), []).append("plane")
    return [(dict(zip(BASE, key, strict=True)), tags) for key, tags in found.items()]


def record(strategy: str, device: str, shape: dict[str, int], sweeps: list[str], model: str = "mlp",
           dtype: str = "float32", speed: float = 1.0, returns: str | None = None, **fields: Any) -> CaseRecord:
    b, h, i, o = shape["batch"], shape["hidden"], shape["in_dim"], shape["out_dim"]
    ret, independent, cost = STRATEGIES.get(strategy, ("jacobian", False, lambda *_: 8.0 + 0.5 * o))
    overhead, per_flop, per_call = DEVICE_SPEED[device]
    forward = (overhead + per_flop * b * h * (i + o)) / speed
    time = forward * cost(b, h, i, o) + per_call * (o if strategy in ("grad_loop",) else 1)
    coupled = model == "mlp_batchnorm"
    status, message, error = "ok", "", 1e-7
    if coupled and independent:
        status, message, error = "wrong", "max_abs_error over tolerance", 0.31
    elif coupled and strategy == "analytic":
        status, message = "unsupported", "analytic: not an MLP of Linear and elementwise layers"
    elif strategy == "jacobian_diagonal" and b >= 256:
        status, message = ("timeout", "round over 30 s") if device == "cpu" else ("oom", "CUDA out of memory")
    elif strategy == "grad_loop" and o >= 64 and device == "cpu":
        status, message = "over_budget", "predicted time 40 s over the time budget 30 s"
    elif strategy == "jvp_loop" and i == 64 and device == "cuda":
        status, message = "error", "RuntimeError: something | broke <here>"
    ok = status == "ok"
    return CaseRecord(**{
        "strategy": strategy, "model": model, "device": device, "dtype": dtype, **shape, "status": status,
        "time_median_s": time if ok else None, "time_iqr_s": time * 0.03 if ok else None, "rounds": 5 if ok else None,
        "forward_median_s": forward, "peak_memory_bytes": 4 * b * (h + o * i) * 3 if ok else None,
        "max_abs_error": error if status in ("ok", "wrong") else None, "message": message,
        "iterations": 10 if ok else None, "time_min_s": time * 0.98 if ok else None,
        "time_mean_s": time * 1.01 if ok else None, "predicted_memory_bytes": 4 * b * o * i, "tolerance": 1e-4,
        "returns": returns or ret, "independent_samples": independent, "coupled": coupled,
        "summary": f"{strategy}: synthetic summary", "cost": "O(B·H·(in+out))", "sweeps": sweeps,
        "case_id": f"{strategy}-{device}-{model}-B{b}-H{h}-in{i}-out{o}", "wall_s": 0.1,
        "round_times_s": [time * f for f in (0.97, 0.99, 1.0, 1.01, 1.03)] if ok else None,
        "time_ci_low_s": time * 0.99 if ok else None, "time_ci_high_s": time * 1.01 if ok else None,
        "unstable": False, "is_jacobian": (returns or ret) != "output_sum" or o == 1,
        "log_time_sd": 0.01 if ok else None, "closed_form": strategy == "analytic",
    } | fields)


def make_run(root: Path, run_id: str, devices: tuple[str, ...] = ("cpu", "cuda"), torch: str = "2.4.0",
             dtype: str = "float32", extra_strategy: str | None = None, coupled: bool = True, small: bool = False,
             speed: float = 1.0, env: bool = True, sweeps: bool = True) -> Path:
    """results/<run_id>/ with cases.jsonl and env.json; returns the run folder."""
    run = root / run_id
    run.mkdir(parents=True, exist_ok=True)
    names = list(STRATEGIES) + ([extra_strategy] if extra_strategy else [])
    for device in devices:
        for shape, tags in shapes(small):
            for name in names:
                append_case(run / "cases.jsonl", record(name, device, shape, tags if sweeps else [], dtype=dtype,
                                                        speed=speed))
        if coupled and device == "cpu":
            for shape, tags in shapes(small)[:4]:
                for name in names:
                    append_case(run / "cases.jsonl", record(name, device, shape, tags, model="mlp_batchnorm",
                                                            dtype=dtype, speed=speed))
    if env:
        write_json(run / "env.json", {
            "run_id": run_id, "created": "2025-01-01T00:00:00", "python": "3.11.2", "platform": "Linux-x86_64",
            "hostname": "box", "cpu_model": "Synthetic CPU <8 cores>",
            "torch": torch, "cuda": "12.1", "devices": {"cpu": "Synthetic CPU <8 cores>", "cuda": "Synthetic GPU"},
            "threads": 8, "tf32": {"matmul": False, "cudnn": True}, "seed": 0,
            "grid": {"name": "synthetic", "base": BASE, "sweep": SWEEP, "plane": PLANE},
        })
    return run


def valid_best(run: Path, device: str, shape: dict[str, int], model: str = "mlp") -> tuple[str, float]:
    """The measured best valid autodiff strategy at a grid point (never the closed form), computed independently of
    bench.report.frames."""
    from bench.results import read_cases

    rows = [r for r in read_cases(run / "cases.jsonl") if r.device == device and r.model == model
            and all(getattr(r, k) == v for k, v in shape.items()) and r.status == "ok"
            and (r.returns == "jacobian" or shape["out_dim"] == 1) and r.strategy != "analytic"]
    best = min(rows, key=lambda r: r.time_median_s)
    return best.strategy, best.time_median_s
