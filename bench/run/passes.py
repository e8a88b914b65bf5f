"""A pass of a run: its shapes handed one by one to one worker process (bench/run/workers.py), and what came back.

Pass 1 measures every case (validation, memory, timing); pass 2, in a second worker process, times each shape's
contenders again, because a process sets the speed of some calls and a rerun is another process. The host never
times anything itself: it decides what a worker need not run (bench/harness/skips.py), sends the rest, and writes
what comes back.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import strategies
from bench.harness import machine, measure, outcome, runner, timing
from bench.harness.skips import predicted_memory
from bench.run import session
from bench.run.workers import Pool, Worker
from bench.schema import CaseRecord
from bench.spec.grid import Case
from bench.spec.plan import RunPlan

Done = Callable[[CaseRecord, bool], None]  # a case's record, and whether its failure predicts larger shapes'


class Pass:
    """One worker process's pass over shapes; `close` records what it did in env.json."""

    def __init__(self, plan: RunPlan, process: int, usual_s: float | None = None, pool: Pool | None = None):
        self.plan = plan
        self.process = process
        self.pool = pool  # the run's workers, started together (None: this pass starts its own)
        self.calibration = machine.Calibration(usual_s)  # pass 2 is held to pass 1's usual speed
        self.phases = measure.Phases()  # seconds per phase of the harness, its children's included
        self.waited_s = 0.0  # spent waiting in its children: slow episodes of the machine, other processes' load
        self.shape_calibration_s: dict[str, float] = {}  # per shape (device-shape id), its calibrations' median
        self.started = time.perf_counter()
        self._worker: Worker | None = None

    @property
    def settle_left_s(self) -> float:
        """What its children may still wait, over the whole pass (runner.SETTLE_TOTAL_S in all)."""
        return max(0.0, runner.SETTLE_TOTAL_S - self.waited_s)

    @property
    def worker(self) -> Worker:
        if self._worker is None:
            with self.phases("worker start"):  # what is left of it, when the pool started it with the run
                self._worker = (self.pool.take(self.process) if self.pool is not None
                                else Worker(self.plan.folder, self.process))
        return self._worker

    def measure(self, case: Case, device: str, names: list[str], done: Done) -> None:
        """Pass 1: the named strategies of one shape, measured in a child of the worker. A child that dies in a
        strategy's first call (a crash, a hang) ends that case; the shape's other cases go to a new child."""
        left = list(names)
        while left:
            request = {"case": case.as_dict(), "device": device, "names": left}
            finished, end = self._run(request, len(left), done, f"{device}-{case.shape_id}")
            left = [n for n in left if n not in finished]
            culprit = end.get("calling")
            if culprit not in left:  # it died while timing the shape, or ended cleanly: no one to blame alone
                break
            self._failed(case, device, [culprit], end, done, f" in {culprit}'s first call")
            left.remove(culprit)
        self._failed(case, device, left, end, done)

    def _failed(self, case: Case, device: str, names: list[str], end: dict[str, Any], done: Done,
                where: str = "") -> None:
        status, message, larger = _unfinished(end, where)
        for name in names:
            strategy = strategies.REGISTRY[name]
            done(outcome.case_record(strategy, case, device, outcome.Outcome(status, message), None,
                                     predicted_memory(strategy, case)), larger)

    def retime(self, case: Case, device: str, records: list[CaseRecord], done: Done, first_slow: str = "") -> None:
        """Pass 2: one shape's contenders timed again (the child picks them: runner.to_retime); `first_slow`: why
        the first process's timing of the shape ran slower than the run's usual speed, seen in hindsight."""
        request = {"case": case.as_dict(), "device": device, "records": [r.as_dict() for r in records],
                   "first_slow": first_slow}
        finished, end = self._run(request, len(records), done, f"{device}-{case.shape_id}")
        for r in runner.to_retime(records, first_slow):
            if r.strategy not in finished:
                _, message, _ = _unfinished(end)
                done(outcome.added_process(r, None, timing.ShapeTiming([]), f"second process: {message}"), False)

    def _run(self, request: dict[str, Any], cases: int, done: Done, shape: str) -> tuple[set[str], dict[str, Any]]:
        request |= {"usual_s": self.calibration.usual_s(), "settle_left_s": self.settle_left_s}
        finished: set[str] = set()
        end: dict[str, Any] = {"end": None}
        calling = None  # the strategy whose first call runs now (None between them)
        for message in self.worker.measure(request, self.guard_s(cases)):
            if "calling" in message:
                calling = message["calling"]
            elif "record" in message:
                record = CaseRecord.from_dict(message["record"])
                finished.add(record.strategy)
                done(record, bool(message.get("predicts_larger")))
            elif "process" in message:
                self._note(message["process"], shape)
            elif "end" in message:
                end = message | {"calling": calling if message["end"] != 0 and calling not in finished else None}
        return finished, end

    def guard_s(self, cases: int) -> float:
        """How long a child may stay silent before the host kills it: twice the longest phase the child's own time
        limits allow (building the reference, a compiled first call and its retry, the timing window)."""
        budget, per_call = self.plan.grid.budget, self.plan.time_budget_s
        window = max(60.0, 20 * cases * budget.target_s + per_call * cases * timing.MIN_ROUNDS)
        return 2 * max(2 * budget.compile_s, 2 * per_call, 10 * per_call, 30.0, window)

    def _note(self, child: dict[str, Any], shape: str) -> None:
        for phase, seconds in child.get("phases", {}).items():
            self.phases.seconds[phase] += seconds
        self.calibration.history += child.get("calibrations", [])
        if child.get("calibrations"):
            self.shape_calibration_s[shape] = round(statistics.median(child["calibrations"]), 7)
        self.calibration.slow += child.get("slow", 0)
        self.waited_s += child.get("settled_s", 0.0)

    def close(self, folder: Path, interrupted: bool) -> None:
        if self._worker is not None:
            self._worker.close()
        summary = self.calibration.summary()
        if self.shape_calibration_s:
            summary["shapes"] = self.shape_calibration_s
        session.record_process(folder, self.process, self.phases.rounded(), summary,
                               time.perf_counter() - self.started, interrupted, self.waited_s)


def _unfinished(end: dict[str, Any], where: str = "") -> tuple[str, str, bool]:
    """(status, message, predicts larger shapes) of a case whose child ended before its record; `where`: in which
    strategy's call it ended, when that is known."""
    code = end.get("end")
    if end.get("killed_after_s"):
        return ("timeout", f"the worker's child was silent for {end['killed_after_s']:.0f} s{where} (a call that "
                "does not return) and was killed", True)
    if code is not None and code < 0:
        return "error", f"the worker's child died of signal {-code}{where} while measuring this shape", False
    return ("error", f"the worker's child ended (exit code {code}){where} before this case's record; see its "
            "traceback", False)
