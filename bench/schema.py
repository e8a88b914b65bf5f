"""The terms measurement and reporting share: statuses, sizes, the one case record, verdicts, ids, how numbers read.

Measurement writes these records and words into result files and reporting reads them back; both import them from
here and from nowhere else. `CaseRecord` is the only list of a case's fields: cases.jsonl, summary.csv and the
README's column table come from it. Nothing here imports torch, pandas or `strategies`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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
# A failure that predicts the same failure for every larger shape of the same strategy (those are then `skipped`).
PREDICTS_LARGER = ("oom", "timeout")


def status_kind(status: str) -> str:
    """ok, wrong, unsupported or failed: the four answers a reader needs about one strategy on one model."""
    return status if status in ("ok", "wrong", "unsupported") else "failed"


# ---- strategies ------------------------------------------------------------------------------------------------------

# What a strategy computes per sample: the Jacobian (B, out, in), the Hessian (B, out, in, in) or the Laplacian
# (B, out), the trace of each output's Hessian. Each quantity is its own shape: its own reference, verdict and report
# sections (the QUANTITY setting, the grid key `quantities`).
QUANTITIES = ("jacobian", "hessian", "laplacian")
QUANTITY_LABEL = {"jacobian": "Jacobian J (B, out, in)", "hessian": "Hessian H (B, out, in, in)",
                  "laplacian": "Laplacian (B, out), the trace of each output's Hessian"}
RESULT_NAME = {"jacobian": "J", "hessian": "H", "laplacian": "lap"}  # the variable a line to paste assigns
# A compiled strategy is named after its eager twin: vmap_jacrev_compiled is torch.compile(vmap_jacrev).
COMPILED_SUFFIX = "_compiled"


def is_jacobian(returns: str, out_dim: int) -> bool:
    """Whether a strategy's result is the Jacobian: J.sum(1) ("output_sum") is J only when out == 1."""
    return returns != "output_sum" or out_dim == 1


def eager_twin(strategy: str) -> str | None:
    """The eager strategy a compiled one compiles (None for a strategy that is not a compiled variant)."""
    return strategy.removesuffix(COMPILED_SUFFIX) if strategy.endswith(COMPILED_SUFFIX) else None


# ---- sizes, shapes, cases and their ids ------------------------------------------------------------------------------

# The hidden width recorded for a model of fixed sizes (a factory that takes no arguments): not an axis of it.
FIXED_HIDDEN = 0


class Sizes(NamedTuple):
    """The four swept sizes of a shape, always together and always in this order."""

    batch: int
    hidden: int
    in_dim: int
    out_dim: int

    @property
    def id(self) -> str:
        """B64-H256-in16-out16; B64-in3-out2 for a model of fixed sizes (hidden is not one of its axes)."""
        hidden = "" if self.hidden == FIXED_HIDDEN else f"-H{self.hidden}"
        return f"B{self.batch}{hidden}-in{self.in_dim}-out{self.out_dim}"

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Sizes:
        """The sizes of a record, a table row or any mapping with the four axis keys."""
        return cls(*(int(row[a]) for a in AXES))


# Column lists (lists, not tuples: pandas selects columns with lists).
AXES = list(Sizes._fields)  # the four swept sizes of a shape
AXIS_LABEL = {"batch": "batch size B", "hidden": "hidden width H", "in_dim": "input dim in",
              "out_dim": "output dim out"}
SETTING = ["model", "device", "dtype", "mode", "quantity"]  # numbers are only compared inside one setting
SHAPE_COLUMNS = [*SETTING, *AXES]  # one measured shape: every strategy of its quantity ran on it
# The columns that identify a case across runs and machines: a finished case is never measured twice.
KEY_COLUMNS = ["strategy", "model", "device", "dtype", *AXES, "mode", "quantity"]
# The quantity alone, or a training step through it (bench/harness/modes.py): the Jacobian penalty's gradient, or for
# second order the PINN step (the Poisson residual of the Laplacian, its mean square and its parameter gradient).
MODES = ("jacobian", "train")
DEVICE_ORDER = {"cpu": 0, "cuda": 1}


def sizes_id(sizes: Mapping[str, Any]) -> str:
    """B64-H256-in16-out16, from any mapping with the four axis keys."""
    return Sizes.of(sizes).id


def shape_id(model: str, dtype: str, sizes: Sizes, mode: str = "jacobian", quantity: str = "jacobian") -> str:
    """mlp-B64-H256-in16-out16, with -float64 etc. for dtypes other than float32, -hessian or -laplacian for a
    second-order quantity and -train in train mode (mlp-B64-H32-in2-out1-laplacian-train)."""
    return f"{model}-{sizes.id}" + ("" if dtype == "float32" else f"-{dtype}") \
        + ("" if quantity == "jacobian" else f"-{quantity}") + ("" if mode == "jacobian" else f"-{mode}")


