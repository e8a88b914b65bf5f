"""The pytest host of a run: one object that holds the planned run and its open folder and implements the hooks.

    plugin = JacobenchPlugin(plan, folder)
    pytest.main(["bench/run/suite.py", ...], plugins=[plugin])

It parametrizes bench/run/suite.py with the shapes still to measure (one test per device and shape), and each test
hands its shape to the run's first worker process (bench/run/passes.py): the host never times a call itself, so
nothing of pytest (its call stack, its heap) is in a number. The host decides the cases no worker need run (over the
memory budget, or larger than a shape that ran out of time or memory), appends every record to cases.jsonl as it
comes back, prints a progress line per case, stops after the current shape on Ctrl-C, and writes benchmark.json:
pytest-benchmark times each shape's whole measurement with its `benchmark` fixture, and the hook adds one entry per
timed case with every round the worker kept (`pytest_benchmark_update_json`). `python -m bench run` builds the
plugin; the root conftest.py builds the same object from pytest options when bench/run/suite.py is run directly.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

import strategies
from bench import results, verdicts
from bench.harness import outcome
from bench.harness.skips import SkipPolicy, predicted_memory
from bench.run.passes import Pass
from bench.run.session import RunFolder
from bench.run.workers import Pool
from bench.schema import CaseRecord, fmt_time
from bench.spec.grid import Case
from bench.spec.plan import RunPlan

NAME = "jacobench-run"  # the plugin's name in pytest's plugin manager
PRIOR_SHARE = 0.2  # the ETA trusts the forecast as much as this share of the run measured


@dataclass
class Progress:
    """One line per finished case, with a count and an ETA, so a long run is never silent.

    The ETA comes from the plan's cost model (`expected`: the predicted seconds of each case, `expected_total_s` of
    the whole run: both passes, finishing, the report; bench/scale/forecast.py), rescaled by how fast the finished
    cases went against their prediction; without a forecast, from the mean time per finished case."""

    config: pytest.Config | None = None
    total: int = 0
    done: int = 0
    started: float = field(default_factory=time.perf_counter)
    expected: dict[str, float] = field(default_factory=dict)  # case id -> predicted seconds
    expected_total_s: float = 0.0
    expected_done_s: float = 0.0

    def eta_s(self, record: CaseRecord) -> float:
        elapsed = time.perf_counter() - self.started
        if not self.expected:
            return elapsed / self.done * max(self.total - self.done, 0)
        self.expected_done_s += self.expected.get(record.case_id, 0.0)
        # how fast the run goes against the forecast, with the forecast itself as a prior worth PRIOR_SHARE of the
        # run: the first cases carry the worker's start and each shape's preparation, which a case's own prediction
        # does not hold (elapsed / predicted alone made the first ETA ×5-50 too long)
        prior_s = PRIOR_SHARE * self.expected_total_s
        pace = (elapsed + prior_s) / (self.expected_done_s + prior_s) if prior_s > 0 else 1.0
        return max(self.expected_total_s - self.expected_done_s, 0.0) * pace

    def case_done(self, record: CaseRecord) -> None:
        self.done += 1
        eta = self.eta_s(record)
        status = record.status
        if status == "ok":
            fwd = record.forward_median_s
            ratio = f"{record.time_median_s / fwd:8.1f}x fwd" if fwd else ""
            detail = f"{fmt_time(record.time_median_s):>10} {ratio}"
            status += "" if record.is_jacobian else " (sum, not J)"
            status += " (unstable)" if record.unstable else ""
            detail += "" if record.contender is not False else "  (no contender)"
        else:
            detail = record.message[:70]
        self.line(f"[{self.done:>4}/{self.total} eta {int(eta // 60)}m{int(eta % 60):02d}s] {status:<16} "
                  f"{record.case_id:<52} {detail}")

    def line(self, text: str) -> None:
        capman = self.config.pluginmanager.getplugin("capturemanager") if self.config else None
        if capman is None:
            print(text, flush=True)
            return
        with capman.global_and_fixture_disabled():
            print(text, flush=True)


class JacobenchPlugin:
    """A planned run with its open folder, measured shape by shape in the run's first worker process."""

    __name__ = NAME  # pluggy registers a plugin under its __name__: `pluginmanager.has_plugin(NAME)` finds it

    def __init__(self, plan: RunPlan, folder: RunFolder, pool: Pool | None = None):
        self.plan = plan
        self.folder = folder
        self.skips = SkipPolicy(plan.memory_budget_bytes, plan.grid.budget.memory_fraction)
        self.first = Pass(plan, process=1, pool=pool)
        self.progress = Progress()
        self.interrupted = False
        self.report_failures = False  # pytest's terminal is off (python -m bench run): print harness failures
        self.opened_here = False  # conftest.py opened the folder for a direct pytest run: it releases it at the end
        self.started = time.perf_counter()
        self.measured: list[CaseRecord] = []  # this session's records, for benchmark.json

    def pending(self) -> list[tuple[str, Case, list[str]]]:
        """(device, shape, strategies not in cases.jsonl yet), in the plan's order (RunPlan.shapes)."""
        found = []
        for device, case, names in self.plan.shapes():
            names = [n for n in names if case.key(n, device) not in self.folder.finished]
            if names:
                found.append((device, case, names))
        return found

    def measure_shape(self, benchmark: Any, device: str, case: Case, names: list[str]) -> None:
        """Measure one shape: the cases the skip rules decide are recorded here, the others in a worker; each
        record is appended to cases.jsonl (flushed: a kill -9 later loses nothing) as soon as it comes back."""
        if self.first.phases.seconds.get("startup") is None:
            self.first.phases.seconds["startup"] = time.perf_counter() - self.started

        def done(record: CaseRecord, predicts_larger: bool) -> None:
            self.skips.note(strategies.REGISTRY[record.strategy], case, device, record.status, predicts_larger)
            results.append_case(self.folder.cases_path, record)
            self.measured.append(record)
            self.progress.case_done(record)

        to_run = []
        for name in names:
            strategy = strategies.REGISTRY[name]
            skip = self.skips.reason(strategy, case, device, predicted_memory(strategy, case))
            if skip:
                done(outcome.case_record(strategy, case, device, outcome.Outcome(*skip), None,
                                         predicted_memory(strategy, case)), False)
            else:
                to_run.append(name)
        if to_run:
            benchmark.extra_info["kind"] = "shape"  # the wall time of measuring the shape, in the worker
            benchmark.pedantic(self.first.measure, args=(case, device, to_run, done), rounds=1, iterations=1)

    # ---- pytest hooks and fixtures -------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self.progress.config = config
        self.report_failures = not config.pluginmanager.hasplugin("terminalreporter")
        # Time with a clock that waits for queued CUDA work, unless the user chose a timer.
        if config.getoption("benchmark_timer", None) in (None, "time.perf_counter", "timeit.default_timer"):
            config.option.benchmark_timer = "bench.harness.measure.synced_clock"

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "jacobench" not in metafunc.fixturenames:
            return
        params = self.pending()
        self.progress.total = sum(len(names) for _, _, names in params)
        ids = [f"{device}-{case.shape_id}" for device, case, _ in params]
        metafunc.parametrize(("device", "case", "names"), params, ids=ids)

    @pytest.fixture(scope="session")
    def jacobench(self) -> JacobenchPlugin:
        return self

    def pytest_sessionstart(self) -> None:
        """Ctrl-C (SIGINT) stops after the current shape; a second Ctrl-C aborts at once."""

        def on_sigint(signum, frame):
            if self.interrupted:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self.interrupted = True
            self.progress.line("Ctrl-C: stopping after the current shape (press again to abort now)")

        signal.signal(signal.SIGINT, on_sigint)

    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        if self.interrupted:
            item.session.shouldstop = "interrupted by Ctrl-C"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and self.report_failures:  # failures are statuses: a failed test is a harness bug
            print(f"jacobench: internal failure in {report.nodeid}:\n{report.longreprtext}", file=sys.stderr)

    def pytest_sessionfinish(self) -> None:
        self.first.close(self.plan.folder, self.interrupted)

    def pytest_benchmark_update_json(self, config: pytest.Config, benchmarks: list, output_json: dict) -> None:
        """One entry per timed case beside the forward passes pytest-benchmark timed (finishing the run replaces
        them with the entries of both processes)."""
        output_json["benchmarks"] = output_json.get("benchmarks", []) + verdicts.benchmark_entries(self.measured)

    def pytest_benchmark_update_machine_info(self, config: pytest.Config, machine_info: dict[str, Any]) -> None:
        import torch

        machine_info["torch"] = torch.__version__
        machine_info["torch_threads"] = torch.get_num_threads()
        machine_info["cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
