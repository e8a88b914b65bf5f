"""What measuring a case found (`Outcome`), and the CaseRecord it becomes: first pass, a second process's rounds added,
or a failure turned into its status (bench/harness/runner.py measures; the host records the cases no worker ran)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

from bench import verdicts
from bench.harness import measure, reference, second_order, timing
from bench.harness.shapes import PreparedShape
from bench.schema import CaseRecord, case_id, is_jacobian
from bench.spec import models
from bench.spec.grid import Case
from strategies import Strategy, Unsupported


@dataclass(frozen=True)
class Outcome:
    """What measuring one case found: its status, why, and the numbers that became known on the way."""

    status: str  # "ok" before timing means valid, to be timed
    message: str = ""
    predicts_larger: bool = False  # a failure that every larger shape of the same strategy would repeat
    check: reference.Check | None = None
    setup_s: float | None = None
    warnings: list[str] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    one_call_s: float | None = None  # the validation call's time (after compiling, for a compiled strategy)
    entry: timing.Entry | None = None  # its rounds, once timed
    unstable: str = ""  # why its rounds were timed under disturbance
    wall_s: float = 0.0


def timed(outcome: Outcome, entry: timing.Entry, result: timing.ShapeTiming) -> Outcome:
    """The outcome of a valid case after its window: ok with its rounds, or the failure that stopped its rounds."""
    wall_s = outcome.wall_s + entry.spent_s
    if entry.error is not None:
        failed = failure(entry.error, None, check=outcome.check, setup_s=outcome.setup_s, warnings=outcome.warnings)
        return dataclasses.replace(failed, wall_s=wall_s)
    estimate = [outcome.check.message] if outcome.check is not None and outcome.check.ok else []  # an estimator's error
    unstable = timing.disturbed(entry, result)
    notes = estimate + [timing.note(entry)] + ([f"unstable: {unstable}"] if unstable else [])
    return dataclasses.replace(outcome, entry=entry, wall_s=wall_s, message="; ".join(n for n in notes if n),
                               unstable=unstable)


def added_process(record: CaseRecord, entry: timing.Entry | None, result: timing.ShapeTiming, problem: str,
                  forward_s: float | None = None) -> CaseRecord:
    """A record with the rounds of one more process (or, when that process could not time it, with why), and that
    process's forward pass."""
    if forward_s is not None:
        record = with_forward(record, forward_s)
    if entry is None or entry.error is not None or not entry.rounds:
        why = problem or (f"second process: {type(entry.error).__name__}: {measure.first_line(entry.error)}"
                          if entry is not None and entry.error is not None else "second process: no rounds kept")
        return dataclasses.replace(record, message="; ".join(m for m in (record.message, why) if m))
    rounds = record.round_times_s + entry.rounds
    process_rounds = (record.process_rounds or [len(record.round_times_s)]) + [len(entry.rounds)]
    parts = record.message.split("; ")
    # an estimator's error stays in its record
    estimate = [m for m in parts if m.startswith(second_order.ESTIMATE_NOTE)]
    timed_note = timing.note(entry) or "; ".join(m for m in parts if m not in estimate)
    unstable = timing.disturbed(entry, result)
    message = "; ".join(m for m in (*estimate, timed_note, f"second process unstable: {unstable}" if unstable else "")
                        if m)
    return dataclasses.replace(
        record, round_times_s=rounds, process_rounds=process_rounds,
        round_sweeps=record.round_sweeps + entry.round_sweeps, contender=record.contender or entry.contender,
        rounds_set_aside=(record.rounds_set_aside or 0) + entry.set_aside, unstable=record.unstable
        or bool(unstable), message=message, wall_s=round((record.wall_s or 0) + entry.spent_s, 4),
        **verdicts.timing_fields(rounds, process_rounds, pooled=0.0))


def replaced_process(record: CaseRecord, entry: timing.Entry, forward_s: float | None = None) -> CaseRecord:
    """A record whose first timing ran under disturbance (the machine slow, other processes' load), timed again by
    the next process undisturbed: that timing replaces the first, whose rounds count as set aside."""
    note = timing.note(entry)
    again = (f"timed again by a second process, the first having run under disturbance ({len(record.round_times_s)} "
             "rounds set aside)")
    return dataclasses.replace(
        record, round_times_s=list(entry.rounds), process_rounds=[len(entry.rounds)],
        round_sweeps=list(entry.round_sweeps), iterations=entry.iterations, contender=entry.contender,
        rounds_set_aside=(record.rounds_set_aside or 0) + len(record.round_times_s) + entry.set_aside,
        unstable=False, message="; ".join(m for m in (again, note) if m),
        forward_median_s=forward_s or record.forward_median_s,
        forward_process_s=[forward_s] if forward_s else record.forward_process_s,
        wall_s=round((record.wall_s or 0) + entry.spent_s, 4),
        **verdicts.timing_fields(entry.rounds, [len(entry.rounds)], pooled=0.0))


