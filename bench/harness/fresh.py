"""A call timed as the user's own program would time it: a fresh Python process, torch.utils.benchmark.Timer.

    python -m bench.harness.fresh '{"model": ..., "strategies": [...], ...}'

The process builds the seeded model and input of one shape as the run did, and for each named strategy (in a shuffled
order) makes one warm-up call (compiling, for a compiled strategy) and then times the call with
`Timer.blocked_autorange` at the run's thread count (the garbage collector on, as in a program and in the run's
rounds: timeit turns it off), in TURNS turns of min_run_time / TURNS each. Each turn lies
between two calls of the machine's calibration workload (bench/harness/machine.py, after the same pause the run
makes), and a turn during which the machine ran slower than DRIFT_LIMIT x its usual speed (the run's, from the
job's "usual_s", or this process's fastest) is set aside and timed again, up to MAX_TURNS turns, once the
calibration finds the episode over (polled every POLL_S, WAIT_POLLS times a process at most): this VM has slow
episodes of seconds that slow a call x1.3-2.3 and the calibration alike (correlation 0.94 over 478 samples of a
minute), and the run sets the rounds of such moments aside and waits them out too, so an unlucky fresh process would
otherwise be compared at another machine speed. It prints one JSON object: strategy -> {"median_s", "iqr_s", "blocks",
"set_aside", "at_usual_speed", "calibration_s", "waited_s"}; a strategy whose call raised gets {"error": ...}. It
imports nothing of the harness that times a run but the calibration workload: this is the yardstick the run's numbers
are checked against (bench/run/fresh_check.py).

With "depths" in the job, each strategy is instead timed from several depths of the Python stack (`depth_here`):
rounds of calls made `d` frames below the process's top, the depths taking turns round by round (python -m bench
depth).
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from typing import Any

from bench.errors import BenchError

MIN_RUN_TIME_S = 0.4  # Timer.blocked_autorange: blocks of calls until this much time was measured, in TURNS turns
TURNS = 4
MAX_TURNS = 8  # turns set aside while the machine ran slow are timed again, up to this many in all
POLL_S = 0.1  # after a turn that ended in a slow episode, the calibration is polled this often until the episode ends,
WAIT_POLLS = 40  # at most this many times in a process (4 s in all): as the run waits out a slow episode, a fresh
# process does; without waiting, its turns all fell in one episode of 16 s, and the run's check judged none of 7 cases
# glibc malloc's thresholds, fixed in every process that times (the run's workers, these fresh processes). With
# glibc's defaults they adapt to what the process allocated and freed before, so the same call in a plain program is
# bimodal: `analytic` at B = 512 (the seed MLP, 8 -> 64 -> 8) took 0.40 ms in 1 of 6 fresh processes and 1.1-1.6 ms
# in the other 5 (its ~1 MB temporaries mmapped, or trimmed off the heap's top, and faulted in again on every call);
# with these values, 0.40-0.42 ms in every process, as in the run. A variable the user set is kept.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def timing_env() -> dict[str, str]:
    """The environment of a process that times: this one's, with ALLOCATOR_ENV where the user set no value."""
    return {**ALLOCATOR_ENV, **os.environ}


def spec(record: Any, model_spec: str, threads: int, strategies: list[str], usual_s: float | None = None
         ) -> dict[str, Any]:
    """What a fresh process needs to rebuild a case's shape (a CaseRecord's fields) and time `strategies` on it;
    `usual_s`: the run's usual calibration time (its machine speed), which the fresh process holds its turns to."""
    return {"model": model_spec, "name": record.model, "strategies": strategies, "mode": record.mode,
            "sizes": list(record.sizes), "device": record.device, "dtype": record.dtype, "threads": threads,
            "min_run_time": MIN_RUN_TIME_S, "seed": sum(map(ord, record.case_id)), "usual_s": usual_s}


