"""Measurement primitives: a CUDA-synchronizing clock, time limits, the float64 reference, validation, peak memory.

Nothing here knows about grids, result files or reports.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import math
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

# Relative tolerance per dtype: max|J - J_ref| <= RTOL[dtype] * max|J_ref|.
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def synced_clock() -> float:
    """perf_counter after waiting for queued CUDA work: the timer pytest-benchmark uses (--benchmark-timer)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class CaseTimeout(Exception):
    """A strategy call (or a phase of a case) ran past its time limit."""

    def __init__(self, what: str, seconds: float):
        super().__init__(f"{what} ran past {seconds:.3g} s")
        self.what = what


@contextlib.contextmanager
def time_limit(seconds: float, what: str = "one call") -> Iterator[None]:
    """Raise CaseTimeout in the main thread after `seconds` (SIGALRM, like asv). Python loops are interrupted at once;
    a single long native kernel is interrupted when it returns. Elsewhere (threads, no SIGALRM) no limit applies."""
    if seconds <= 0 or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(what, seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Plan:
    rounds: int
    iterations: int  # calls per round, so one round lasts well above the timer's resolution
    warmup_rounds: int


def plan(one_call_s: float, target_s: float, min_round_s: float = 2e-3, min_rounds: int = 3,
         max_rounds: int = 200) -> Plan:
    """Iterations so a round lasts >= min_round_s (perf_counter resolves ~100 ns), rounds to fill target_s."""
    one_call_s = max(one_call_s, 1e-7)
    iterations = max(1, math.ceil(min_round_s / one_call_s))
    rounds = int(min(max_rounds, max(min_rounds, target_s // (iterations * one_call_s))))
    return Plan(rounds=rounds, iterations=iterations, warmup_rounds=1)


def median_time(fn: Callable[[], object], target_s: float) -> float:
    """Median seconds per call of fn (after one warm-up call), for the forward pass; same rules as the benchmark."""
    fn()
    start = synced_clock()
    fn()
    p = plan(synced_clock() - start, target_s)
    times = []
    for _ in range(p.rounds):
        start = synced_clock()
        for _ in range(p.iterations):
            fn()
        times.append((synced_clock() - start) / p.iterations)
    return statistics.median(times)


def samples_coupled(model: nn.Module, x: Tensor) -> bool:
    """Does changing sample 0 change any other output row? (BatchNorm in train mode does; an MLP does not.)"""
    if x.shape[0] < 2:
        return False
    with torch.no_grad():
        before = model(x)[1:]  # [B-1, out]
        moved = x.clone()
        moved[0] += 1.0
        after = model(moved)[1:]
    scale = before.abs().max().item() + 1.0
    return (after - before).abs().max().item() > 1e-12 * scale


def coupled_reference_bytes(batch: int, hidden: int, in_dim: int, out_dim: int) -> int:
    """The full (B, out, B, in) float64 Jacobian, vectorized over B·out backward passes through width H."""
    return 8 * batch * out_dim * batch * (in_dim + 2 * hidden)


def reference_jacobian(model: nn.Module, x: Tensor, memory_budget: int | None = None,
                       hidden: int = 0) -> tuple[Tensor, bool]:
    """The float64 per-sample Jacobian [B, out, in] of `model` at `x`, and whether samples are coupled.

    A float64 copy of the model: reverse mode one output at a time, or forward mode (dual numbers) one input at a
    time, whichever takes fewer passes. Coupled samples need the full (B, out, B, in) Jacobian's diagonal blocks.
    """
    model64 = copy.deepcopy(model).double()
    x64 = x.detach().double()  # [B, in]
    batch, in_dim = x64.shape
    coupled = samples_coupled(model64, x64)
    if coupled:
        out_dim = model64(x64).shape[1]
        needed = coupled_reference_bytes(batch, hidden, in_dim, out_dim)
        if memory_budget is not None and needed > memory_budget:
            raise MemoryError(f"the float64 reference of a batch-coupled model needs {needed / 2**30:.1f} GiB")
        full = torch.autograd.functional.jacobian(model64, x64, vectorize=True)  # [B, out, B, in]
        return torch.diagonal(full, dim1=0, dim2=2).permute(2, 0, 1).contiguous(), True
    with torch.no_grad():
        out_dim = model64(x64[:1]).shape[1]
    if in_dim <= out_dim:
        import torch.autograd.forward_ad as fwAD

        columns = []
        for i in range(in_dim):
            tangent = torch.zeros_like(x64)
            tangent[:, i] = 1
            with fwAD.dual_level():
                y = model64(fwAD.make_dual(x64, tangent))
                columns.append(fwAD.unpack_dual(y).tangent.detach())  # [B, out]
        return torch.stack(columns, dim=2), False
    leaf = x64.requires_grad_(True)
    y = model64(leaf)  # [B, out]
    rows = [torch.autograd.grad(y[:, o].sum(), leaf, retain_graph=True)[0] for o in range(out_dim)]  # [B, in] each
    return torch.stack(rows, dim=1), False


@dataclass(frozen=True)
class Check:
    ok: bool
    max_abs_error: float | None
    tolerance: float
    message: str


def validate(output: object, reference: Tensor, returns: str, dtype: torch.dtype) -> Check:
    """Compare a strategy's output with the float64 reference (J, or J.sum(1) for "output_sum")."""
    expected = reference.sum(1) if returns == "output_sum" else reference
    tolerance = RTOL.get(dtype, 1e-4) * expected.abs().max().item() + torch.finfo(dtype).tiny
    if not isinstance(output, Tensor):
        return Check(False, None, tolerance, f"returned {type(output).__name__}, not a Tensor")
    if tuple(output.shape) != tuple(expected.shape):
        return Check(False, None, tolerance, f"returned shape {tuple(output.shape)}, expected {tuple(expected.shape)}")
    error = (output.detach().to(expected.device, torch.float64) - expected).abs().max().item()
    if not math.isfinite(error):
        return Check(False, None, tolerance, "returned NaN or inf")
    if error > tolerance:
        return Check(False, error, tolerance, f"max abs error {error:.3g} > tolerance {tolerance:.3g}")
    return Check(True, error, tolerance, "")


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _release_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back so the next peak is not hidden by reuse


def peak_memory(fn: Callable[[], object], device: str) -> int | None:
    """Peak bytes allocated during fn() above what was allocated before it (None where it cannot be measured).

    CUDA: max_memory_allocated after reset_peak_memory_stats. CPU: reset the peak RSS by writing 5 to
    /proc/self/clear_refs, then read VmHWM (Linux), minus VmRSS before the call.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del result
        return peak
    try:
        _release_freed_memory()
        before = _status_kib("VmRSS")
        _CLEAR_REFS.write_text("5")
    except (OSError, KeyError):
        return None
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    return max(0, peak - before) * 1024


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def available_memory(device: str) -> int:
    """Bytes free for one case now: CUDA free memory, or MemAvailable on the host."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return free
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