def case_id(strategy: str, device: str, shape: str) -> str:
    """The pytest id of a case: vmap_jacrev-cpu-mlp-B64-H256-in16-out16."""
    return f"{strategy}-{device}-{shape}"


def case_key(record: CaseRecord | Mapping[str, Any]) -> tuple:
    """The finished-case key (KEY_COLUMNS) of a record or of a mapping with those keys."""
    get = record.get if isinstance(record, Mapping) else lambda k: getattr(record, k)
    return tuple(get(k) for k in KEY_COLUMNS)


# ---- the case record -------------------------------------------------------------------------------------------------

def _column(meaning: str, default: Any = None, *, summary: bool = True, factory: Any = None) -> Any:
    """A record field with its one-line meaning; summary=False keeps it out of summary.csv (cases.jsonl only)."""
    metadata = {"meaning": meaning, "summary": summary}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_REQUIRED = dataclasses.MISSING


@dataclass(kw_only=True)
class CaseRecord:
    """One case (strategy × model × device × dtype × sizes × mode), whatever its status: a line of cases.jsonl and a
    row of summary.csv. The order of the fields is the order of the columns."""

    strategy: str = _column("registry name: module stem, pytest id, CSV value and plot legend", _REQUIRED)
    model: str = _column("model preset, or file.factory of a user model", _REQUIRED)
    device: str = _column("cpu, cuda or cuda:N", _REQUIRED)
    dtype: str = _column("dtype of the model and input (float32, float64, ...)", _REQUIRED)
    batch: int = _column("batch size B", _REQUIRED)
    hidden: int = _column("hidden width H", _REQUIRED)
    in_dim: int = _column("input dimension in", _REQUIRED)
    out_dim: int = _column("output dimension out", _REQUIRED)
    status: str = _column("ok, wrong, oom, over_budget, timeout, skipped, unsupported or error", _REQUIRED)
    time_median_s: float | None = _column("median seconds of one full call (forward included); ok cases only")
    time_iqr_s: float | None = _column("interquartile range of the per-call times of the timed rounds")
    rounds: int | None = _column("timed rounds")
    forward_median_s: float | None = _column("median seconds of model(x) under no_grad on the same device, timed "
                                                "interleaved with the strategies")
    peak_memory_bytes: int | None = _column("peak bytes of one call above what was allocated before it")
    max_abs_error: float | None = _column("largest absolute difference from the float64 reference")
    is_jacobian: bool = _column("false where the strategy returns the sum over outputs and out > 1", True)
    time_ci_low_s: float | None = _column("low end of the 95% interval a rerun's median falls in (this machine)")
    time_ci_high_s: float | None = _column("high end of the 95% interval a rerun's median falls in (this machine)")
    unstable: bool = _column("timed while other processes loaded the CPUs or the machine ran slow (see message)",
                             False)
    mode: str = _column("jacobian: the quantity alone; train: J with its graph, the penalty and its parameter "
                        "gradient (second order: the PINN step through the Laplacian)", "jacobian")
    quantity: str = _column("what is computed per sample: jacobian (B, out, in), hessian (B, out, in, in) or "
                            "laplacian (B, out)", "jacobian")
    setup_s: float | None = _column("one-time cost before the first call (compiling); empty for eager strategies")
    log_time_sd: float | None = _column("how far ln(time_median_s) moves from run to run, as this run estimates it "
                                        "(rounds, blocks, processes); the interval is ±1.96·√2 of it")
    contender: bool | None = _column("timed to precision; false: stopped early, surely more than ×1.5 slower than "
                                     "the shape's fastest autodiff strategy (fewer rounds, a wider interval)")
    rounds_set_aside: int | None = _column("rounds timed while the machine was disturbed (slow episode, other "
                                           "processes), not kept, measured again")
    module_training: bool | None = _column("nn.Module.training of the model as its factory returned it: the mode "
                                           "it is measured in")
    message: str = _column("why the case is not ok, or what happened while it was timed", "")
    iterations: int | None = _column("calls per timed round")
    time_min_s: float | None = _column("fastest per-call time of a round")
    time_mean_s: float | None = _column("mean per-call time over the rounds")
    predicted_memory_bytes: int | None = _column("the strategy's memory estimate for this case (budget check)")
    tolerance: float | None = _column("max_abs_error must stay at or below this (scaled to dtype and to |J|; to a "
                                      "lower precision's where the model computes in one inside, e.g. under "
                                      "autocast, and the message says so)")
    returns: str = _column("what the strategy returns: jacobian, or output_sum (J.sum(1))", "jacobian")
    independent_samples: bool = _column("the strategy is right only when output row b depends on input row b alone",
                                         False)
    estimator: bool = _column("the strategy returns a stochastic estimate (its error in max_abs_error and message): "
                              "never a winner", False)
    closed_form: bool = _column("a hand-derived formula for one model family (analytic, ...): the limit shown beside "
                                "the race, never a winner", False)
    peer: str = _column("another framework's strategy on the same weights (jax): shown beside the race, never a "
                        "winner; empty for PyTorch strategies", "")
    coupled: bool | None = _column("the model couples samples on this input (found by the reference)")
    summary: str = _column("the strategy's one-line description: the API it uses", "")
    cost: str = _column("the strategy's asymptotic cost in B, H, in, out", "")
    sweeps: list[str] = _column("grid parts the shape belongs to: base, batch, hidden, in_dim, out_dim, plane, "
                                "cartesian", factory=list)
    compiled: bool = _column("the strategy compiles (torch.compile) once per shape", False)
    warnings: list[str] = _column("distinct warnings of the first call (e.g. torch.func's slow fallback)", factory=list)
    case_id: str = _column("pytest id: vmap_jacrev-cpu-mlp-B64-H256-in16-out16", "")
    wall_s: float | None = _column("seconds the harness spent on the whole case")
    round_times_s: list[float] = _column("seconds per call in each kept round, in time order, process by process",
                                         summary=False, factory=list)
    process_rounds: list[int] = _column("kept rounds from each worker process, in the order of round_times_s",
                                        summary=False, factory=list)
    round_sweeps: list[int] = _column("the sweep of its process each kept round ran in: rounds of two strategies of "
                                      "the shape with the same sweep ran side by side", summary=False, factory=list)
    forward_process_s: list[float] = _column("median seconds of model(x) in each worker process, timed interleaved "
                                             "with the shape's strategies; forward_median_s is their geometric mean",
                                             summary=False, factory=list)

    @property
    def sizes(self) -> Sizes:
        return Sizes(self.batch, self.hidden, self.in_dim, self.out_dim)

    @property
    def key(self) -> tuple:
        return case_key(self)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseRecord:
        """A record from a mapping in the current format (results.upgrade_case brings older ones there); keys this
        version does not know are ignored. KeyError names a required field that is missing."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        missing = [name for name, f in known.items() if _required(f) and name not in data]
        if missing:
            raise KeyError(", ".join(missing))
        return cls(**{k: v for k, v in data.items() if k in known})


def _required(f: dataclasses.Field) -> bool:
    return f.default is _REQUIRED and f.default_factory is dataclasses.MISSING


CASE_FIELDS = [f.name for f in dataclasses.fields(CaseRecord)]
SUMMARY_COLUMNS = [f.name for f in dataclasses.fields(CaseRecord) if f.metadata["summary"]]
COLUMN_MEANING = {f.name: f.metadata["meaning"] for f in dataclasses.fields(CaseRecord)}


def columns_table() -> str:
    """The README's table of summary.csv columns, from CaseRecord (a test keeps the README in step)."""
    rows = [f"| `{name}` | {COLUMN_MEANING[name]} |" for name in SUMMARY_COLUMNS]
    return "\n".join(["| column | meaning |", "|---|---|", *rows])


