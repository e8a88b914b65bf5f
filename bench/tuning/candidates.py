"""Who may be picked, and whether each candidate is valid here: what rules a strategy out before calling it, its
first call checked against the float64 reference (bench.harness.runner.validate, as a run validates), under a time
limit, and the one timed call that decides who races."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench.harness import measure, modes, reference, second_order, timing
from bench.harness.runner import RETIME_MARGIN, validate
from bench.schema import Sizes, fmt_margin, fmt_time
from bench.spec.grid import Budget, Case
from bench.tuning.options import AutotuneError, Settings
from strategies import REGISTRY, Strategy, Unsupported

CUT_OFF = 2 * RETIME_MARGIN  # an eager candidate's first call is stopped past this factor of the fastest valid call
# known: one over RETIME_MARGIN is not raced, and a first call may be slower than later ones (kernels, allocations)
COMPILE_LIMIT_S = Budget().compile_s  # a compiled strategy's first call compiles: a run's limit for it

Reference = reference.Reference | second_order.SecondOrderReference


def refusal(strategy: Strategy, out_dim: int, coupled: bool, mode: str) -> str:
    """Why a strategy cannot give this model's Jacobian (or Hessian, or Laplacian), known before calling it ("" when
    it may)."""
    if strategy.estimator:
        return "a stochastic estimate: never picked over exact strategies (call it through strategies.REGISTRY)"
    if strategy.returns == "output_sum" and out_dim > 1:
        return f"returns J.sum(1), shape (B, in): the Jacobian only at out = 1, here out = {out_dim}"
    if coupled and strategy.independent_samples:
        return ("assumes independent samples, but this model couples them (output row b depends on other rows' "
                "inputs): its J would be silently wrong")
    if mode == "train" and not strategy.differentiable:
        return "keeps no graph to the parameters: cannot train through its J"
    return ""


def first_call_limit(strategy: Strategy, first: dict[str, float], budget_s: float) -> tuple[float, str]:
    """How long an eager candidate's first call may run, and why: budget_s, or once a valid candidate is known,
    CUT_OFF times its single call (at least timing.WARM_CALL_S): a slower one could not be raced, and its first call
    alone would spend the budget (jacobian_diagonal at B = 2048 runs for seconds)."""
    if not first or strategy.compiled:
        return budget_s, "budget_s"
    fastest = min(first, key=first.__getitem__)
    limit = max(timing.WARM_CALL_S, CUT_OFF * first[fastest])
    if limit >= budget_s:
        return budget_s, "budget_s"
    return limit, f"over {fmt_margin(CUT_OFF)} {fastest}'s {fmt_time(first[fastest])}: too slow to race"


def first_call(strategy: Strategy, model: nn.Module, x: Tensor, ref: Reference, case: Case,
               limit_s: float, limit_why: str = "budget_s") -> str:
    """The candidate's first call (a compiled one compiles in it, under COMPILE_LIMIT_S; an eager one runs under
    limit_s), checked against the float64 reference: why it cannot be used, "" when it is valid."""
    limit, why = (COMPILE_LIMIT_S, "the compile limit") if strategy.compiled else (limit_s, limit_why)
    start = time.perf_counter()
    try:
        with measure.time_limit(limit, "one call"):  # no limit where the user's program has SIGALRM in use ...
            output = modes.timed_call(strategy, case.mode)(model, x)
            measure.synced_clock()  # queued CUDA work belongs to the call
        if time.perf_counter() - start > limit:  # ... then the measured time judges it
            return f"too slow: one call took {fmt_time(time.perf_counter() - start)}, over {fmt_time(limit)} ({why})"
    except Unsupported as exc:
        return f"unsupported: {exc}"
    except measure.CaseTimeout:
        return f"too slow: one call ran past {fmt_time(limit)} ({why})"
    except Exception as exc:
        if measure.is_out_of_memory(exc):
            measure.free(str(x.device))
            return f"out of memory: {measure.first_line(exc)}"
        return f"error: {type(exc).__name__}: {measure.first_line(exc)}"
    check = validate(output, ref, strategy, case)
    return "" if check.ok else f"wrong: {check.message}"


def one_call(call: Callable[[], object]) -> float:
    """Seconds of one call after validation: the median of three, or one call alone when it is slow (a run takes
    its estimate from the validation call; here that call also loaded the model's kernels for this shape)."""
    times = []
    for _ in range(3):
        start = measure.synced_clock()
        call()
        times.append(measure.synced_clock() - start)
        if times[0] >= timing.WARM_CALL_S:
            break
    return statistics.median(times)


def no_valid_message(settings: Settings, refused: dict[str, str], x: Tensor, out_dim: int, coupled: bool) -> str:
    """One error naming the reason of every candidate."""
    batch, in_dim = x.shape
    what = ("PINN step" if settings.quantity != "jacobian" else "training step through J") \
        if settings.mode == "train" else settings.quantity.capitalize()
    lines = [f"no strategy gives a valid {what} of this model on example_x (B={batch}, in={in_dim}, out={out_dim}, "
             f"{dtype_name(x)}):"]
    lines += grouped(refused)
    if coupled and "jacobian_diagonal" not in settings.candidates:
        lines.append("  the model couples samples: jacobian_diagonal, exact for coupled samples, is not among the "
                     "candidates (strategies=)")
    if any(why.startswith("too slow") for why in refused.values()):
        lines.append(f"  a larger budget_s (now {settings.budget_s:g} s) lets slower strategies finish one call")
    return "\n".join(lines)


def grouped(refused: dict[str, str]) -> list[str]:
    """One indented line per reason, naming every candidate refused for it."""
    by_reason: dict[str, list[str]] = {}
    for name, why in refused.items():
        by_reason.setdefault(why, []).append(name)
    return [f"  {', '.join(names)}: {why}" for why, names in by_reason.items()]


def dtype_name(x: Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def case_of(x: Tensor, out_dim: int, mode: str, quantity: str = "jacobian") -> Case:
    """The case runner.validate reads its dtype, mode and quantity from (the model has no preset name or hidden
    width)."""
    return Case(model="autotune", dtype=dtype_name(x), sizes=Sizes(x.shape[0], 0, x.shape[1], out_dim), mode=mode,
                quantity=quantity)


def call_of(name: str, model: nn.Module, x: Tensor, mode: str) -> Callable[[], object]:
    call = modes.timed_call(REGISTRY[name], mode)
    return lambda: call(model, x)


def out_dim_of(model: nn.Module, x: Tensor) -> int:
    """out of model(x), refusing an output that is not (B, out)."""
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as exc:
        raise AutotuneError(f"model(example_x) on input {tuple(x.shape)} raised {type(exc).__name__}: "
                            f"{measure.first_line(exc)}") from None
    if not isinstance(y, Tensor) or y.dim() != 2 or y.shape[0] != x.shape[0]:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise AutotuneError(f"model(example_x) returned {got}; a per-sample Jacobian needs a ({x.shape[0]}, out) "
                            "tensor")
    return int(y.shape[1])


def reference_of(model: nn.Module, x: Tensor, mode: str, quantity: str = "jacobian") -> Reference:
    """The float64 reference every candidate is validated against (half the free memory at most)."""
    try:
        return second_order.of_quantity(quantity, model, x, measure.available_memory(str(x.device)) // 2,
                                     train=mode == "train")
    except reference.ModelProblem as exc:
        raise AutotuneError(f"no float64 reference can validate a strategy on this model: {exc}") from None
    except MemoryError as exc:
        raise AutotuneError(f"{exc}, over half the free memory: tune on a smaller example batch") from None
    except Exception as exc:  # the model cannot be differentiated at all: no strategy could be checked
        raise AutotuneError(f"the float64 reference of this model failed, so no strategy can be validated: "
                            f"{type(exc).__name__}: {measure.first_line(exc)}") from None


_WARM: set[tuple[str, str, torch.dtype, str]] = set()


def warm_up(names: list[str], x: Tensor, mode: str) -> None:
    """Call each strategy once on a tiny model, outside any time limit: lazy imports (torch.func pulls in dynamo and
    sympy) and kernel loading must never run inside a time-limited call (cut off, they leave torch half-initialised).
    Once per strategy, device, dtype and mode in a process; compiled strategies compile in their own first call."""
    todo = [n for n in names if (n, str(x.device), x.dtype, mode) not in _WARM and not REGISTRY[n].compiled]
    if not todo:
        return
    tiny = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)).to(x.device, x.dtype)
    tiny_x = torch.ones(2, 2, device=x.device, dtype=x.dtype)  # [2, 2]
    torch.func.vmap(torch.func.jacrev(torch.sin))(torch.ones(2, 2))
    for name in todo:
        _WARM.add((name, str(x.device), x.dtype, mode))
        with contextlib.suppress(Exception):
            modes.timed_call(REGISTRY[name], mode)(tiny, tiny_x)
