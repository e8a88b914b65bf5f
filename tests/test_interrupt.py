"""An interrupted call leaves torch as it found it: forward mode, torch.func transforms and grad modes.

A time limit (SIGALRM, only ever in a worker's child) raises at whatever Python line is running, also inside
torch.func.jvp between entering a forward-mode level and guarding it; the strategies after it in the same child must
still work. Here the interruption is placed deterministically, at the n-th line torch's own Python code runs, for many
n. (An interrupted make_fx trace, linearize_batched's, can abort the process from torch's C++ cleanup: that is why
only a worker's child is ever interrupted; tests/test_workers.py shows a dying child ends its own case only.)
"""

from __future__ import annotations

import signal
import sys
import time

import pytest
import torch
import torch.autograd.forward_ad as fwad
from torch import nn

import strategies
from bench.harness import measure


def _lines_in_torch(fn) -> int:
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if event == "line" and "torch" in frame.f_code.co_filename:
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def _interrupted_at(n: int, fn) -> bool:
    """fn() with CaseTimeout raised at the n-th line of torch's code, as a SIGALRM handler would; whether it was."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if event == "line" and "torch" in frame.f_code.co_filename:
            count += 1
            if count == n:
                raise measure.CaseTimeout("one call", 0.0)
        return tracer

    state = measure.AutodiffState.now()
    sys.settrace(tracer)
    try:
        fn()
        return False
    except Exception:  # CaseTimeout, or what torch's own cleanup raised on the way out of the interrupted call
        assert count >= n
        state.restore()  # what time_limit does when its alarm interrupted the call
        return True
    finally:
        sys.settrace(None)


def _torch_still_works() -> None:
    x = torch.randn(3, 2)
    _, tangent = torch.func.jvp(torch.sin, (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, torch.cos(x))
    with fwad.dual_level():
        dual = fwad.make_dual(x, torch.ones_like(x))
        torch.testing.assert_close(fwad.unpack_dual(torch.sin(dual)).tangent, torch.cos(x))
    jac = torch.func.vmap(torch.func.jacrev(torch.sin))(x)
    torch.testing.assert_close(jac, torch.diag_embed(torch.cos(x)))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("name", ["jvp_loop", "jvp_batched", "vmap_jacfwd", "vmap_jacrev"])
def test_a_call_interrupted_anywhere_leaves_forward_mode_and_vmap_working(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(4, 3)
    call = lambda: strategies.REGISTRY[name](model, x)  # noqa: E731
    call()  # the first call also loads and caches: count the lines of a call as it runs from then on
    lines = _lines_in_torch(call)
    points = sorted(set(range(1, min(lines, 150))) | set(range(1, lines, max(1, lines // 150))))
    interrupted = 0
    for n in points:
        interrupted += _interrupted_at(n, call)
        _torch_still_works()
    assert interrupted == len(points) > 100
    torch.testing.assert_close(strategies.REGISTRY[name](model, x), strategies.REGISTRY["grad_loop"](model, x))


def test_no_time_limit_interrupts_a_process_that_did_not_allow_it(monkeypatch):
    """The user's program calling autotune: an interrupted make_fx trace can abort a process (torch's cleanup
    throws where C++ cannot), so only a worker's child is ever interrupted; elsewhere a slow call is judged by its
    measured time."""
    monkeypatch.setattr(measure, "_interrupts_allowed", False)
    with measure.time_limit(0.01):
        time.sleep(0.05)  # not interrupted
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)


def test_time_limit_leaves_a_signal_handler_of_the_process_alone(monkeypatch):
    """A process with its own SIGALRM handler (or timer): no limit is imposed and nothing is swapped."""
    monkeypatch.setattr(measure, "_interrupts_allowed", True)

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        with measure.time_limit(0.01):
            assert signal.getsignal(signal.SIGALRM) is mine
        assert signal.getsignal(signal.SIGALRM) is mine
    finally:
        signal.signal(signal.SIGALRM, previous)
    with pytest.raises(measure.CaseTimeout):  # where SIGALRM is free, the limit holds
        with measure.time_limit(0.05):
            while True:
                pass
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)


class Checkpointed(nn.Module):
    """A user's model with activation checkpointing (torch.utils.checkpoint uses saved-tensor hooks)."""

    def __init__(self):
        super().__init__()
        self.inp, self.body = nn.Linear(3, 8), nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.body, self.inp(x).tanh(), use_reentrant=False)


def test_a_call_that_raises_leaves_saved_tensor_hooks_enabled():
    """torch.compile failing on a torch.func transform of a checkpointed model left saved-tensor hooks disabled for
    the whole process: every later autograd call on the model raised. A call that raises, interrupted or not, in
    the run's worker or in the user's program (autotune), leaves torch's autodiff state as it found it."""
    torch.manual_seed(0)
    model, x = Checkpointed(), torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="broken"), measure.time_limit(0):  # no limit: the user's program
        torch._C._autograd._saved_tensors_hooks_disable("disabled by a call that failed")
        raise RuntimeError("broken")
    assert torch._C._autograd._saved_tensors_hooks_is_enabled()
    with pytest.raises(strategies.Unsupported), measure.time_limit(0):
        strategies.REGISTRY["func_sum_jacrev_compiled"](model, x)
    assert torch._C._autograd._saved_tensors_hooks_is_enabled()
    torch.testing.assert_close(strategies.REGISTRY["grad_batched"](model, x),
                               strategies.REGISTRY["vmap_jacfwd"](model, x))  # forward mode uses no saved tensors
