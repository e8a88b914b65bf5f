"""Lets `pytest bench/run/suite.py --grid smoke ...`, run directly, go through the same plugin as `make bench`.

`python -m bench run` hands pytest a ready `bench.run.plugin.JacobenchPlugin`; run directly, this file builds that
object from the run settings (bench/spec/settings.py: the same options as `python -m bench run`) and writes the
report at the end. Only when bench/run/suite.py is among the arguments: `make test` never plans or opens a run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.spec import settings

SUITE = Path(__file__).parent / "bench" / "run" / "suite.py"


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser.getgroup("jacobench").addoption)


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its timer option
def pytest_configure(config: pytest.Config) -> None:
    from bench.run.plugin import NAME

    if config.pluginmanager.has_plugin(NAME) or not any(_is_suite(arg) for arg in config.args):
        return
    from bench.errors import BenchError
    from bench.run.plugin import JacobenchPlugin
    from bench.run.session import open_run
    from bench.scale.shards import planned

    chosen = settings.from_namespace({f.name: config.getoption(f.name) for f in settings.declared()})
    try:
        plan = planned(chosen)
        plugin = JacobenchPlugin(plan, open_run(plan))
        plugin.opened_here = True
        config.pluginmanager.register(plugin, NAME)
    except BenchError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_unconfigure(config: pytest.Config) -> None:
    from bench.errors import BenchError
    from bench.run.plugin import NAME

    plugin = config.pluginmanager.get_plugin(NAME)
    if plugin is None or not plugin.opened_here:
        return
    try:
        from bench.cli import _report
        from bench.run.host import complete

        complete(plugin.plan, plugin.interrupted, report=_report)
    except BenchError as exc:
        print(f"jacobench: error: {exc}", file=sys.stderr)
    finally:
        plugin.folder.release()


def _is_suite(arg: str) -> bool:
    return Path(arg.split("::")[0]).resolve() == SUITE.resolve()
