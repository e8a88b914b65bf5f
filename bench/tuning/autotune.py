"""autotune(model, example_x): the fastest validated per-sample Jacobian of your own model, picked once, remembered.

    from bench import autotune

    tuned = autotune(model, x)        # validates every strategy on x, races the valid ones, remembers the pick
    J = tuned(x)                      # (B, out, in), by the strategy it picked
    print(tuned.strategy, tuned.verdict, tuned.tied_with)
    print(tuned.explain())

    lap = autotune(model, x, quantity="laplacian")(x)   # (B, out): the same for a second-order quantity (PINNs)

How a pick is made, with the suite's own parts (nothing here is a second copy of them; bench/tuning/__init__.py maps
the package):
1. Candidates (bench/tuning/options.py, candidates.py): every registered strategy of the quantity asked for
   (compiled ones only with compiled=True; a closed form such as `analytic` only when named in `strategies`, as in a
   run's verdicts), less those that cannot be right here: one returning J.sum(1) at out > 1, a per-sample strategy
   when the model couples samples (bench.harness.reference finds out), one that keeps no graph in train mode, and a
   stochastic estimator (never picked over exact strategies).
2. Each candidate's first call on example_x (candidates.py) is validated against the float64 reference
   (bench.harness.runner.validate): J, H or the Laplacian, or in train mode the parameter gradient of a Jacobian
   penalty or of the PINN step; then one more call is timed: the estimate a run takes from its validation call.
3. The valid candidates within ×2.5 of the fastest single call (runner.RETIME_MARGIN) are timed together as a run
   times a shape (bench.harness.timing.time_shape: interleaved shuffled sweeps, lead-in calls, blocks set aside when
   the machine slows down or other processes load it, strategies surely over ×1.5 the fastest screened out after a
   few rounds and the contenders then timed again alone), for what is left of budget_s; the verdict is a run's
   (race.py): paired ratios by sweep (stats.ratio_spreads, stats.decide_spreads, as bench.verdicts.verdicts), a winner
   or a tie.
   One process sees no between-process noise: the ratio intervals take the one measured in the project's runs
   (BETWEEN_PROCESS_SD_RATIO).

The pick is remembered per model structure and input shape (bench/tuning/cache.py: in this process and on disk). A
different input shape (the last, smaller batch of an epoch, say) is tuned again when `tuned` first sees it, once,
like cuDNN's benchmark mode; so is another dtype or device, or the model switched between train() and eval().
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

from torch import Tensor, nn

from bench.tuning.options import AutotuneError, Runs, resolve
from bench.tuning.pick import Pick
from bench.tuning.race import race
from bench.tuning.tuned import Tuned

__all__ = ["AutotuneError", "Pick", "Tuned", "autotune", "race"]


def autotune(model: nn.Module, example_x: Tensor, mode: str = "jacobian", strategies: Sequence[str] | None = None,
             budget_s: float = 2.0, compiled: bool = False, cache: bool | str | PathLike = True,
             results: Runs = None, quantity: str = "jacobian") -> Tuned:
    """Pick the fastest strategy that gives a valid per-sample Jacobian (or Hessian, or Laplacian: `quantity`) of
    `model` on inputs shaped like example_x.

    model: an nn.Module mapping (B, in) to (B, out), in the train/eval mode it will be used in (BatchNorm in train
        mode couples the samples; only jacobian_diagonal is exact then). Its buffers are restored after tuning.
    example_x: a (B, in) tensor on the device and in the dtype of later calls.
    mode: "jacobian" (J alone) or "train" (J with its graph, create_graph=True: the race times J, a penalty sum(J²)
        and its gradient with respect to the parameters, and validates that gradient; for a second-order quantity
        the PINN step: the Laplacian with its graph, the Poisson residual's mean square, its parameter gradient).
    strategies: registry names allowed to win, all of the quantity's (default: every strategy of the quantity but
        the closed forms and the stochastic estimators).
    budget_s: seconds the tuning aims at. The float64 reference, the first call of each candidate and at least
        five race rounds are taken even past it; a candidate whose single call runs past it is refused.
    compiled: also race the torch.compile variants (their first call compiles, up to a run's compile_s; compiled code
        does not train: they are refused in train mode).
    cache: True (the user cache folder: $XDG_CACHE_HOME/jacobench, else ~/.cache/jacobench), False (no cache), or a
        folder. A hit is neither validated nor timed again (like cuDNN's benchmark cache).
    results: a run folder (or several) measured by `make bench`: when a run measured this input shape for this model
        (same module types and parameter shapes, rebuilt from the run's model spec), the pick is that shape's
        verdict there, validated on example_x, with nothing timed; otherwise it is tuned here.
    quantity: "jacobian" (J (B, out, in)), "hessian" (H (B, out, in, in)) or "laplacian" (B, out), the trace of each
        output's Hessian, as a physics-informed network's loss needs it.

    Returns `tuned`: tuned(x) -> J (B, out, in) (or H, or the Laplacian); tuned.strategy, .verdict ("winner" |
    "tie"), .tied_with, .times, .explain(). A new input shape, dtype or device, or the model switched between train()
    and eval(), is tuned again when tuned(x) first sees it (the cache remembers each). Raises AutotuneError when no
    strategy is valid, with the reason of each.
    """
    if not isinstance(model, nn.Module):
        raise AutotuneError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    return Tuned(model, resolve(mode, strategies, budget_s, compiled, cache, results, quantity), example_x)
