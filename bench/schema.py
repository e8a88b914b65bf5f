"""The terms measurement and reporting share: statuses, axes, the ids and keys of a case, how numbers read.

Measurement writes these words and ids into result files and reporting reads them back; both import them from here
and from nowhere else. Nothing here imports torch, pandas or `strategies`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

# ---- statuses -------------------------------------------------------------------------------------------------------

# Every status a case can end in, in the order tables list them.
STATUSES = ("ok", "wrong", "oom", "over_budget", "timeout", "skipped", "unsupported", "error")
STATUS_MEANING = {
    "ok": "validated against the float64 reference, then timed",
    "wrong": "validation failed: the strategy returns a wrong result without raising (never timed)",
    "oom": "ran out of memory",
    "over_budget": "predicted over the memory budget: not run",
    "timeout": "one call took longer than the time budget",
    "skipped": "not run: a smaller shape of the same strategy timed out or ran out of memory",
    "unsupported": "the strategy does not apply to this model",
    "error": "the strategy, the model or the harness raised; the message says which",
}
# Cases that did not finish for lack of time or memory, or broke: neither a speed nor a correctness verdict.
FAILED = ("oom", "over_budget", "timeout", "skipped", "error")


def status_kind(status: str) -> str:
    """ok, wrong, unsupported or failed: the four answers a reader needs about one strategy on one model."""
    return status if status in ("ok", "wrong", "unsupported") else "failed"


# ---- strategies ------------------------------------------------------------------------------------------------------

# The closed form of the MLP family: the limit autodiff is measured against, not a contender (it exists only for
# plain MLPs), so verdicts and winner maps race the autodiff strategies only.
CLOSED_FORM = "analytic"
# A strategy whose first timing is within this factor of the fastest is re-timed in the playoff of its shape.
CONTENDER_MARGIN = 1.5
# A compiled strategy is named after its eager twin: vmap_jacrev_compiled is torch.compile(vmap_jacrev).
COMPILED_SUFFIX = "_compiled"


def eager_twin(strategy: str) -> str | None:
    """The eager strategy a compiled one compiles (None for a strategy that is not a compiled variant)."""
    return strategy.removesuffix(COMPILED_SUFFIX) if strategy.endswith(COMPILED_SUFFIX) else None


# ---- shapes, cases and their ids ------------------------------------------------------------------------------------

# Column lists (lists, not tuples: pandas selects columns with lists).
AXES = ["batch", "hidden", "in_dim", "out_dim"]  # the four swept sizes of a shape
AXIS_LABEL = {"batch": "batch size B", "hidden": "hidden width H", "in_dim": "input dim in",
              "out_dim": "output dim out"}
SETTING = ["model", "device", "dtype", "mode"]  # numbers are only compared inside one setting
SHAPE_COLUMNS = [*SETTING, *AXES]  # one measured shape: every strategy ran on it
# The columns that identify a case across runs and machines: a finished case is never measured twice.
KEY_COLUMNS = ["strategy", "model", "device", "dtype", *AXES, "mode"]
# What a record written before a column existed means by its absence.
KEY_DEFAULTS = {"mode": "jacobian"}
MODES = ("jacobian", "train")  # the Jacobian alone, or a training step through it (bench/run/modes.py)
DEVICE_ORDER = {"cpu": 0, "cuda": 1}


def sizes_id(sizes: Mapping[str, Any]) -> str:
    """B64-H256-in16-out16."""
    return f"B{sizes['batch']}-H{sizes['hidden']}-in{sizes['in_dim']}-out{sizes['out_dim']}"


def shape_id(model: str, dtype: str, sizes: Mapping[str, Any], mode: str = "jacobian") -> str:
    """mlp-B64-H256-in16-out16, with -float64 etc. for dtypes other than float32 and -train in train mode."""
    return f"{model}-{sizes_id(sizes)}" + ("" if dtype == "float32" else f"-{dtype}") \
        + ("" if mode == "jacobian" else f"-{mode}")


def case_id(strategy: str, device: str, shape: str) -> str:
    """The pytest id of a case: vmap_jacrev-cpu-mlp-B64-H256-in16-out16."""
    return f"{strategy}-{device}-{shape}"


def case_key(record: Mapping[str, Any]) -> tuple:
    """The finished-case key of a record (KEY_COLUMNS)."""
    return tuple(record[k] if k in record else KEY_DEFAULTS[k] for k in KEY_COLUMNS)


# ---- how numbers read -----------------------------------------------------------------------------------------------

def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)


def fmt_time(seconds: float | None) -> str:
    """3.2 ms, 417 µs, 1.95 s; — for a missing number."""
    if not _finite(seconds):
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_bytes(size: float | None) -> str:
    """1.5 GiB, 12 MiB, 300 B; — for a missing number."""
    if not _finite(size):
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


def fmt_ratio(ratio: float | None) -> str:
    """2.4×, 1234×; ∞ for infinity, — for a missing number."""
    if ratio == math.inf:
        return "∞"
    if not _finite(ratio):
        return "—"
    return f"{ratio:.0f}×" if abs(ratio) >= 1000 else f"{ratio:.3g}×"


def slug(text: str) -> str:
    """A file-name-safe piece of a plot or table name (a model given as path/to/file.py:factory, say)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"
