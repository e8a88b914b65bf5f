"""Measurement primitives: a CUDA-synchronizing clock, time limits, rounds of calls, peak memory.

Nothing here knows about grids, result files or reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


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
    """Raise CaseTimeout in the main thread after `seconds` (SIGALRM, like asv), in a process that allowed it
    (`allow_interrupts`: a worker's child, whose crash costs only itself). Python loops are interrupted at once; a
    single long native kernel when it returns. An interruption lands anywhere, also between torch entering a
    forward-mode level (or a torch.func transform, or make_fx's dispatch mode) and guarding it: the autodiff state is
    put back as it was before the call (`AutodiffState`), so the calls after it work. It can also abort the process:
    torch's own cleanup of an interrupted make_fx trace may throw where C++ cannot (terminate), which is why only a
    worker's child allows it. Elsewhere (the user's program calling autotune, a thread, no SIGALRM, or a process with
    its own SIGALRM handler or timer) no limit applies and the caller judges a slow call by its measured time."""
    with autodiff_state_kept():
        if seconds <= 0 or not _interrupts_allowed or not alarm_is_free():
            yield
            return
        with _alarm(seconds, what):
            yield


@contextlib.contextmanager
def autodiff_state_kept() -> Iterator[None]:
    """torch's global autodiff state (`AutodiffState`) put back as it was when the call inside raises, interrupted or
    not: a failed call can leave it changed for every later call of the process. A user's checkpointed model
    (torch.utils.checkpoint) that torch.compile failed to compile under a torch.func transform left saved-tensor hooks
    disabled, and every later autograd call on it raised "torch.func ... don't yet support saved tensor hooks":
    5 plain autograd strategies `error` on the two shapes with compiled strategies, `ok` on the others."""
    state = AutodiffState.now()
    try:
        yield
    except BaseException:
        state.restore()
        raise


@contextlib.contextmanager
def _alarm(seconds: float, what: str) -> Iterator[None]:
    fired = []

    def on_alarm(signum, frame):
        fired.append(True)
        raise CaseTimeout(what, seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except Exception as exc:
        if not fired:
            raise
        # whatever the interrupted code raised on its way out (its cleanup may fail too); the state is put back by
        # autodiff_state_kept
        raise exc if isinstance(exc, CaseTimeout) else CaseTimeout(what, seconds) from exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _infra_mode_keys() -> list[Any]:
    keys = torch._C._TorchDispatchModeKey
    return [getattr(keys, name) for name in ("FAKE", "PROXY", "FUNCTIONAL") if hasattr(keys, name)]


_interrupts_allowed = False


def allow_interrupts() -> None:
    """This process may be interrupted by time limits (a worker's child: bench/harness/worker.py)."""
    global _interrupts_allowed
    _interrupts_allowed = True


def alarm_is_free() -> bool:
    """SIGALRM can be used here: the main thread, no handler installed and no timer running."""
    return (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
            and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))


@dataclass(frozen=True)
class AutodiffState:
    """What an interrupted torch.func or forward-mode call can leave changed: the grad modes, the forward-mode dual
    level (only one may exist), and the torch.func transform stack."""

    grad: bool
    fwd_grad: bool
    dual_level: int
    transform_depth: int
    inplace_requires_grad: bool
    jvp_nesting: int | None  # torch.func.jvp's own count of nested jvp calls (a module global; None if absent)
    dispatch_modes: int  # Python dispatch modes on the stack (make_fx traces under them: linearize)
    infra_modes: tuple[bool, ...]  # which of the fake, proxy and functional modes are set
    function_modes: int  # torch function modes on the stack
    saved_tensor_hooks: bool  # torch.func disables them inside its transforms (torch.utils.checkpoint uses them)

    @classmethod
    def now(cls) -> AutodiffState:
        import torch._C._functorch as functorch
        import torch._functorch.eager_transforms as transforms
        import torch.autograd.forward_ad as fwad

        return cls(torch.is_grad_enabled(), torch._C._is_fwd_grad_enabled(), fwad._current_level,
                   functorch.get_dynamic_layer_stack_depth(), functorch.get_inplace_requires_grad_allowed(),
                   getattr(transforms, "JVP_NESTING", None), torch._C._len_torch_dispatch_stack(),
                   tuple(torch._C._get_dispatch_mode(key) is not None for key in _infra_mode_keys()),
                   torch._C._len_torch_function_stack(), torch._C._autograd._saved_tensors_hooks_is_enabled())

    def restore(self) -> None:
        import torch._C._functorch as functorch
        import torch._functorch.eager_transforms as transforms
        import torch.autograd.forward_ad as fwad

        if self.jvp_nesting is not None:
            transforms.JVP_NESTING = self.jvp_nesting
        while torch._C._len_torch_dispatch_stack() > self.dispatch_modes:
            torch._C._pop_torch_dispatch_stack()
        for key, was_set in zip(_infra_mode_keys(), self.infra_modes, strict=True):
            if not was_set and torch._C._get_dispatch_mode(key) is not None:
                torch._C._unset_dispatch_mode(key)
        while torch._C._len_torch_function_stack() > self.function_modes:
            torch._C._pop_torch_function_stack()

        if functorch.get_dynamic_layer_stack_depth() > self.transform_depth:
            functorch.pop_dynamic_layer_stack_and_undo_to_depth(self.transform_depth)
        if self.dual_level < 0:  # a dual level entered in C++ and never exited, whatever Python's counter says
            with contextlib.suppress(RuntimeError):
                torch._C._exit_dual_level(level=0)
        fwad._current_level = self.dual_level
        torch.set_grad_enabled(self.grad)
        torch._C._set_fwd_grad_enabled(self.fwd_grad)
        functorch.set_inplace_requires_grad_allowed(self.inplace_requires_grad)
        if self.saved_tensor_hooks and not torch._C._autograd._saved_tensors_hooks_is_enabled():
            torch._C._autograd._saved_tensors_hooks_enable()


def time_rounds(fn: Callable[[], object], iterations: int, rounds: int) -> list[float]:
    """Seconds per call of fn in each of `rounds` rounds of `iterations` calls (the clock pytest-benchmark uses)."""
    times = []
    for _ in range(rounds):
        start = synced_clock()
        for _ in range(iterations):
            fn()
        times.append((synced_clock() - start) / iterations)
    return times


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
    """Peak bytes allocated during fn() above what was allocated before it (None where it cannot be measured)."""
    return call_with_peak(fn, device)[1]


def call_with_peak(fn: Callable[[], object], device: str) -> tuple[object, int | None]:
    """fn()'s result and the peak bytes allocated during the call above what was allocated before it (None where it
    cannot be measured): the validation call of a case measures its memory too, with no call of its own.

    CUDA: max_memory_allocated after reset_peak_memory_stats. CPU: reset the peak RSS by writing 5 to
    /proc/self/clear_refs, then read VmHWM (Linux), minus VmRSS before the call.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        return result, torch.cuda.max_memory_allocated() - before
    try:
        _release_freed_memory()
        before = _status_kib("VmRSS")
        _CLEAR_REFS.write_text("5")
    except (OSError, KeyError):
        return fn(), None
    result = fn()
    return result, max(0, _status_kib("VmHWM") - before) * 1024


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


def free(device: str) -> None:
    """Give cached device memory back before the next shape is built."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type when it has none), cut to `limit` characters; with the
    next line when the first only announces it (torch.compile's "backend='inductor' raised:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0])[:limit]


class Phases:
    """Seconds this process spent per phase of the harness (env.json's `phases`): `with phases("references"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {name: round(seconds, 2) for name, seconds in self.seconds.items()}
