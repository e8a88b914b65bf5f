"""Shared by the end-to-end tests: run `python -m bench` in a scratch folder, with planted strategies installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLANTED = textwrap.dedent(
    '''
    """Strategies that misbehave on purpose, installed as a plugin to exercise every status."""
    import time

    import torch

    import strategies
    from strategies import Strategy


    def _wrong(model, x):
        """Zeros of the right shape: validation must catch it."""
        return torch.zeros(x.shape[0], model(x).shape[1], x.shape[1], dtype=x.dtype, device=x.device)


    def _slow(model, x):
        """Correct, but sleeps when the batch is 8 or more: a timeout."""
        if x.shape[0] >= 8:
            time.sleep(30)
        return strategies.REGISTRY["grad_loop"](model, x)


    def _hungry(model, x):
        """Claims to need a petabyte: skipped as over_budget before it runs."""
        raise AssertionError("an over-budget case must never run")


    def _crash(model, x):
        """Kills its process (a segfault in native code) from two samples on (the harness's warm-up call has two)."""
        if x.shape[0] >= 2:
            import os
            import signal
            os.kill(os.getpid(), signal.SIGSEGV)
        return strategies.REGISTRY["grad_loop"](model, x)


    def _hang(model, x):
        """Correct at one sample; from two samples on, a call no time limit can interrupt (SIGALRM blocked, as
        inside a long native kernel)."""
        if x.shape[0] >= 2:
            import signal
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(3600)
        return strategies.REGISTRY["grad_loop"](model, x)


    wrong = Strategy(name="planted_wrong", fn=_wrong, summary="returns zeros")
    crash = Strategy(name="planted_crash", fn=_crash, summary="segfaults")
    hang = Strategy(name="planted_hang", fn=_hang, summary="hangs")
    slow = Strategy(name="planted_slow", fn=_slow, independent_samples=True, summary="sleeps")
    hungry = Strategy(name="planted_hungry", fn=_hungry, summary="huge", memory_estimate=lambda *a: 10**15)
    '''
)


def install_planted(site: Path, deadly: bool = False) -> Path:
    """The planted strategies as an installed plugin in `site` (put it on PYTHONPATH); `deadly` adds the one that
    crashes its process and the one that never returns."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "planted.py").write_text(PLANTED)
    dist = site / "planted-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: planted\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[jacobench.strategies]\nplanted_wrong = planted:wrong\nplanted_slow = planted:slow\n"
        "planted_hungry = planted:hungry\n" + ("planted_crash = planted:crash\nplanted_hang = planted:hang\n"
                                               if deadly else "")
    )
    return site


# A run of one worker process and no fidelity check: for the end-to-end tests of something else (shards, job arrays,
# user models), each of which would otherwise start a second worker and fresh Timer processes (about 6 s a run here).
# The second process and the fidelity check have tests of their own (test_noise, test_shards, test_fidelity).
ONE_PROCESS = ("--processes", "1", "--fidelity", "0")

# The smoke grid with three strategies in one process: the plan that shard runs and job arrays are checked against
# (tests/conftest.py runs it once as a whole run for both).
SMOKE_THREE = ("--grid", "smoke", "--strategies", "grad_loop,vmap_jacrev,jacobian_sum", "--devices", "cpu",
               "--time-budget", "5", *ONE_PROCESS)


def bench_env(site: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (site, REPO) if p)
    return env


def bench_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench", *args]


def run_bench(cwd: Path, *args: str, site: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(bench_command(*args), cwd=cwd, env=bench_env(site), capture_output=True, text=True,
                          timeout=timeout)


def bench_main(cwd: Path, *args: str, monkeypatch, capsys) -> tuple[int, str, str]:
    """`python -m bench ARGS` run in this process (no interpreter and torch to start: for commands that measure
    nothing, such as plan, or that refuse their input): (exit code, stdout, stderr)."""
    from bench.cli import main

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    with warnings.catch_warnings():  # main() sets the process's warning display: put it back after
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse refuses an argument by exiting
            code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def strategy_params(names: list[str]) -> list:
    """Registry names as pytest parameters, a compiled strategy's marked slow: its first call on each model and shape
    compiles (seconds), so `make test-fast` leaves it out."""
    import pytest

    import strategies

    return [pytest.param(n, marks=pytest.mark.slow) if strategies.REGISTRY[n].compiled else n for n in names]


def case_params(names: list[str], case_ids: list[str], compiled_cases: tuple[str, ...]) -> list:
    """(case id, strategy name) pytest parameters: every eager strategy on every case, a compiled one only on
    `compiled_cases` and marked slow. A compiled strategy compiles once per model structure, shape and dtype (seconds
    each), so it is checked on the cases that differ in structure rather than on every case."""
    import pytest

    import strategies

    return [pytest.param(case_id, name, id=f"{case_id}-{name}",
                         marks=[pytest.mark.slow] if strategies.REGISTRY[name].compiled else [])
            for case_id in case_ids for name in names
            if not strategies.REGISTRY[name].compiled or case_id in compiled_cases]


def copy_run(run: Path, root: Path) -> None:
    """A finished run folder copied under root/results, with its name."""
    shutil.copytree(run, root / "results" / run.name, symlinks=True)
