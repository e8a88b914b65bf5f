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
   (bench.run.reference finds out), one that keeps no graph in train mode, and a stochastic estimator (never picked
   over exact strategies).
2. Each candidate's first call on example_x is validated against the float64 reference (bench.run.runner.validate):
   J, H or the Laplacian, or in train mode the parameter gradient of a Jacobian penalty or of the PINN step.
3. A first timing of every valid candidate; those within ×1.5 of the fastest (stats.is_contender) race in
   interleaved rounds with a run's verdict rule (`race`), until budget_s is spent: a winner, or a tie.

The pick is remembered per model structure and input shape (bench/tunecache.py: in this process and on disk). A
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

from bench import stats, tunecache
from bench.errors import BenchError
from bench.run import measure, modes, playoff, reference
from bench.run.grid import Case
from bench.run.runner import validate
from bench.schema import MODES, QUANTITIES, Sizes, fmt_margin, fmt_ratio, fmt_time, is_closed_form
from strategies import REGISTRY, Strategy, Unsupported

MIN_ROUND_S = 1e-3  # a timed round lasts at least this (perf_counter resolves about 100 ns)
SLOW_CALL_S = 0.05  # a call at least this long gets one round of first timing instead of three
RACE_ROUNDS = (5, playoff.ROUNDS[1])  # interleaved rounds of a race: at least (even past the budget), at most
COMPILE_LIMIT_S = 300.0  # a compiled strategy's first call compiles: 7-18 s on a laptop CPU with a cold cache

__all__ = ["AutotuneError", "Pick", "Tuned", "autotune", "race"]


class AutotuneError(BenchError):
    """Bad arguments, or no strategy gives a valid Jacobian of the model (the message names every reason)."""


def race(calls: dict[str, Callable[[], object]], iterations: dict[str, int], rounds: int, guard_s: float
         ) -> tuple[stats.Verdict, dict[str, list[float]], str]:
    """The contest of the valid contenders: `rounds` interleaved rounds, in a shuffled order each round, and the
    verdict rule of a run (bench.run.playoff.interleave, bench.stats.decide). Returns the verdict, the per-call time
    of every round, and why the machine was disturbed meanwhile ("" if it was not). The one place autotune times a
    contest: the timing of issue 18 replaces these two calls."""
    times, disturbed = playoff.interleave(calls, iterations, rounds, guard_s)
    return stats.decide(times), times, disturbed