# ---- the verdict of a shape ------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class VerdictRecord:
    """The verdict of one shape (a line of verdicts.jsonl): its contenders' paired rounds, and who won."""

    model: str
    device: str
    dtype: str
    mode: str = "jacobian"
    quantity: str = "jacobian"
    batch: int
    hidden: int
    in_dim: int
    out_dim: int
    best: str  # the fastest contender (lowest median of its rounds)
    verdict: str  # "winner" | "tie"
    tied_with: list[str] = field(default_factory=list)  # contenders not surely slower than the best by the margin
    runner_up: str | None = None  # the first tied contender, else the closest
    runner_up_ratio: list[float] | None = None  # [ratio, low, high]: its time / the best's, with the 95% interval
    ratios: dict[str, list[float]] = field(default_factory=dict)  # contender -> [ratio, low, high]
    contenders: list[str] = field(default_factory=list)  # strategies not surely more than the contender margin slower
    rounds: int = 0  # paired rounds behind the ratios (a sole contender: its own rounds; its runner_up_ratio is
    # its lead over the next strategy, two medians timed apart: a point)
    processes: int = 1  # worker processes the paired rounds came from
    unstable: bool = False
    message: str = ""
    wall_s: float | None = None

    @property
    def sizes(self) -> Sizes:
        return Sizes(self.batch, self.hidden, self.in_dim, self.out_dim)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VerdictRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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


def fmt_margin(factor: float) -> str:
    """A margin factor as prose reads it: 1.05 -> "5%", 1.5 -> "×1.5"."""
    return f"{round((factor - 1) * 100):g}%" if factor < 1.2 else f"×{factor:g}"


def slug(text: str) -> str:
    """A file-name-safe piece of a plot or table name (a model given as path/to/file.py:factory, say)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"
