"""The worker process: the one place a run times anything, as a plain program would, from a shallow stack.

    python -m bench.harness.worker RUN_FOLDER PROCESS

The host (bench/run/workers.py) starts one worker per pass of a run (PROCESS 1 measures, 2 re-times the
contenders): a fresh interpreter with torch and the strategies imported, nothing else. It reads one request per line
on stdin (a shape of the plan, the strategies to measure), forks a child for it from the loop below, and the child
measures that shape alone (bench/harness/runner.py), writes one JSON line per finished case to stdout, and exits.
Every shape is thus timed in a process that has measured nothing before it: no other shape's garbage, compiled
graphs, allocator state or heap size moves its numbers, and a crash or a hang in a strategy ends one child, not the
run. The worker itself never runs parallel work (forking after OpenMP threads exist is unsafe) and never touches
CUDA (a forked child could not use it); each child sets the run's thread count and initialises its device itself.

Lines written (JSON objects): {"child": pid} when a child starts; {"calling": name} before a strategy's first call
and {"calling": null} after it (the host knows whom a crash belongs to); {"record": {...}, "predicts_larger": bool}
per case; {"process": {...}} (the child's phases, calibration and wall time); {"end": exit code} when the child is
gone.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import IO, Any

EXIT_HARNESS = 70  # the child raised past the runner (a harness bug): its remaining cases are errors


def main(argv: list[str]) -> int:
    import torch

    # inductor's first compile asks torch.utils.cpp_extension for CUDA_HOME, which logs "No CUDA runtime is found" on
    # a CPU machine with a CUDA toolkit folder: once per child, into the run's progress lines; the run says its devices
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # dynamo logs a graph break at `Tensor.item()` (a user's model with data-dependent control flow) as a 27-line
    # warning per compile, with nothing to tie it to a case: the case's record says it (compiling.graph_breaks)
    logging.getLogger("torch._dynamo.variables.tensor").setLevel(logging.ERROR)
    # torch's forward mode loads its decompositions with torch.jit.script, which warns that torch.jit.script is
    # deprecated: torch's own call, once per worker, printed into the run's progress lines (the user's code is not
    # concerned; a case's own warnings are still recorded: bench/harness/runner.py)
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's: it stops after the current shape
    torch.set_num_threads(1)  # before anything runs: an OpenMP thread that exists at fork hangs the child
    folder, process = Path(argv[0]), int(argv[1])
    plan, threads = _plan(folder)
    os.environ["JACOBENCH_THREADS"] = str(threads)  # what the children set
    warm = _warm_up(plan)
    gc.freeze()  # torch's ~300k objects, out of every child's collections: a full collection costs 0.14 s here
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the protocol; what anything else prints goes to stderr
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip():
            _serve(plan, process, json.loads(line), out, warm)
    return 0


def _plan(folder: Path) -> tuple[Any, int]:
    """The run's plan, from the settings its env.json records (the host planned the same), planned on one thread
    (planning runs each model once); and the run's thread count, which the children set."""
    import dataclasses

    from bench import results
    from bench.spec.plan import plan_run
    from bench.spec.settings import Settings

    env = results.read_json(folder / "env.json")
    known = {f.name for f in dataclasses.fields(Settings)}
    chosen = Settings(**{k: v for k, v in env.get("settings", {}).items() if k in known} | {
        "resume": True, "force": False, "threads": "1"})
    plan = plan_run(chosen)
    plan.folder = folder
    return plan, int(env.get("threads") or 1)


