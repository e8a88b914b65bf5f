"""The run handed to pytest: one object that holds the planned run and its open folder and implements the hooks.

    plugin = JacobenchPlugin(plan, folder)
    pytest.main(["bench/run/suite.py", ...], plugins=[plugin])

It parametrizes bench/run/suite.py with the cases still to measure, gives the test each case's measurement
(`measure_case`), prints a progress line per case, stops after the current case on Ctrl-C, and finishes the folder
(summary.csv, env.json) at the end of the session. `python -m bench run` builds it; the root conftest.py builds the
same object from pytest options when bench/run/suite.py is run directly.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench import results
from bench.run import session
from bench.run.grid import Case
from bench.run.plan import RunPlan
from bench.run.runner import CaseRunner
from bench.run.session import RunFolder
from bench.schema import CaseRecord, VerdictRecord, case_id, fmt_time

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
        eta = elapsed / self.done * (self.total - self.done)
        status = record.status
        if status == "ok":
            fwd = record.forward_median_s
            ratio = f"{record.time_median_s / fwd:8.1f}x fwd" if fwd else ""
            detail = f"{fmt_time(record.time_median_s):>10} {ratio}"
            status += "" if record.is_jacobian else " (sum, not J)"
            status += " (unstable)" if record.unstable else ""
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


def playoff_line(case: Case, device: str, result: VerdictRecord) -> str:
    """"   playoff mlp-B32-H64-in8-out8 on cpu: tie grad_batched = jacobian_sum (×1.02 [0.98–1.07])"."""
    ratio = result.runner_up_ratio
    margin = f" (×{ratio[0]:.2f} [{ratio[1]:.2f}–{ratio[2]:.2f}])" if ratio and result.rounds else \
        f" (next ×{ratio[0]:.2f})" if ratio else ""
    who = " = ".join([result.best, *result.tied_with]) if result.verdict == "tie" else result.best
    where = f"   playoff {case.shape_id} on {device}: {result.verdict} {who}"
    return where + (f" vs {result.runner_up}" if result.verdict == "winner" and result.runner_up else "") \
        + margin + (" [unstable]" if result.unstable else "")


class JacobenchPlugin:
    """A planned run with its open folder, measured through pytest-benchmark's `benchmark` fixture."""

    __name__ = NAME  # pluggy registers a plugin under its __name__: `pluginmanager.has_plugin(NAME)` finds it

    def __init__(self, plan: RunPlan, folder: RunFolder):
        self.plan = plan
        self.folder = folder
        self.runner = CaseRunner(plan)
        self.progress = Progress()
        self.interrupted = False
        self.report_failures = False  # pytest's terminal is off (python -m bench run): print harness failures
        self.records = dict(folder.finished)  # every record of the run so far, by key
        self.opened_here = False  # conftest.py opened the folder for a direct pytest run: it releases it at the end
        self._last_of_shape: set[tuple] = set()  # the case keys after which a shape's playoff runs

    def pending(self) -> list[tuple[str, str, Case]]:
        """(strategy, device, case) not in cases.jsonl yet, smallest shapes first: a timeout on a small case skips
        the larger ones."""
        return [(name, device, case) for device in self.plan.devices for case in self.plan.cases
                for name in self.plan.strategies_for(case)
                if case.key(name, device) not in self.folder.finished]

    def measure_case(self, benchmark: Any, strategy: str, device: str, case: Case) -> None:
        """Measure one case, append its record to cases.jsonl (flushed: a kill -9 later loses nothing), hold the
        shape's playoff after its last case, and turn a status other than ok into a pytest skip with the message."""
        record = self.runner.run_case(benchmark, strategy, case, device)
        if record.status == "ok":
            benchmark.extra_info.update({k: v for k, v in record.as_dict().items()
                                         if k not in ("summary", "cost", "round_times_s")})
        results.append_case(self.folder.cases_path, record)
        key = case.key(strategy, device)
        self.records[key] = record
        self.progress.case_done(record)
        if key in self._last_of_shape:
            self.hold_playoff(case, device)
        if record.status != "ok":
            pytest.skip(f"{record.status}: {record.message}")

    def hold_playoff(self, case: Case, device: str) -> None:
        """Re-time the close contenders of a finished shape interleaved (bench/run/playoff.py) and append the verdict to
        playoffs.jsonl."""
        shape = [self.records[k] for k in (case.key(n, device) for n in self.plan.strategies_for(case))
                 if k in self.records]
        started = time.perf_counter()
        try:
            result = self.runner.playoff(case, device, shape)
        except Exception as exc:  # a verdict is not worth a crash: the cases are on disk already
            self.progress.line(f"playoff of {case.shape_id} on {device} failed: {type(exc).__name__}: {exc}")
            return
        if result is None:
            return
        result.wall_s = round(time.perf_counter() - started, 4)  # what the verdict cost the run
        results.append_line(self.folder.playoffs_path, result.as_dict())
        self.progress.line(playoff_line(case, device, result))

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
        self.progress.total = len(params)
        last = {(device, case): name for name, device, case in params}  # the shape's last pending strategy
        self._last_of_shape = {case.key(name, device) for (device, case), name in last.items()}
        ids = [case_id(name, device, case.shape_id) for name, device, case in params]
        metafunc.parametrize(("strategy", "device", "case"), params, ids=ids)

    @pytest.fixture(scope="session")
    def jacobench(self) -> JacobenchPlugin:
        return self

    def pytest_sessionstart(self) -> None:
        """Ctrl-C (SIGINT) stops after the current case; a second Ctrl-C aborts at once."""

        def on_sigint(signum, frame):
            if self.interrupted:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self.interrupted = True
            self.progress.line("Ctrl-C: stopping after the current case (press again to abort now)")

        signal.signal(signal.SIGINT, on_sigint)

    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        if self.interrupted:
            item.session.shouldstop = "interrupted by Ctrl-C"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and self.report_failures:  # failures are statuses: a failed test is a harness bug
            print(f"jacobench: internal failure in {report.nodeid}:\n{report.longreprtext}", file=sys.stderr)

    def pytest_sessionfinish(self) -> None:
        counts = session.finish(self.plan.folder, interrupted=self.interrupted,
                                calibration=self.runner.shapes.drift.summary())
        self.progress.line(f"{sum(counts.values())} cases in {self.plan.folder}: "
                           + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))

    def pytest_benchmark_update_machine_info(self, config: pytest.Config, machine_info: dict[str, Any]) -> None:
        import torch

        machine_info["torch"] = torch.__version__
        machine_info["torch_threads"] = torch.get_num_threads()
        machine_info["cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None