@dataclass
class Pick:
    """What autotune chose for one input shape, and why."""

    strategy: str
    verdict: str  # "winner" | "tie"
    tied_with: list[str] = field(default_factory=list)  # not surely more than stats.TIE_MARGIN slower than the pick
    times: dict[str, float] = field(default_factory=dict)  # median seconds per call of every timed valid candidate
    # (from the race for the raced ones, else from their first timing)
    first: dict[str, float] = field(default_factory=dict)  # the first timings, which decided who races
    ratios: dict[str, list[float]] = field(default_factory=dict)  # raced contender -> [time / the pick's, low, high]
    raced: list[str] = field(default_factory=list)  # the contenders timed in interleaved rounds
    rounds: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # candidate -> why it cannot be used here
    validated: int = 0  # candidates whose first call was checked against the float64 reference
    seconds: float = 0.0  # wall time of the tuning
    budget_s: float = 0.0
    note: str = ""  # a disturbed race, a fallback pick
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
                      and all(isinstance(getattr(pick, f), list) for f in ("tied_with", "raced"))
                      and all(isinstance(getattr(pick, f), dict) for f in ("times", "first", "ratios", "refused"))
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
    own = [n for n, s in REGISTRY.items() if s.quantity == quantity]
    if strategies is None:
        names = [n for n in own if not is_closed_form(n) and not REGISTRY[n].estimator
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
    """Validate every candidate on x, time the valid ones, race the close ones; AutotuneError when none is valid."""
    ref = _reference(model, x, settings.mode, settings.quantity)
    refused = {name: why for name in settings.candidates
               if (why := refusal(REGISTRY[name], out_dim, ref.coupled, settings.mode))}
    _warm_up([n for n in settings.candidates if n not in refused], x, settings.mode)
    first: dict[str, float] = {}
    iterations: dict[str, int] = {}
    case = _case(x, out_dim, settings.mode, settings.quantity)
    for name in settings.candidates:
        if name in refused:
            continue
        why = first_call(REGISTRY[name], model, x, ref, case, settings.budget_s)
        if why:
            refused[name] = why
            continue
        first[name], iterations[name] = first_timing(_call(name, model, x, settings.mode))
    if not first:
        raise AutotuneError(no_valid_message(settings, refused, x, out_dim, ref.coupled))
    validated = sum(1 for n in settings.candidates if n in first or refused.get(n, "").startswith("wrong"))
    fastest = min(first, key=first.__getitem__)
    contenders = [n for n in first if stats.is_contender(first[n], first[fastest])]
    pick = Pick(strategy=fastest, verdict="winner", times=dict(first), first=first, refused=refused,
                validated=validated, budget_s=settings.budget_s)
    if len(contenders) > 1:
        calls = {n: _call(n, model, x, settings.mode) for n in contenders}
        round_s = sum(first[n] * iterations[n] for n in contenders)
        left = settings.budget_s - (time.perf_counter() - start)
        rounds = int(min(RACE_ROUNDS[1], max(RACE_ROUNDS[0], left // round_s)))
        verdict, round_times, disturbed = race(calls, {n: iterations[n] for n in contenders}, rounds,
                                               max(60.0, 20 * rounds * round_s))
        pick.strategy, pick.verdict, pick.tied_with = verdict.best, verdict.verdict, list(verdict.tied_with)
        pick.times |= {n: statistics.median(t) for n, t in round_times.items()}
        pick.ratios = {n: list(r) for n, r in verdict.ratios.items()}
        pick.raced, pick.rounds = contenders, rounds
        pick.note = f"the race was timed while the machine was disturbed ({disturbed})" if disturbed else ""
    pick.seconds = time.perf_counter() - start
    return pick


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


def first_call(strategy: Strategy, model: nn.Module, x: Tensor, ref: reference.Reference, case: Case,
               budget_s: float) -> str:
    """The candidate's first call (a compiled one compiles in it), checked against the float64 reference: why it
    cannot be used, "" when it is valid."""
    limit = COMPILE_LIMIT_S if strategy.compiled else budget_s
    try:
        with measure.time_limit(limit, "one call"):
            output = modes.timed_call(strategy, case.mode)(model, x)
            measure.synced_clock()  # queued CUDA work belongs to the call
    except Unsupported as exc:
        return f"unsupported: {exc}"
    except measure.CaseTimeout:
        return f"too slow: one call ran past {limit:g} s ({'the compile limit' if strategy.compiled else 'budget_s'})"
    except Exception as exc:
        if measure.is_out_of_memory(exc):
            measure.free(str(x.device))
            return f"out of memory: {measure.first_line(exc)}"
        return f"error: {type(exc).__name__}: {measure.first_line(exc)}"
    check = validate(output, ref, strategy, case)
    return "" if check.ok else f"wrong: {check.message}"


def first_timing(call: Callable[[], object]) -> tuple[float, int]:
    """(median seconds per call, calls per round): the first timing that decides who races."""
    start = measure.synced_clock()
    call()
    one = max(measure.synced_clock() - start, 1e-7)
    iterations = max(1, math.ceil(MIN_ROUND_S / one))
    rounds = 3 if one < SLOW_CALL_S else 1
    return statistics.median(measure.time_rounds(call, iterations, rounds)), iterations


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
        others = ", ".join(dict.fromkeys(f"{a['model']} H={a['hidden']}" for a in answers))
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
                    measured=(f"{answer['model']} H={answer['hidden']} on {answer['device']} "
                              f"({answer['device_name']}), torch {answer['torch']}, {answer['threads']} threads")), ""
    reasons = "; ".join(f"{n}: {why}" for n, why in refused.items())
    return None, f"every strategy {runs} measured valid here fails on this model ({reasons}): tuned here instead"


def _rebuilt(answer: dict[str, Any], batch: int, in_dim: int, out_dim: int) -> dict[str, list] | None:
    """The structure of the model a run measured, built again from its spec (None when it cannot be built)."""
    from bench.run import models

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
        raced = f"{len(pick.raced)} raced in {pick.rounds} interleaved rounds" if pick.raced else "no race"
        lines.append(f"tuned in {pick.seconds:.2f} s (budget {pick.budget_s:g} s): {pick.validated} "
                     f"candidate{'' if pick.validated == 1 else 's'} validated against the float64 reference, "
                     f"{len(pick.times)} timed, {raced}; {where}")
    lines += [f"note: {text}" for text in (pick.context, pick.note) if text]
    if pick.raced:
        lines.append("raced (time per call, time / the pick's with its 95% interval):")
        for name in sorted(pick.raced, key=lambda n: pick.times.get(n, math.inf)):
            ratio = pick.ratios.get(name)
            vs = "the pick" if name == pick.strategy else f"×{ratio[0]:.2f} [{ratio[1]:.2f}–{ratio[2]:.2f}]" \
                if ratio else ""
            lines.append(f"  {name:<26} {fmt_time(pick.times.get(name)):>9}  {vs}")
    others = sorted((n for n in pick.times if n not in pick.raced and n != pick.strategy), key=pick.times.__getitem__)
    if others:
        basis = pick.first or pick.times
        fastest = min(basis.values())
        label = "measured in the run" if pick.source == "results" else \
            f"timed once, not raced (over {fmt_margin(stats.CONTENDER_MARGIN)} the fastest first timing)"
        lines.append(f"{label}: " + ", ".join(f"{n} {fmt_time(pick.times[n])} ({fmt_ratio(basis[n] / fastest)})"
                                              for n in others))
    if pick.refused:
        lines += ["refused:", *grouped(pick.refused)]
    name = {"jacobian": "J", "hessian": "H", "laplacian": "lap"}.get(settings.quantity, "out")
    lines.append(f'use: {name} = tuned(x), or {name} = strategies.REGISTRY["{pick.strategy}"](model, x'
                 + (", create_graph=True)" if settings.mode == "train" else ")"))
    return "\n".join(lines)


def _verdict_text(pick: Pick) -> str:
    if pick.verdict == "tie":
        return (f"tie with {', '.join(pick.tied_with)}: not surely more than {fmt_margin(stats.TIE_MARGIN)} slower, "
                "either is a good choice")
    if pick.raced:
        return f"winner: every other contender is surely more than {fmt_margin(stats.TIE_MARGIN)} slower"
    if pick.source == "results":
        return "winner in the run's verdict" if not pick.note else "the next fastest valid one measured in the run"
    if len(pick.times) == 1:
        return "winner: the only valid strategy"
    return f"winner: the only one within {fmt_margin(stats.CONTENDER_MARGIN)} of the fastest first timing"


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
