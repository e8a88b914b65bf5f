"""Every setting of a run, declared once: its name, type, default, Make variable and help.

`python -m bench run` (argparse), `pytest bench/run/suite.py` (pytest options) and the Makefile's variables all come
from `Settings`: the flag is `--` + the name with '-' for '_', the same under pytest and on the command line, and a
test checks that the Makefile passes each one. Values stay text here; `bench.spec.plan` validates and resolves them.
Nothing here imports torch: `--help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


def _setting(default: Any, make: str, help: str) -> Any:
    return field(default=default, metadata={"make": make, "help": help})


@dataclass(frozen=True)
class Settings:
    """What the user asked for, before validation ("" = the default the help names)."""

    grid: str = _setting("default", "GRID", "grid preset (bench/spec/grids/<name>.toml) or path to a .toml")
    devices: str = _setting("", "DEVICES", "comma-separated cpu, cuda, cuda:N (default: cpu, plus cuda when "
                                           "available)")
    strategies: str = _setting("", "STRATEGIES", "comma-separated strategy names; named ones run on every case, "
                                                 "compiled ones included (default: all registered)")
    model: str = _setting("", "MODEL", "model preset or path/to/file.py:factory, replacing the grid's models")
    mode: str = _setting("", "MODE", "jacobian and/or train, comma-separated, replacing the grid's modes")
    quantity: str = _setting("", "QUANTITY", "jacobian, hessian and/or laplacian, comma-separated: what each shape "
                                             "computes, replacing the grid's quantities (default: the grid's, else "
                                             "jacobian)")
    dtype: str = _setting("", "DTYPE", "comma-separated dtypes (float32, float64, float16, bfloat16), replacing "
                                       "the grid's")
    compiled: str = _setting("", "COMPILED", "1: compiled strategies on every case, 0: on none (default: where the "
                                             "grid's blocks say compiled = true)")
    threads: str = _setting("", "THREADS", "torch intra-op threads for the whole run (default: the grid's, else "
                                           "torch's)")
    memory_budget: str = _setting("", "MEMORY_BUDGET", "skip cases predicted above this memory, e.g. 4GiB (default: "
                                                       "the grid's fraction of the free memory)")
    time_budget: str = _setting("", "TIME_BUDGET", "seconds one strategy call may take before the case is a "
                                                   "timeout (default: the grid's budget.time_s)")
    processes: str = _setting("2", "PROCESSES", "worker processes that time each shape's contenders: 2 measures "
                                                "them again in a fresh process, so intervals and verdicts include "
                                                "what a process changes; 1 is quicker and knows less; up to 4")
    fidelity: str = _setting("", "FIDELITY", "share of the first pass's wall time spent timing a sample of the run's "
                                             "cases again in fresh processes (torch.utils.benchmark.Timer), to check "
                                             "its numbers against a plain program's; 0: no check (default: 0.1)")
    run: str = _setting("", "RUN", "run id, the folder results/<run> (default: a timestamp and the grid name)")
    shard: str = _setting("", "SHARD", "k/N: measure the k-th of N shards of the plan (whole shapes, balanced by "
                                       "predicted cost) into results/<run>.shard-k-of-N; `make merge` joins them")
    results_dir: str = _setting("results", "RESULTS_DIR", "folder that holds the run folders")
    resume: bool = _setting(False, "RESUME", "finish an interrupted run: measure only the cases missing from RUN")
    force: bool = _setting(False, "FORCE", "replace an existing RUN folder")
    no_report: bool = _setting(False, "NO_REPORT", "write summary.csv only, no report and plots")


def declared() -> Iterator[dataclasses.Field]:
    return iter(dataclasses.fields(Settings))


def flag(f: dataclasses.Field) -> str:
    """--memory-budget for the setting memory_budget: one name on the command line and under pytest."""
    return "--" + f.name.replace("_", "-")


def add_options(add: Callable[..., Any]) -> None:
    """Declare every setting through `add(flag, **kwargs)`: argparse's add_argument or pytest's addoption."""
    for f in declared():
        default = f.default
        help_text = f"{f.metadata['help']} [make: {f.metadata['make']}" + ("=1]" if isinstance(default, bool) else "=]")
        if isinstance(default, bool):
            add(flag(f), dest=f.name, action="store_true", default=False, help=help_text)
        else:
            add(flag(f), dest=f.name, default=default, metavar=f.metadata["make"], help=help_text)


def from_namespace(values: argparse.Namespace | dict[str, Any]) -> Settings:
    """Settings from parsed options (missing or None values keep their defaults)."""
    get = values.get if isinstance(values, dict) else lambda name: getattr(values, name, None)
    given = {f.name: get(f.name) for f in declared() if get(f.name) is not None}
    return Settings(**given)
