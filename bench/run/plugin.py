"""The run handed to pytest: one object that holds the planned run and its open folder and implements the hooks.

    plugin = JacobenchPlugin(plan, folder)
    pytest.main(["bench/run/suite.py", ...], plugins=[plugin])

It parametrizes bench/run/suite.py with the shapes still to measure (one test per device and shape: its strategies
are timed together, interleaved), gives the test each shape's measurement (`measure_shape`), prints a progress line
per case, stops after the current shape on Ctrl-C, and finishes the folder at the end of the session. pytest-benchmark
times each shape's forward pass with its `benchmark` fixture and keeps one entry per case in benchmark.json
(`pytest_benchmark_update_json`). `python -m bench run` builds the plugin; the root conftest.py builds the same object
from pytest options when bench/run/suite.py is run directly.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench import results
from bench.run import finish, measure, session
from bench.run.grid import Case
from bench.run.plan import RunPlan
from bench.run.runner import ShapeRunner
from bench.run.session import RunFolder
from bench.schema import CaseRecord, fmt_time

NAME = "jacobench-run"  # the plugin's name in pytest's plugin manager


@dataclass
class Progress:
    """One line per finished case, with a count and an ETA, so a long run is never silent."""

    config: pytest.Config | None = None
    total: int = 0
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def case_done(self, record: CaseRecord) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * max(self.total - self.done, 0)
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
    """A planned run with its open folder, measured shape by shape (the first worker process of the run)."""

    __name__ = NAME  # pluggy registers a plugin under its __name__: `pluginmanager.has_plugin(NAME)` finds it

    def __init__(self, plan: RunPlan, folder: RunFolder):
        self.plan = plan
        self.folder = folder
        self.phases = measure.Phases()
        self.runner = ShapeRunner(plan, self.phases)
        self.progress = Progress()
        self.interrupted = False
        self.report_failures = False  # pytest's terminal is off (python -m bench run): print harness failures
        self.opened_here = False  # conftest.py opened the folder for a direct pytest run: it releases it at the end
        self.started = time.perf_counter()
        self.measured: list[CaseRecord] = []  # this session's records, for benchmark.json

    def pending(self) -> list[tuple[str, Case, list[str]]]:
        """(device, shape, strategies not in cases.jsonl yet), smallest shapes first: a timeout on a small case
        skips the larger ones."""
        found = []
        for device in self.plan.devices:
            for case in self.plan.cases:
                names = [n for n in self.plan.strategies_for(case) if case.key(n, device) not in self.folder.finished]
                if names:
                    found.append((device, case, names))
        return found

    def measure_shape(self, benchmark: Any, device: str, case: Case, names: list[str]) -> None:
        """Measure one shape: each case's record is appended to cases.jsonl (flushed: a kill -9 later loses
        nothing) as soon as it is final in this process."""
        if self.phases.seconds.get("startup") is None:
            self.phases.seconds["startup"] = time.perf_counter() - self.started

        def done(record: CaseRecord) -> None:
            results.append_case(self.folder.cases_path, record)
            self.measured.append(record)
            self.progress.case_done(record)

        self.runner.measure_shape(case, device, names, forward_timer(benchmark, self.plan.grid.budget.target_s / 2),
                                  done)

    # ---- pytest hooks and fixtures -------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self.progress.config = config
        self.report_failures = not config.pluginmanager.hasplugin("terminalreporter")
        # Time with a clock that waits for queued CUDA work, unless the user chose a timer.
        if config.getoption("benchmark_timer", None) in (None, "time.perf_counter", "timeit.default_timer"):
            config.option.benchmark_timer = "bench.run.measure.synced_clock"

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
        session.record_process(self.plan.folder, 1, self.phases.rounded(), self.runner.calibration.summary(),
                               time.perf_counter() - self.started, self.interrupted)

    def pytest_benchmark_update_json(self, config: pytest.Config, benchmarks: list, output_json: dict) -> None:
        """One entry per timed case beside the forward passes pytest-benchmark timed (finishing the run replaces
        them with the entries of both processes)."""
        output_json["benchmarks"] = output_json.get("benchmarks", []) + finish.benchmark_entries(self.measured)

    def pytest_benchmark_update_machine_info(self, config: pytest.Config, machine_info: dict[str, Any]) -> None:
        import torch

        machine_info["torch"] = torch.__version__
        machine_info["torch_threads"] = torch.get_num_threads()
        machine_info["cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None


def forward_timer(benchmark: Any, target_s: float) -> Callable[[Callable[[], object]], float]:
    """Times a shape's forward pass with pytest-benchmark (its entry in benchmark.json): iterations so a round lasts
    well above the clock's resolution; the median seconds per call."""

    def time_forward(forward: Callable[[], object]) -> float:
        forward()
        start = measure.synced_clock()
        forward()
        p = measure.round_plan(measure.synced_clock() - start, target_s)
        benchmark.extra_info["kind"] = "forward"
        benchmark.pedantic(forward, rounds=p.rounds, iterations=p.iterations, warmup_rounds=1)
        return benchmark.stats.stats.median

    return time_forward

