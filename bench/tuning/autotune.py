"""autotune(model, example_x): the fastest validated per-sample Jacobian of your own model, picked once, remembered.

    from bench import autotune

    tuned = autotune(model, x)        # validates every strategy on x, races the valid ones, remembers the pick
    J = tuned(x)                      # (B, out, in), by the strategy it picked
    print(tuned.strategy, tuned.verdict, tuned.tied_with)
    print(tuned.explain())

    lap = autotune(model, x, quantity="laplacian")(x)   # (B, out): the same for a second-order quantity (PINNs)

How a pick is made, with the suite's own parts (nothing here is a second copy of them):
1. Candidates: every registered strategy of the quantity asked for (compiled ones only with compiled=True; a closed
   form such as `analytic` only when named in `strategies`, as in a run's verdicts), less those that cannot be right
   here: one returning J.sum(1) at out > 1, a per-sample strategy when the model couples samples
   (bench.harness.reference finds out), one that keeps no graph in train mode, and a stochastic estimator (never picked
   over exact strategies).
2. Each candidate's first call on example_x is validated against the float64 reference (bench.harness.runner.validate):
   J, H or the Laplacian, or in train mode the parameter gradient of a Jacobian penalty or of the PINN step; then
   one more call is timed: the estimate a run takes from its validation call.
3. The valid candidates within ×2.5 of the fastest single call (runner.RETIME_MARGIN) are timed together as a run
   times a shape (bench.harness.timing.time_shape: interleaved shuffled sweeps, lead-in calls, blocks set aside when
   the machine slows down or other processes load it, strategies surely over ×1.5 the fastest screened out after a
   few rounds and the contenders then timed again alone), for what is left of budget_s; the verdict is a run's
   (`race`): paired ratios by sweep (stats.ratio_spreads, stats.decide_spreads, as bench.verdicts.verdicts), a winner
   or a tie.
   One process sees no between-process noise: the ratio intervals take the one measured in the project's runs
   (BETWEEN_PROCESS_SD_RATIO).

The pick is remembered per model structure and input shape (bench/tuning/cache.py: in this process and on disk). A
different input shape (the last, smaller batch of an epoch, say) is tuned again when `tuned` first sees it, once,
like cuDNN's benchmark mode; so is another dtype or device, or the model switched between train() and eval().
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench import stack_depth, stats
from bench.errors import BenchError
from bench.harness import machine, measure, modes, reference, timing
from bench.harness.runner import RETIME_MARGIN, validate
from bench.schema import FIXED_HIDDEN, MODES, QUANTITIES, RESULT_NAME, Sizes, fmt_margin, fmt_ratio, fmt_time
from bench.spec.grid import Case
from bench.tuning import cache as tunecache
from strategies import REGISTRY, Strategy, Unsupported
from strategies import names as names_of

RACE_MARGIN = RETIME_MARGIN  # a valid candidate whose single call is over this factor of the fastest's is not raced
# (a run's second process re-times what is within it): its seven rounds would cost more than the budget tells apart
RACE_RESERVE_BLOCKS = 2  # the race's window is what is left of budget_s less two blocks of rounds: the window
# closes at the end of a block, and a block set aside (the machine slowed down) is timed again
CUT_OFF = 2 * RACE_MARGIN  # an eager candidate's first call is stopped past this factor of the fastest valid call
# known (a first call may be slower than later ones: kernels, allocations; ×2 on the race margin leaves room)
# One process cannot see how much the ratio of two strategies moves from one process to the next (a run measures it
# with two worker processes and widens its verdict's intervals by it). The race takes what the project's two quick
# runs measured on their 2-core VM (on v4-quickA and v4-quickB: the between-process sd, ln,
# that covers 90% of the two processes' gaps, as bench/verdicts.py pools it): 0.068 over 96 pairs of eager
# strategies (0.040 and 0.086 in the two runs apart), 0.082 over the 60 pairs of the runs' own verdicts, which
# involve compiled strategies. On another machine this is an assumption, and explain() says so.
BETWEEN_PROCESS_SD_RATIO = {"eager": 0.068, "compiled": 0.082}
COMPILE_LIMIT_S = 300.0  # a compiled strategy's first call compiles: 7-18 s on a laptop CPU with a cold cache

__all__ = ["AutotuneError", "Pick", "Tuned", "autotune", "race"]


class AutotuneError(BenchError):
    """Bad arguments, or no strategy gives a valid Jacobian of the model (the message names every reason)."""


def race(entries: list[timing.Entry], window_s: float) -> tuple[stats.Verdict, timing.ShapeTiming]:
    """The contest of the valid candidates, the way a run decides a shape: timed together by the run's own timing
    (bench.harness.timing.time_shape) for about `window_s` of kept rounds, then the verdict of `decide`. The one place
    autotune times a race. It does not wait for other processes' load or a slow episode to pass (a run waits up to
    seconds): a block of rounds set aside is timed again at once, and past timing.MIN_SET_ASIDE the disturbed blocks
    are kept and the pick's note says so."""
    guard_s = max(60.0, 20 * (window_s + timing.MIN_ROUNDS * sum(max(e.one_call_s, timing.MIN_ROUND_S)
                                                                 for e in entries)))
    result = timing.time_shape(entries, window_s, machine.Calibration(), machine.Settler(0.0, 0.0), guard_s)
    return decide(entries), result