def process_set_aside(record: CaseRecord, entry: timing.Entry, why: str) -> CaseRecord:
    """A record timed undisturbed by its first process whose second timing ran under disturbance: the second
    process's rounds are set aside, the record keeps the first's."""
    return dataclasses.replace(
        record, rounds_set_aside=(record.rounds_set_aside or 0) + len(entry.rounds) + entry.set_aside,
        message="; ".join(m for m in (record.message, f"second process set aside: {why}") if m),
        wall_s=round((record.wall_s or 0) + entry.spent_s, 4))


def with_forward(record: CaseRecord, forward_s: float) -> CaseRecord:
    """The record with one more process's forward median; forward_median_s the geometric mean over processes."""
    medians = [*record.forward_process_s, forward_s]
    return dataclasses.replace(record, forward_process_s=medians,
                               forward_median_s=math.exp(sum(math.log(m) for m in medians) / len(medians)))


def failure(exc: BaseException, shape: PreparedShape | None, **found) -> Outcome:
    """The status of an exception raised by a strategy's call."""
    if isinstance(exc, Unsupported):
        return Outcome("unsupported", str(exc), **found)
    if isinstance(exc, measure.CaseTimeout):
        # only a single call over the budget predicts that larger shapes will time out too
        return Outcome("timeout", str(exc), predicts_larger=exc.what == "one call", **found)
    if measure.is_out_of_memory(exc):
        if shape is not None:
            measure.free(shape.device)
        return Outcome("oom", measure.first_line(exc), predicts_larger=True, **found)
    note = _one_sample_note(shape) if shape is not None else ""
    return Outcome("error", f"{type(exc).__name__}: {measure.first_line(exc)}{note}", **found)


IGNORED_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def case_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The distinct warnings a call raised (first lines), e.g. torch.func's "There is a performance drop because we
    have not yet implemented the batching rule for ...": a slow fallback that explains a slow number. Deprecation
    notices say nothing about the case and are left out."""
    found = (str(w.message).strip().splitlines()[0][:240] for w in caught
             if not issubclass(w.category, IGNORED_WARNINGS) and str(w.message).strip())
    return list(dict.fromkeys(found))


def case_record(strategy: Strategy, case: Case, device: str, outcome: Outcome, shape: PreparedShape | None,
                predicted_bytes: int, forward_s: float | None = None) -> CaseRecord:
    """The record of a case: who and where, then what its outcome measured (its interval provisional until the run
    is finished: bench/verdicts.py adds the noise of the other process)."""
    check, entry = outcome.check, outcome.entry
    rounds = {}
    if entry is not None:
        rounds = verdicts.timing_fields(entry.rounds, [len(entry.rounds)], pooled=0.0) | {
            "round_times_s": entry.rounds, "process_rounds": [len(entry.rounds)], "round_sweeps": entry.round_sweeps,
            "iterations": entry.iterations, "contender": entry.contender, "rounds_set_aside": entry.set_aside}
    prepared = shape is not None and shape.model is not None
    return CaseRecord(
        strategy=strategy.name, model=case.model, device=device, dtype=case.dtype, **case.sizes._asdict(),
        mode=case.mode, quantity=case.quantity, status=outcome.status, message=outcome.message, **rounds,
        unstable=bool(outcome.unstable),
        forward_median_s=forward_s, forward_process_s=[forward_s] if forward_s else [],
        coupled=shape.coupled if shape else None,
        module_training=shape.model.training if prepared else None,
        peak_memory_bytes=outcome.peak_memory_bytes if outcome.status == "ok" else None,
        predicted_memory_bytes=predicted_bytes,
        max_abs_error=check.max_abs_error if check else None, tolerance=check.tolerance if check else None,
        setup_s=outcome.setup_s, warnings=outcome.warnings, returns=strategy.returns,
        is_jacobian=is_jacobian(strategy.returns, case.sizes.out_dim),
        independent_samples=strategy.independent_samples, estimator=strategy.estimator, compiled=strategy.compiled,
        closed_form=strategy.closed_form, peer=strategy.peer,
        summary=strategy.summary, cost=strategy.cost, sweeps=list(case.sweeps),
        case_id=case_id(strategy.name, device, case.shape_id), wall_s=round(outcome.wall_s, 4))


def _one_sample_note(shape: PreparedShape) -> str:
    """Why a strategy may have failed: the model cannot run one sample, which per-sample strategies feed it."""
    if shape.model is None:
        return ""
    problem = models.run_problem(shape.model, shape.x[:1], shape.case.sizes.out_dim)
    return f" (the model fails on a one-sample batch, which per-sample strategies feed it: {problem})" if problem \
        else ""