def _warm_up(plan: Any) -> set[tuple[str, str, str]]:
    """Every built-in eager strategy called once on a two-sample version of each model, on the CPU, on one thread
    (no OpenMP thread may exist when a child is forked): the lazy imports and first-call setup every child would
    otherwise repeat (torch.func pulls in torch._dynamo and sympy). A plugin's strategy is warmed in each child
    instead: code that hangs or crashes there ends a child, not the worker. The (device, model, strategy) warmed."""
    import strategies
    from bench.harness import measure
    from bench.harness.shapes import ShapeCache

    built_in = [n for n in plan.strategy_names if strategies.REGISTRY[n].fn.__module__.startswith("strategies.")]
    cache = ShapeCache(plan.model_defs, plan.strategy_names, plan.time_budget_s, lambda device: 1 << 40,
                       measure.Phases())
    for case in {c.model: c for c in reversed(plan.cases)}.values():  # each model at its smallest shape
        cache.warm_up(case, "cpu", built_in)
    if any(strategies.REGISTRY[n].compiled for case in plan.cases for n in plan.strategies_for(case)):
        _warm_compiler()
    return cache.warmed


def _warm_compiler() -> None:
    """One torch.compile of a torch.func function before any child is forked: the imports and one-time setup of
    dynamo, AOTAutograd and inductor (its C++ toolchain and CPU checks) once per worker, not once per shape: each
    child would pay them in its first compiled strategy's setup_s (measured: 3-5 s a shape here), where a user's
    program pays them once. Inductor compiles in-process (compile_threads = 1), so no pool of compile workers exists
    when a child is forked; the kernel runs on the worker's one thread."""
    import torch
    import torch._inductor.config

    torch._inductor.config.compile_threads = 1
    try:
        torch.compile(torch.func.vmap(torch.func.jacrev(torch.sin)), dynamic=False)(torch.ones(2, 2))
    except Exception:  # noqa: BLE001 - without it, each child sets the compiler up itself, as before
        return
    finally:
        torch._dynamo.reset()  # the warm-up's own graphs: a strategy's compile starts from an empty cache


def _serve(plan: Any, process: int, request: dict[str, Any], out: IO[str], warm: set[tuple[str, str, str]]
           ) -> None:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _child(plan, process, request, out, warm)
        except BaseException:  # noqa: BLE001 - reported to the host as the child's exit code, with the traceback
            traceback.print_exc(file=sys.stderr)
            code = EXIT_HARNESS
        finally:
            out.flush()
            sys.stderr.flush()
            os._exit(code)
    out.write(json.dumps({"child": pid}) + "\n")
    out.flush()
    _, status = os.waitpid(pid, 0)
    out.write(json.dumps({"end": os.waitstatus_to_exitcode(status)}) + "\n")
    out.flush()


def _child(plan: Any, process: int, request: dict[str, Any], out: IO[str], warm: set[tuple[str, str, str]]
           ) -> None:
    import torch

    from bench.harness import measure
    from bench.harness.runner import ShapeRunner
    from bench.schema import CaseRecord
    from bench.spec.grid import case_from_dict

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    measure.allow_interrupts()  # a call interrupted by its time limit may abort this child, and only it
    torch.set_num_threads(int(os.environ["JACOBENCH_THREADS"]))
    started = time.perf_counter()
    case, device = case_from_dict(request["case"]), request["device"]

    def done(record: CaseRecord, predicts_larger: bool = False) -> None:
        out.write(json.dumps({"record": record.as_dict(), "predicts_larger": predicts_larger}, default=str) + "\n")
        out.flush()

    phases = measure.Phases()
    runner = ShapeRunner(plan, phases, run_usual_s=request.get("usual_s"), settle_left_s=request["settle_left_s"])
    runner.shapes.warmed |= warm
    if process == 1:
        def calling(name: str | None) -> None:
            out.write(json.dumps({"calling": name}) + "\n")
            out.flush()

        runner.measure_shape(case, device, request["names"], done, calling)
    else:
        records = [CaseRecord.from_dict(r) for r in request["records"]]
        runner.retime_shape(case, device, records, done, request.get("first_slow", ""))
    out.write(json.dumps({"process": {"phases": phases.rounded(), "calibrations": runner.calibration.history,
                                      "slow": runner.calibration.slow, "settled_s": runner.settler.waited_s,
                                      "wall_s": round(time.perf_counter() - started, 3)}}) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