def decide(entries: list[timing.Entry]) -> stats.Verdict:
    """A run's verdict rule on the raced entries: the paired ratios by sweep of those still contenders
    (stats.ratio_spreads, stats.decide_spreads: bench.verdicts.verdicts does the same with the run's measured
    between-process variance; one process cannot measure it, BETWEEN_PROCESS_SD_RATIO stands for it)."""
    timed = [e for e in entries if e.error is None and e.rounds]
    contenders = [e for e in timed if e.contender] or timed
    best, spreads = stats.ratio_spreads({e.name: (e.rounds, [len(e.rounds)], e.round_sweeps) for e in contenders})
    return stats.decide_spreads(best, spreads, between_process_sd([e.name for e in contenders]) ** 2)


def between_process_sd(names: Sequence[str]) -> float:
    """The between-process sd (ln) a ratio among these strategies is taken to have (BETWEEN_PROCESS_SD_RATIO)."""
    return BETWEEN_PROCESS_SD_RATIO["compiled" if any(REGISTRY[n].compiled for n in names) else "eager"]


@dataclass
class Pick:
    """What autotune chose for one input shape, and why."""

    strategy: str
    verdict: str  # "winner" | "tie"
    tied_with: list[str] = field(default_factory=list)  # not surely more than stats.TIE_MARGIN slower than the pick
    times: dict[str, float] = field(default_factory=dict)  # median seconds per call of every valid candidate (its
    # rounds in the race; a candidate not raced: its single timed call)
    first: dict[str, float] = field(default_factory=dict)  # the single timed call after validation, which decided
    # who races and how many calls a round takes
    ratios: dict[str, list[float]] = field(default_factory=dict)  # contender -> [time / the pick's, low, high]
    raced: list[str] = field(default_factory=list)  # the candidates timed together in the race
    contenders: list[str] = field(default_factory=list)  # the raced ones not screened out: the verdict is among them
    rounds: int = 0  # sweeps of the race (a screened-out candidate ran in the first ones only)
    kept: dict[str, int] = field(default_factory=dict)  # raced candidate -> rounds kept
    refused: dict[str, str] = field(default_factory=dict)  # candidate -> why it cannot be used here
    validated: int = 0  # candidates whose first call was checked against the float64 reference
    phases: dict[str, float] = field(default_factory=dict)  # seconds of the tuning's parts: start (the model's
    # output, the cache lookup), reference (float64, and warming the strategies up), validation (first calls and the
    # single timed calls), race
    seconds: float = 0.0  # wall time of the tuning
    budget_s: float = 0.0
    note: str = ""  # a disturbed race, a fallback pick, blocks set aside
    source: str = "tuned"  # tuned | cache | results
    where: str = ""  # the cache file, or the run folder the pick comes from
    measured: str = ""  # results=: which model the run measured, where
    context: str = ""  # why the cache or the results were not used

    def saved(self) -> dict[str, Any]:
        """The fields kept in the cache file (where a pick comes from is said when it is read back)."""
        return {k: v for k, v in asdict(self).items() if k not in ("source", "where", "measured", "context")}

    @classmethod
    def from_saved(cls, data: dict[str, Any], where: str) -> Pick | None:
        """A pick read back from the cache file; None for an entry this version cannot use (a strategy no longer
        registered, or fields of the wrong kind): it is tuned again."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            pick = cls(**{**known, "source": "cache", "where": where})
            usable = (pick.strategy in REGISTRY and pick.verdict in ("winner", "tie")
                      and all(isinstance(getattr(pick, f), list) for f in ("tied_with", "raced", "contenders"))
                      and all(isinstance(getattr(pick, f), dict)
                              for f in ("times", "first", "ratios", "refused", "kept", "phases"))
                      and all(isinstance(t, (int, float)) for t in [*pick.times.values(), *pick.first.values()]))
        except TypeError:  # a field missing: written by an incompatible version
            return None
        return pick if usable else None


@dataclass(frozen=True)
class Settings:
    """autotune's arguments, checked and resolved once."""

    mode: str
    candidates: list[str]
    quantity: str
    budget_s: float
    folder: Path | None  # cache folder (None: no cache)
    results: list[Path]


