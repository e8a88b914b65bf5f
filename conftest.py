"""Lets `pytest bench/run/suite.py --grid smoke ...`, run directly, go through the same plugin as `make bench`.

`python -m bench run` hands pytest a ready `bench.run.plugin.JacobenchPlugin`; run directly, this file builds that
object from the options below. Only when bench/run/suite.py is among the arguments: `make test` never plans or
opens a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE = Path(__file__).parent / "bench" / "run" / "suite.py"
OPTIONS = {  # option -> (bench.plan.Settings field, help)
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
    "--mode": ("mode", "jacobian and/or train, comma-separated, replacing the grid's"),
    "--compiled": ("compiled", "1: compiled strategies on every case, 0: on none (default: where the grid says)"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jacobench")
    for flag, (_, help_text) in OPTIONS.items():
        group.addoption(flag, default=None, help=help_text)
    group.addoption("--resume", action="store_true", help="run only the cases missing from --run-id")
    group.addoption("--force", action="store_true", help="replace an existing --run-id folder")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its timer option
def pytest_configure(config: pytest.Config) -> None:
    from bench.run.plugin import NAME

    if config.pluginmanager.has_plugin(NAME) or not any(_is_suite(arg) for arg in config.args):
        return
    from bench.errors import BenchError
    from bench.run.plan import Settings, plan_run
    from bench.run.plugin import JacobenchPlugin
    from bench.run.session import open_run

    values = {name: config.getoption(flag) for flag, (name, _) in OPTIONS.items() if config.getoption(flag)}
    try:
        plan = plan_run(Settings(**values, resume=config.getoption("resume"), force=config.getoption("force")))
        plugin = JacobenchPlugin(plan, open_run(plan))
        plugin.opened_here = True
        config.pluginmanager.register(plugin, NAME)
    except BenchError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_unconfigure(config: pytest.Config) -> None:
    from bench.run.plugin import NAME

    plugin = config.pluginmanager.get_plugin(NAME)
    if plugin is not None and plugin.opened_here:
        plugin.folder.release()


def _is_suite(arg: str) -> bool:
    return Path(arg.split("::")[0]).resolve() == SUITE.resolve()