def in_fresh_process(job: dict[str, Any], timeout_s: float = 600) -> dict[str, dict[str, float]]:
    """Time the job's strategies in a new Python process: strategy -> {"median_s", "iqr_s", "blocks"} or
    {"error"}."""
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.harness.fresh", json.dumps(job)], capture_output=True,
                              text=True, timeout=timeout_s, env=timing_env())
    except subprocess.TimeoutExpired:
        raise BenchError(f"timing {', '.join(job['strategies'])} on {job['name']} in a fresh process took more than "
                         f"{timeout_s:.0f} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"timing {', '.join(job['strategies'])} on {job['name']} in a fresh process failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _build(job: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    from bench.schema import Sizes
    from bench.spec import models

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    model_def = models.resolve(job["model"])
    model_def = model_def if model_def.name == job["name"] else models.ModelDef(job["name"], model_def.factory,
                                                                                model_def.description)
    sizes = Sizes(*job["sizes"])
    model, x = models.build(model_def, sizes, job["device"], getattr(torch, job["dtype"]))
    # the run's check of every shape, model(x) under no_grad, is the model's first call here too: a TorchScript
    # model's speed depends on its first call (its profiling executor specializes on it; first called under no_grad,
    # later autograd calls of a scripted MLP took 70 µs here, first called with autograd 122 µs)
    models.run_problem(model, x, sizes.out_dim)
    return model, x


def time_here(job: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The fresh process's side: build the shape as the run did and time each strategy's call."""
    import strategies
    from bench.harness import modes

    model, x = _build(job)
    names = list(job["strategies"])
    random.Random(job.get("seed", 0)).shuffle(names)
    found, waits = {}, Waits()
    for name in names:
        if found and time.time() > job.get("deadline", math.inf):  # the fidelity check's budget is spent
            found[name] = {"over_budget": True}
            continue
        call = modes.timed_call(strategies.REGISTRY[name], job["mode"])
        try:
            call(model, x)
            timer = collected_timer(call, model, x)
            found[name] = _at_usual_speed(timer, job["min_run_time"] / TURNS, job.get("usual_s"), waits)
        except Exception as exc:  # reported per strategy: the others are still timed
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            found[name] = {"error": f"{type(exc).__name__}: {first}"}
    return found


def collected_timer(call: Any, model: Any, x: Any) -> Any:
    """A Timer of call(model, x) with the garbage collector on, as in the user's program and in the run's rounds:
    timeit turns it off while it times, which made a call that leaves cyclic garbage look cheaper here than in a
    program (torch.func.linearize's traced graph: ×1.05-1.07 on this VM; vmap_jacrev at B = 32: ×1.02-1.07)."""
    import gc

    import torch
    import torch.utils.benchmark as tbench

    return tbench.Timer("call(model, x)", setup="gc.enable()", globals={"call": call, "model": model, "x": x, "gc": gc},
                        num_threads=torch.get_num_threads())


class Waits:
    """The waits for a slow episode to end left to a fresh process (WAIT_POLLS polls of POLL_S)."""

    def __init__(self, polls: int = WAIT_POLLS):
        self.polls_left = polls
        self.waited_s = 0.0

    def until_usual(self, calibrations: list[float], usual_s: float) -> None:
        """Poll the calibration call until it finds the machine at its usual speed again (or the polls run out),
        each calibration appended: the last one is where the next turn starts."""
        from bench.harness import machine

        while self.polls_left > 0 and calibrations[-1] > machine.DRIFT_LIMIT * usual_s:
            self.polls_left -= 1
            start = time.perf_counter()
            time.sleep(POLL_S)
            calibrations.append(machine.calibration_now())
            self.waited_s += time.perf_counter() - start


def _at_usual_speed(timer: Any, turn_s: float, run_usual_s: float | None, waits: Waits | None = None
                    ) -> dict[str, float]:
    """Timer turns of `turn_s`, each between two calibrations; those at the machine's usual speed kept (TURNS of
    them, within MAX_TURNS; all of them if none was): the median and IQR of their blocks' seconds per call. A turn
    that ended in a slow episode is followed by a wait for its end (`waits`), as the run waits one out."""
    import statistics

    from bench.harness import machine

    waits = waits or Waits()
    waited_before = waits.waited_s
    calibrations = [machine.calibration_now()]
    turns: list[tuple[float, list[float]]] = []  # (the slower calibration around the turn, its blocks)
    first = timer.blocked_autorange(min_run_time=turn_s)  # sizes the blocks once: its estimate costs calls too
    while len(turns) < MAX_TURNS:
        times = first.times if not turns else _blocks(timer, first.number_per_run, turn_s)
        calibrations.append(machine.calibration_now())
        turns.append((max(calibrations[-2:]), times))
        usual = min([*calibrations, run_usual_s or math.inf])
        if sum(level <= machine.DRIFT_LIMIT * usual for level, _ in turns) >= TURNS or len(turns) == MAX_TURNS:
            break
        waits.until_usual(calibrations, usual)  # only when another turn follows
    kept = [times for level, times in turns if level <= machine.DRIFT_LIMIT * usual]
    blocks = [t for times in (kept or [t for _, t in turns]) for t in times]
    quartiles = statistics.quantiles(blocks, n=4) if len(blocks) > 1 else [blocks[0]] * 3
    return {"median_s": statistics.median(blocks), "iqr_s": quartiles[2] - quartiles[0], "blocks": len(blocks),
            "set_aside": len(turns) - len(kept) if kept else 0, "at_usual_speed": bool(kept),
            "calibration_s": min(calibrations), "waited_s": round(waits.waited_s - waited_before, 3)}


def _blocks(timer: Any, number: int, seconds: float) -> list[float]:
    """Blocks of `number` calls until `seconds` have passed: each block's seconds per call (what
    Timer.blocked_autorange does once it has sized its blocks)."""
    times, start = [], time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        times.append(timer.timeit(number).times[0])
    return times


def at_depth(frames: int, fn: Any) -> Any:
    """fn() called `frames` frames below this call."""
    return fn() if frames <= 0 else at_depth(frames - 1, fn)


def depth_here(job: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Each strategy's seconds per call in rounds made from each of job["depths"] (frames below the top of the
    process), the depths in a new shuffled order every round: strategy -> {depth: [seconds per call, ...]}."""
    import strategies
    from bench.harness import modes

    model, x = _build(job)
    top = len(_stack())
    order = random.Random(job.get("seed", 0))
    found = {}
    for name in job["strategies"]:
        call = modes.timed_call(strategies.REGISTRY[name], job["mode"])
        call(model, x)
        start = time.perf_counter()
        call(model, x)
        iterations = max(1, int(0.01 / max(time.perf_counter() - start, 1e-7)))

        def one_round(call: Any = call, iterations: int = iterations) -> float:
            start = time.perf_counter()
            for _ in range(iterations):
                call(model, x)
            return (time.perf_counter() - start) / iterations

        rounds: dict[int, list[float]] = {d: [] for d in job["depths"]}
        for _ in range(job["rounds"]):
            for depth in order.sample(list(rounds), len(rounds)):
                rounds[depth].append(at_depth(depth - top - 2, one_round))  # at_depth and one_round: two frames
        found[name] = {str(d): v for d, v in rounds.items()}
    return found


def _stack() -> list[Any]:
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


if __name__ == "__main__":
    task = json.loads(sys.argv[1])
    print(json.dumps(depth_here(task) if task.get("depths") else time_here(task)))