def autotune(model: nn.Module, example_x: Tensor, mode: str = "jacobian", strategies: Sequence[str] | None = None,
             budget_s: float = 2.0, compiled: bool = False, cache: bool | str | PathLike = True,
             results: str | PathLike | Sequence[str | PathLike] | None = None, quantity: str = "jacobian") -> Tuned:
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
    compiled: also race the torch.compile variants (their first call compiles, up to COMPILE_LIMIT_S; compiled code
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
    settings = _settings(mode, strategies, budget_s, compiled, cache, results, quantity)
    return Tuned(model, settings, example_x)


def _settings(mode: str, strategies: Sequence[str] | None, budget_s: float, compiled: bool,
              cache: bool | str | PathLike, results: str | PathLike | Sequence[str | PathLike] | None,
              quantity: str = "jacobian") -> Settings:
    if mode not in MODES:
        raise AutotuneError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if quantity not in QUANTITIES:
        raise AutotuneError(f"quantity must be one of {', '.join(QUANTITIES)}, not {quantity!r}")
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    own = names_of(quantity)
    if strategies is None:
        names = [n for n in own if not REGISTRY[n].closed_form and not REGISTRY[n].peer and not REGISTRY[n].estimator
                 and (compiled or not REGISTRY[n].compiled)]
    else:
        unknown = [n for n in strategies if n not in REGISTRY]
        if unknown:
            raise AutotuneError(f"unknown strateg{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}: choose "
                                f"from {', '.join(own)}")
        other = [n for n in strategies if REGISTRY[n].quantity != quantity]
        if other:
            raise AutotuneError(f"{', '.join(other)} comput{'e' if len(other) > 1 else 'es'} "
                                f"{' and '.join(sorted({REGISTRY[n].quantity for n in other}))}, not a {quantity}: "
                                f"choose from {', '.join(own)}, or pass quantity=")
        names = list(dict.fromkeys(strategies))
    if not names:
        raise AutotuneError("no candidate strategy: strategies= is empty")
    if not isinstance(budget_s, (int, float)) or not budget_s > 0:
        raise AutotuneError(f"budget_s must be a positive number of seconds, not {budget_s!r}")
    runs = [] if results is None else [results] if isinstance(results, (str, PathLike)) else list(results)
    return Settings(mode, names, quantity, float(budget_s), tunecache.folder_of(cache), [Path(r) for r in runs])


Signature = tuple[tuple[int, ...], torch.dtype, torch.device, bool]  # what a pick holds for: shape, dtype, device, mode


class Tuned:
    """The strategy autotune picked, as a function: tuned(x) -> J (B, out, in), or H or the Laplacian for a
    second-order quantity. Tunes again for an input it has not seen (shape, dtype, device, or the model switched
    between train and eval)."""

    def __init__(self, model: nn.Module, settings: Settings, example_x: Tensor):
        self.model = model
        self.settings = settings
        self.picks: dict[Signature, Pick] = {}
        self.pick = self._pick_for(example_x)

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def strategy(self) -> str:
        return self.pick.strategy

    @property
    def verdict(self) -> str:
        return self.pick.verdict

    @property
    def tied_with(self) -> list[str]:
        return self.pick.tied_with

    @property
    def times(self) -> dict[str, float]:
        return self.pick.times

    @property
    def quantity(self) -> str:
        return self.settings.quantity

    def __call__(self, x: Tensor) -> Tensor:
        """J (B, out, in) of the model at x (H or the Laplacian for a second-order quantity); in train mode with its
        graph (create_graph=True)."""
        self.pick = self._pick_for(x)
        strategy = REGISTRY[self.pick.strategy]
        with torch.enable_grad():
            jac = strategy(self.model, x, create_graph=self.mode == "train")
        return jac.unsqueeze(1) if strategy.returns == "output_sum" else jac  # J.sum(1) is J at out = 1: (B, 1, in)

    def _pick_for(self, x: Tensor) -> Pick:
        if not isinstance(x, Tensor) or x.dim() != 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise AutotuneError(f"the input must be a (B, in) tensor, not {got}")
        signature = (tuple(x.shape), x.dtype, x.device, self.model.training)
        if signature not in self.picks:
            self.picks[signature] = tune(self.model, x, self.settings)
        return self.picks[signature]

    def explain(self) -> str:
        """What was refused and why, who raced, the verdict, and whether the pick came from the cache or a run."""
        return explain(self.pick, self.model, self.settings, next(k for k, v in self.picks.items() if v is self.pick))

    def __repr__(self) -> str:
        tie = f" with {', '.join(self.tied_with)}" if self.verdict == "tie" else ""
        what = self.mode if self.quantity == "jacobian" else f"{self.quantity}, {self.mode}"
        return f"<Tuned {self.strategy} ({self.verdict}{tie}, {self.pick.source}) for {what}>"


def tune(model: nn.Module, x: Tensor, settings: Settings) -> Pick:
    """The pick for inputs shaped like x: from a measured run (results=), else the cache, else validated and raced."""
    start = time.perf_counter()
    context = ""
    with _buffers_kept(model), torch.enable_grad():
        out_dim = _out_dim(model, x)
        if settings.results:
            pick, context = from_results(model, x, out_dim, settings)
            if pick is not None:
                pick.seconds = time.perf_counter() - start
                return pick
        key = tunecache.key(model, x, settings.mode, settings.candidates)
        saved = tunecache.TuneCache(settings.folder)
        hit = saved.get(key)
        pick = Pick.from_saved(hit, str(saved.path)) if hit is not None else None
        if pick is None:
            pick = measured(model, x, out_dim, settings, start)
            saved.put(key, pick.saved())
            pick.where = str(saved.path or "")
    pick.context = context
    return pick


def measured(model: nn.Module, x: Tensor, out_dim: int, settings: Settings, start: float) -> Pick:
    """Validate every candidate on x, time one call of each valid one, race those near the fastest for what is left
    of the budget; AutotuneError when none is valid."""
    phases = {"start": time.perf_counter() - start}  # what came before: the model's output, the cache lookup
    ref = _reference(model, x, settings.mode, settings.quantity)
    refused = {name: why for name in settings.candidates
               if (why := refusal(REGISTRY[name], out_dim, ref.coupled, settings.mode))}
    _warm_up([n for n in settings.candidates if n not in refused], x, settings.mode)
    phases["reference"] = time.perf_counter() - start - sum(phases.values())
    first: dict[str, float] = {}
    case = _case(x, out_dim, settings.mode, settings.quantity)
    for name in settings.candidates:
        if name in refused:
            continue
        why = first_call(REGISTRY[name], model, x, ref, case, *_first_call_limit(REGISTRY[name], first, settings))
        if why:
            refused[name] = why
            continue
        first[name] = one_call(_call(name, model, x, settings.mode))
    if not first:
        raise AutotuneError(no_valid_message(settings, refused, x, out_dim, ref.coupled))
    validated = sum(1 for n in settings.candidates if n in first or refused.get(n, "").startswith("wrong"))
    fastest = min(first, key=first.__getitem__)
    pick = Pick(strategy=fastest, verdict="winner", times=dict(first), first=first, refused=refused,
                validated=validated, budget_s=settings.budget_s, phases=phases)
    phases["validation"] = time.perf_counter() - start - sum(phases.values())
    near = [n for n in first if first[n] <= RACE_MARGIN * first[fastest]]
    if len(near) > 1:
        left_s = settings.budget_s - (time.perf_counter() - start)
        window_s = max(0.0, left_s - RACE_RESERVE_BLOCKS * timing.BLOCK_S)
        raced(pick, [timing.Entry(n, _call(n, model, x, settings.mode), first[n]) for n in near], window_s)
        phases["race"] = time.perf_counter() - start - sum(phases.values())
    pick.seconds = time.perf_counter() - start
    return pick


def raced(pick: Pick, entries: list[timing.Entry], window_s: float) -> None:
    """The race's verdict and times into `pick`. A candidate whose call raised while raced is refused with that
    error; the guard against a hang keeps what was timed before it."""
    try:
        verdict, result = race(entries, window_s)
        notes = [f"timed while the machine was disturbed ({result.unstable})" if result.unstable else "",
                 f"{result.blocks_set_aside} of {result.blocks} blocks of rounds set aside (the machine was slow or "
                 "other processes loaded it) and timed again" if result.blocks_set_aside else ""]
    except measure.CaseTimeout as exc:
        for e in entries:
            if len(e.rounds) < timing.MIN_ROUNDS_TO_DROP:
                e.error = e.error or exc
        if not any(e.error is None for e in entries):
            raise AutotuneError(f"the race of {', '.join(e.name for e in entries)} hung: {exc}") from None
        verdict = decide(entries)
        notes = [f"the race stopped early ({exc}): decided on the rounds timed before"]
        result = None
    for e in entries:
        if e.error is not None:
            pick.refused[e.name] = f"error while raced: {type(e.error).__name__}: {measure.first_line(e.error)}"
            pick.times.pop(e.name, None)
        elif e.rounds:
            pick.times[e.name] = statistics.median(e.rounds)
            pick.kept[e.name] = len(e.rounds)
    pick.strategy, pick.verdict, pick.tied_with = verdict.best, verdict.verdict, list(verdict.tied_with)
    pick.ratios = {n: list(r) for n, r in verdict.ratios.items()}
    pick.raced = [e.name for e in entries]
    pick.contenders = [verdict.best, *verdict.ratios]
    pick.rounds = result.sweeps if result else max(pick.kept.values(), default=0)
    pick.note = "; ".join(n for n in notes if n)


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


def _first_call_limit(strategy: Strategy, first: dict[str, float], settings: Settings) -> tuple[float, str]:
    """How long an eager candidate's first call may run, and why: budget_s, or once a valid candidate is known,
    CUT_OFF times its single call (at least timing.WARM_CALL_S): a slower one could not be raced, and its first call
    alone would spend the budget (jacobian_diagonal at B = 2048 runs for seconds)."""
    if not first or strategy.compiled:
        return settings.budget_s, "budget_s"
    fastest = min(first, key=first.__getitem__)
    limit = max(timing.WARM_CALL_S, CUT_OFF * first[fastest])
    if limit >= settings.budget_s:
        return settings.budget_s, "budget_s"
    return limit, f"over {fmt_margin(CUT_OFF)} {fastest}'s {fmt_time(first[fastest])}: too slow to race"


def first_call(strategy: Strategy, model: nn.Module, x: Tensor, ref: reference.Reference, case: Case,
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
             f"{_dtype(x)}):"]
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


def from_results(model: nn.Module, x: Tensor, out_dim: int, settings: Settings) -> tuple[Pick | None, str]:
    """The verdict a run measured for this model and input shape, validated on x; (None, why) when no run did."""
    from bench.report.recommend import measured_at  # the reporting side (pandas), only for results=

    batch, in_dim = x.shape
    runs = ", ".join(map(str, settings.results))
    answers = measured_at(settings.results, str(x.device), _dtype(x), settings.mode, batch, in_dim, out_dim,
                          settings.candidates, settings.quantity)
    if not answers:
        return None, (f"{runs} did not measure B={batch}, in={in_dim}, out={out_dim} ({_dtype(x)}, {settings.mode}, "
                      f"{x.device.type}): tuned here instead")
    mine = tunecache.structure(model, portable=True)
    same = [a for a in answers if _rebuilt(a, batch, in_dim, out_dim) == mine]
    if not same:
        others = ", ".join(dict.fromkeys(_measured_model(a) for a in answers))
        return None, (f"{runs} measured this input shape for other models ({others}; none has this model's modules "
                      "and parameter shapes): tuned here instead")
    answer = same[0]
    if not answer["order"]:
        return None, f"{runs} measured no valid strategy for this model at this shape: tuned here instead"
    ref = _reference(model, x, settings.mode, settings.quantity)
    case = _case(x, out_dim, settings.mode, settings.quantity)
    refused: dict[str, str] = {}
    for name in answer["order"]:
        why = refusal(REGISTRY[name], out_dim, ref.coupled, settings.mode) if name in REGISTRY else "not registered"
        why = why or first_call(REGISTRY[name], model, x, ref, case, settings.budget_s)
        if why:
            refused[name] = why
            continue
        lead = name == answer["order"][0] and answer["verdict"]
        note = "" if lead else (f"the run's best, {answer['order'][0]}, is not valid on example_x: the next fastest "
                                "measured there, with no verdict of its own")
        return Pick(strategy=name, verdict=answer["verdict"] if lead else "winner",
                    tied_with=answer["tied_with"] if lead else [], times=answer["times"], refused=refused,
                    validated=len(refused) + 1, budget_s=settings.budget_s, note=note, source="results",
                    where=answer["run"],
                    measured=(f"{_measured_model(answer)} on {answer['device']} "
                              f"({answer['device_name']}), torch {answer['torch']}, {answer['threads']} threads")), ""
    reasons = "; ".join(f"{n}: {why}" for n, why in refused.items())
    return None, f"every strategy {runs} measured valid here fails on this model ({reasons}): tuned here instead"


def _measured_model(answer: dict[str, Any]) -> str:
    """"mlp H=128"; a model of fixed sizes by its name alone (hidden is not one of its axes)."""
    return answer["model"] + ("" if answer["hidden"] == FIXED_HIDDEN else f" H={answer['hidden']}")


def _rebuilt(answer: dict[str, Any], batch: int, in_dim: int, out_dim: int) -> dict[str, list] | None:
    """The structure of the model a run measured, built again from its spec (None when it cannot be built)."""
    from bench.spec import models

    try:
        built = models.instantiate(models.resolve(answer["spec"]), Sizes(batch, answer["hidden"], in_dim, out_dim))
    except Exception:  # a model file that moved or broke: that answer cannot be checked, so it is not used
        return None
    return tunecache.structure(built, portable=True)


def explain(pick: Pick, model: nn.Module, settings: Settings, signature: Signature) -> str:
    """The short text of tuned.explain(): what is known about this pick, most useful first."""
    shape, dtype, device, _ = signature
    lines = [f"autotune · {tunecache.describe(model)} · x {tuple(shape)} {str(dtype).removeprefix('torch.')} on "
             f"{device} ({tunecache.device_name(device)}) · {_what(settings)} · torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads",
             f"pick: {pick.strategy} — {_verdict_text(pick)}"]
    if pick.source == "cache":
        lines.append(f"from the cache {pick.where}: tuned earlier in {pick.seconds:.2f} s; nothing validated or timed "
                     "now")
    elif pick.source == "results":
        lines.append(f"from the run {pick.where}: it measured {pick.measured} at this shape; nothing timed here, the "
                     "pick validated on example_x against the float64 reference")
    else:
        where = f"cache miss in {pick.where}, saved there" if pick.where else "no cache (cache=False)"
        raced = (f"{len(pick.raced)} raced together in {pick.rounds} interleaved sweeps (a run's timing)"
                 if pick.raced else "no race")
        parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in pick.phases.items() if name != "start")
        lines.append(f"tuned in {pick.seconds:.2f} s (budget {pick.budget_s:g} s{'; ' + parts if parts else ''}): "
                     f"{pick.validated} "
                     f"candidate{'' if pick.validated == 1 else 's'} validated against the float64 reference, "
                     f"{len(pick.times)} timed, {raced}; {where}")
    lines += [f"note: {text}" for text in (pick.context, pick.note) if text]
    if pick.raced:
        lines.append("raced (time per call, rounds kept, time / the pick's with its 95% interval; the verdict rests on "
                     f"this one process: each interval assumes a between-process sd of "
                     f"{between_process_sd(pick.contenders or pick.raced):.1%}, as measured by the project's runs on "
                     "their VM, not here):")
        for name in sorted(pick.raced, key=lambda n: pick.times.get(n, math.inf)):
            lines.append(f"  {name:<26} {fmt_time(pick.times.get(name)):>9} {pick.kept.get(name, 0):>4}  "
                         f"{_versus(pick, name)}")
    others = sorted((n for n in pick.times if n not in pick.raced and n != pick.strategy), key=pick.times.__getitem__)
    if others:
        basis = pick.first or pick.times
        fastest = min(basis.values())
        label = "measured in the run" if pick.source == "results" else \
            f"timed once, not raced (over {fmt_margin(RACE_MARGIN)} the fastest single call)"
        lines.append(f"{label}: " + ", ".join(f"{n} {fmt_time(pick.times[n])} ({fmt_ratio(basis[n] / fastest)})"
                                              for n in others))
    if pick.refused:
        lines += ["refused:", *grouped(pick.refused)]
    depth = stack_depth.load_reference()
    lines += [f"stack depth: {text}" for n in dict.fromkeys([pick.strategy, *pick.raced])
              if (text := stack_depth.advice_for(n, depth))]
    name = RESULT_NAME.get(settings.quantity, "out")
    lines.append(f'use: {name} = tuned(x), or {name} = strategies.REGISTRY["{pick.strategy}"](model, x'
                 + (", create_graph=True)" if settings.mode == "train" else ")"))
    return "\n".join(lines)


