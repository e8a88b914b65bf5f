"""pytest options and hooks of the benchmark suite (bench/suite.py).

Options feed the Make variables: --grid, --devices, --strategies, --model, --run-id, plus budgets, --resume, --force.
The run is prepared lazily, only when bench/suite.py is collected, so `make test` never creates a run folder.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported lazily at run time: `make test` sessions never load the harness through here
    from bench.runner import CaseRunner
    from bench.session import Run

OPTIONS = {  # option -> (Settings field, help)
    "--grid": ("grid", "grid preset name or path to a .toml (default: default)"),
    "--devices": ("devices", "comma-separated: cpu,cuda (default: cpu, plus cuda when available)"),
    "--strategies": ("strategies", "comma-separated strategy names (default: all registered)"),
    "--model": ("model", "model preset or path/to/file.py:factory (default: the grid's models)"),
    "--run-id": ("run_id", "results/<run-id>/ (default: a timestamp and the grid name)"),
    "--results-dir": ("results_root", "where run folders go (default: results)"),
    "--memory-budget": ("memory_budget", "skip cases predicted above this, e.g. 4GiB (default: grid fraction)"),
    "--time-budget": ("time_budget", "seconds one strategy call may take before it is a timeout"),
    "--dtype": ("dtype", "comma-separated dtypes replacing the grid's, e.g. float64"),
    "--threads": ("threads", "torch intra-op threads for the whole run"),
}


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS  # internal: `python -m bench run` created the run folder already


def pytest_addoption(parser):
    group = parser.getgroup("jacobench")
    for flag, (_, help_text) in OPTIONS.items():
        group.addoption(flag, default=None, help=help_text)
    group.addoption("--resume", action="store_true", help="run only the cases missing from --run-id")
    group.addoption("--force", action="store_true", help="replace an existing --run-id folder")
    group.addoption("--jacobench-reopen", action="store_true", help=argparse_suppress())


_REPORT_FAILURES = False  # `python -m bench run` turns pytest's terminal off: then failures are printed here


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    global _REPORT_FAILURES
    _REPORT_FAILURES = not config.pluginmanager.hasplugin("terminalreporter")
    # Time with a clock that waits for queued CUDA work, unless the user chose a timer.
    if config.getoption("benchmark_timer", None) in (None, "time.perf_counter", "timeit.default_timer"):
        config.option.benchmark_timer = "bench.measure.synced_clock"


@dataclass
class Progress:
    """One line per finished case, with a count and an ETA, so a long run is never silent."""

    config: pytest.Config
    total: int
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def case_done(self, record: dict) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        status = record["status"]
        if status == "ok":
            fwd = record.get("forward_median_s")
            ratio = f"{record['time_median_s'] / fwd:8.1f}x fwd" if fwd else ""
            detail = f"{_fmt_time(record['time_median_s'])} {ratio}"
            status += "" if record.get("is_jacobian", True) else " (sum, not J)"
        else:
            detail = record["message"][:70]
        self.line(f"[{self.done:>4}/{self.total} eta {_fmt_eta(eta)}] {status:<16} "
                  f"{record['case_id']:<52} {detail}")

    def line(self, text: str) -> None:
        capman = self.config.pluginmanager.getplugin("capturemanager")
        if capman is None:
            print(text, flush=True)
            return
        with capman.global_and_fixture_disabled():
            print(text, flush=True)


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:8.3f} {unit:<2}"
    return f"{seconds / 1e-9:8.1f} ns"


def _fmt_eta(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


@dataclass
class Jacobench:
    run: Run
    runner: CaseRunner
    progress: Progress
    interrupted: bool = False


_STATE = pytest.StashKey[Jacobench]()


def _prepare(config) -> Jacobench:
    if _STATE in config.stash:
        return config.stash[_STATE]
    from bench.errors import BenchError
    from bench.runner import CaseRunner
    from bench.session import Settings, prepare

    values = {name: config.getoption(flag) for flag, (name, _) in OPTIONS.items() if config.getoption(flag)}
    settings = Settings(**values, resume=config.getoption("resume"), force=config.getoption("force"))
    try:
        run = prepare(settings, create=True, reopen=config.getoption("jacobench_reopen"))
    except BenchError as exc:
        raise pytest.UsageError(str(exc)) from None
    state = Jacobench(run=run, runner=CaseRunner(run), progress=Progress(config, total=0))
    config.stash[_STATE] = state
    return state


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ != "test_jacobian" or "jacobench" not in metafunc.fixturenames:
        return
    state = _prepare(metafunc.config)
    run = state.run
    params, ids = [], []
    for device in run.devices:
        for case in run.cases:  # smallest first: a timeout on a small case skips the larger ones
            for name in run.strategy_names:
                key = (name, case.model, device, case.dtype, case.batch, case.hidden, case.in_dim, case.out_dim)
                if key in run.finished:
                    continue
                params.append((name, device, case))
                ids.append(f"{name}-{device}-{case.shape_id}")
    state.progress.total = len(params)
    metafunc.parametrize(("strategy", "device", "case"), params, ids=ids)


@pytest.fixture(scope="session")
def jacobench(request) -> Jacobench:
    return _prepare(request.config)


def pytest_sessionstart(session):
    """Ctrl-C (SIGINT) stops after the current case; a second Ctrl-C aborts at once."""
    def on_sigint(signum, frame):
        state = session.config.stash.get(_STATE, None)
        if state is None or state.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        state.interrupted = True
        state.progress.line("Ctrl-C: stopping after the current case (press again to abort now)")

    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, on_sigint)


def pytest_runtest_teardown(item, nextitem):
    state = item.config.stash.get(_STATE, None)
    if state is not None and state.interrupted:
        item.session.shouldstop = "interrupted by Ctrl-C"


def pytest_runtest_logreport(report):
    if report.failed and _REPORT_FAILURES:  # failures are statuses: a failed test is a harness bug, show it
        print(f"jacobench: internal failure in {report.nodeid}:\n{report.longreprtext}", file=sys.stderr)


def pytest_sessionfinish(session, exitstatus):
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    from bench.session import finish

    counts = finish(state.run.folder, interrupted=state.interrupted)
    state.progress.line(
        f"{sum(counts.values())} cases in {state.run.folder}: "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    )


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