def _verdict_text(pick: Pick) -> str:
    if pick.verdict == "tie":
        return (f"tie with {', '.join(pick.tied_with)}: not surely more than {fmt_margin(stats.TIE_MARGIN)} slower, "
                "either is a good choice")
    if len(pick.contenders or pick.raced) > 1:  # a pick cached before `contenders` was kept: all raced
        return f"winner: every other contender is surely more than {fmt_margin(stats.TIE_MARGIN)} slower"
    if pick.raced:
        return (f"winner: every other raced candidate is surely more than {fmt_margin(stats.CONTENDER_MARGIN)} "
                "slower")
    if pick.source == "results":
        return "winner in the run's verdict" if not pick.note else "the next fastest valid one measured in the run"
    if len(pick.times) == 1:
        return "winner: the only valid strategy"
    return f"winner: the only one within {fmt_margin(RACE_MARGIN)} of the fastest single call"


def _versus(pick: Pick, name: str) -> str:
    """A raced candidate against the pick: the verdict's ratio for a contender, the ratio of medians for one that
    was screened out."""
    if name == pick.strategy:
        return "the pick"
    if name in pick.ratios:
        ratio, low, high = (f"{v:.2f}" if math.isfinite(v) else "?" for v in stats.as_interval(pick.ratios[name]))
        return f"×{ratio} [{low}–{high}]"  # "?": unknown (a cache or a run that wrote it as null)
    if name in pick.times and pick.strategy in pick.times:
        return (f"{fmt_ratio(pick.times[name] / pick.times[pick.strategy])}, screened out: surely over "
                f"{fmt_margin(stats.CONTENDER_MARGIN)} the fastest")
    return ""


# ---- small helpers ---------------------------------------------------------------------------------------------------

def _dtype(x: Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def _case(x: Tensor, out_dim: int, mode: str, quantity: str = "jacobian") -> Case:
    """The case runner.validate reads its dtype, mode and quantity from (the model has no preset name or hidden
    width)."""
    return Case(model="autotune", dtype=_dtype(x), sizes=Sizes(x.shape[0], 0, x.shape[1], out_dim), mode=mode,
                quantity=quantity)


def _call(name: str, model: nn.Module, x: Tensor, mode: str) -> Callable[[], object]:
    call = modes.timed_call(REGISTRY[name], mode)
    return lambda: call(model, x)


def _out_dim(model: nn.Module, x: Tensor) -> int:
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


def _reference(model: nn.Module, x: Tensor, mode: str, quantity: str = "jacobian"
               ) -> reference.Reference | reference.SecondOrderReference:
    try:
        return reference.of_quantity(quantity, model, x, measure.available_memory(str(x.device)) // 2,
                                     train=mode == "train")
    except reference.ModelProblem as exc:
        raise AutotuneError(f"no float64 reference can validate a strategy on this model: {exc}") from None
    except MemoryError as exc:
        raise AutotuneError(f"{exc}, over half the free memory: tune on a smaller example batch") from None
    except Exception as exc:  # the model cannot be differentiated at all: no strategy could be checked
        raise AutotuneError(f"the float64 reference of this model failed, so no strategy can be validated: "
                            f"{type(exc).__name__}: {measure.first_line(exc)}") from None


_WARM: set[tuple[str, str, torch.dtype, str]] = set()


def _warm_up(names: list[str], x: Tensor, mode: str) -> None:
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


@contextlib.contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """Tuning calls the model hundreds of times: its buffers (BatchNorm's running statistics) are put back after."""
    kept = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)


def _what(settings: Settings) -> str:
    """"jacobian" or "train" for the Jacobian (its mode), "laplacian · train" for a second-order quantity."""
    return settings.mode if settings.quantity == "jacobian" else f"{settings.quantity} · {settings.mode}"
