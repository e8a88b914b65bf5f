"""`make submit SHARDS=N EXECUTOR=slurm|local` (`python -m bench submit`): the shards of one plan as one submitit job
array, one shard per task, then the merge.

EXECUTOR=slurm: `AutoExecutor(cluster="slurm")`, `update_parameters(...)`, `map_array`: one sbatch job array of N
tasks, each with GPUS_PER_TASK GPUs (default 1 when DEVICES has cuda), CPUS_PER_TASK, PARTITION, TIMEOUT_MIN, at most
PARALLELISM at once. EXECUTOR=local: the same array as local processes (submitit's LocalExecutor), each task waiting
for a free slot: one per GPU (CUDA_VISIBLE_DEVICES=<that GPU>, DEVICES=cuda), one per CPU set of CPUSETS
(os.sched_setaffinity), or, when DEVICES has cpu and no CPUSETS are given, one slot for all: concurrent shards would
disturb each other's CPU timings, so they run one after another. Each task runs `python -m bench run ... --shard k/N
--no-report` in a process of its own (the merged run gets the report). Ctrl-C while waiting leaves the tasks
running: `make merge RUN=<run>` later. submitit is an optional extra: pip install -e '.[cluster]'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.spec import settings as run_settings
from bench.spec.settings import Settings

INSTALL = "pip install -e '.[cluster]' (or pip install submitit)"
EXECUTORS = ("slurm", "local")


class SubmitError(BenchError):
    pass


@dataclass(frozen=True)
class Resources:
    """What the job array asks for (the Make variables of `make submit`)."""

    shards: int
    executor: str = ""  # slurm, local, or "" for what submitit finds (slurm where srun is on PATH)
    partition: str = ""
    gpus_per_task: int | None = None  # None: 1 when DEVICES has cuda, else 0
    cpus_per_task: int | None = None
    timeout_min: int | None = None  # None: from the predicted time of the longest shard
    parallelism: int | None = None
    cpusets: str = ""  # local: "0-7,8-15" is two sets (a range per set; join CPUs of one set with +: 0+2+4)


@dataclass(frozen=True)
class Slot:
    """Where a local shard runs: the GPUs it sees and the CPUs it may use (None: as the parent process)."""

    gpus: str | None = None
    cpus: tuple[int, ...] | None = None


def load_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise SubmitError(f"make submit needs submitit, an optional extra: {INSTALL}") from None
    return submitit


def parse_cpusets(spec: str) -> list[tuple[int, ...]]:
    """'0-7,8-15' -> two sets of 8 CPUs; '0+2,1+3' -> {0, 2} and {1, 3}. Sets must be disjoint and of one size."""
    sets = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        cpus: set[int] = set()
        try:
            for piece in part.split("+"):
                low, _, high = piece.partition("-")
                cpus |= set(range(int(low), int(high or low) + 1))
        except ValueError:
            raise SubmitError(f"CPUSETS={spec!r}: give CPU sets such as 0-7,8-15 (a range per set)") from None
        sets.append(tuple(sorted(cpus)))
    flat = [c for s in sets for c in s]
    if not sets or len(flat) != len(set(flat)) or len({len(s) for s in sets}) > 1:
        raise SubmitError(f"CPUSETS={spec!r}: give disjoint CPU sets of one size, e.g. 0-7,8-15")
    return sets


def local_slots(devices: list[str], cpusets: list[tuple[int, ...]], parallelism: int | None) -> tuple[list[Slot], str]:
    """The slots of EXECUTOR=local and the one line that says why shards run side by side or one after another."""
    cuda = [d for d in devices if d.startswith("cuda")]
    gpus = _visible_gpus() if cuda else []
    if "cpu" in devices and not cpusets:
        return [Slot(gpus=",".join(gpus) if cuda else "")], (
            "shards run one after another: concurrent shards would disturb each other's CPU timings "
            "(give CPUSETS=0-7,8-15 to run them side by side on disjoint CPUs)")
    if cuda and any(d != "cuda" for d in cuda) and len(gpus) > 1:
        raise SubmitError(f"DEVICES={','.join(devices)}: EXECUTOR=local pins each shard to one GPU, which it sees as "
                          "cuda: use DEVICES=cuda")
    if cuda and not gpus:
        raise SubmitError("DEVICES has cuda but this machine shows no GPU to EXECUTOR=local")
    slots = [Slot(gpus=g, cpus=c) for g, c in zip(gpus or [""] * len(cpusets), cpusets or [None] * len(gpus),
                                                  strict=False)]
    slots = slots[:parallelism] if parallelism else slots
    what = "one per GPU" if gpus else "one per CPU set"
    return slots, f"{len(slots)} shard(s) at a time, {what}" + (", each on its own CPU set" if cpusets and gpus else "")


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@contextlib.contextmanager
def _slot(slots: list[Slot] | None, lock_dir: str) -> Iterator[Slot | None]:
    """Wait for a free slot (an OS lock per slot, so tasks of one array never share one) and hold it."""
    if not slots:
        yield None
        return
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    while True:
        for n, slot in enumerate(slots):
            lock = open(Path(lock_dir) / f"slot-{n}.lock", "a+", encoding="utf-8")  # noqa: SIM115 (held while in use)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                continue
            try:
                yield slot
            finally:
                lock.close()
            return
        time.sleep(1.0)


def run_shard(argv: list[str], index: int, count: int, slots: list[Slot] | None, lock_dir: str) -> dict[str, Any]:
    """One task of the array: `python -m bench run <argv> --shard index/count` in a process of its own, in a free slot
    when there are slots (local tasks). A local shard gets a session of its own, so a Ctrl-C at the submitting
    terminal does not reach it; on SLURM it stays in the task's, where the scheduler can signal it."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the checkout that submitted: `bench` importable from anywhere
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    started = time.time()
    with _slot(slots, lock_dir) as slot:
        if slot is not None and slot.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpus
        if slot is not None and slot.cpus:
            os.sched_setaffinity(0, slot.cpus)  # inherited by the shard's process
        waited = time.time() - started
        print(f"jacobench: shard {index}/{count} on {socket.gethostname()}"
              + (f", GPU {slot.gpus}" if slot and slot.gpus else "")
              + (f", CPUs {slot.cpus[0]}-{slot.cpus[-1]}" if slot and slot.cpus else "")
              + (f" (waited {waited:.0f} s for a slot)" if waited >= 1 else ""), flush=True)
        proc = subprocess.run([sys.executable, "-m", "bench", "run", *argv, "--shard", f"{index}/{count}"], env=env,
                              start_new_session=slots is not None, check=False)
    return {"shard": f"{index}/{count}", "returncode": proc.returncode, "hostname": socket.gethostname(),
            "seconds": round(time.time() - started - waited, 1)}


def shard_argv(chosen: Settings, run: str, threads: str) -> list[str]:
    """The flags of every shard: the settings as given (not SHARD: each task adds its own), the run id, the
    results folder as an absolute path (tasks may start elsewhere), no report (the merge builds one)."""
    values = dataclasses.asdict(chosen) | {"run": run, "results_dir": str(Path(chosen.results_dir).resolve()),
                                           "no_report": True, "shard": "", "threads": threads}
    argv = []
    for f in run_settings.declared():
        value = values[f.name]
        if isinstance(f.default, bool):
            argv += [run_settings.flag(f)] if value else []
        elif value != f.default and value != "":
            argv += [run_settings.flag(f), str(value)]
    return argv


def default_timeout_min(seconds: float) -> int:
    """A task's time limit from the predicted time of its work: twice that, plus a quarter of an hour."""
    return int(math.ceil(2 * seconds / 60)) + 15


def executor_for(submitit: Any, resources: Resources, folder: Path, gpus: int, timeout_min: int, name: str) -> Any:
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=resources.executor or None)
    except RuntimeError as exc:  # SlurmExecutor without srun on PATH, or no executor at all
        raise SubmitError(f"EXECUTOR={resources.executor or 'auto'}: {exc} Submit from a SLURM login node, or use "
                          "EXECUTOR=local") from None
    params: dict[str, Any] = {"name": name, "timeout_min": timeout_min, "nodes": 1, "tasks_per_node": 1}
    if executor.cluster == "slurm":
        params["gpus_per_node"] = gpus  # one task per node allocation: the GPUs of the task
        if resources.cpus_per_task:
            params["cpus_per_task"] = resources.cpus_per_task
        if resources.partition:
            params["slurm_partition"] = resources.partition
        if resources.parallelism:
            params["slurm_array_parallelism"] = resources.parallelism
    executor.update_parameters(**params)
    return executor


@contextlib.contextmanager
def sigint_ignored_by_children() -> Iterator[None]:
    """Processes started in here inherit SIGINT as ignored (Python keeps an ignored SIGINT ignored): a Ctrl-C at the
    terminal stops the waiting, never the local tasks."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Submission:
    """A submitted job array: one job per shard, in shard order."""

    run: str
    results_root: Path
    jobs: list[Any]

    def wait(self) -> list[str]:
        """Wait for every task; one line per shard that did not end well (it is merged as far as it went)."""
        problems = []
        count = len(self.jobs)
        for index, job in enumerate(self.jobs, start=1):
            try:
                outcome = job.result()
            except Exception as exc:  # submitit's UncompletedJobError or FailedJobError: the task died
                first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                problems.append(f"shard {index}/{count} (job {job.job_id}) failed: {first[:200]}; log "
                                f"{job.paths.stderr}")
                continue
            if outcome["returncode"] != 0:
                problems.append(f"shard {index}/{count} (job {job.job_id}) ended with exit code "
                                f"{outcome['returncode']}; log {job.paths.stdout}")
            else:
                print(f"jacobench: shard {index}/{count} done on {outcome['hostname']} in {outcome['seconds']:.0f} s",
                      flush=True)
        return problems


def where_to_run(chosen: Settings, resources: Resources) -> tuple[bool, list[tuple[int, ...]]]:
    """(local processes rather than SLURM, the CPU sets of local shards), refusing settings that do not mix."""
    import shutil

    if chosen.shard:
        raise SubmitError("SHARD= and SHARDS= do not mix: make submit runs every shard of the plan")
    if resources.executor not in ("", *EXECUTORS):
        raise SubmitError(f"EXECUTOR={resources.executor}: choose slurm or local")
    local = resources.executor == "local" or (not resources.executor and shutil.which("srun") is None)
    cpusets = parse_cpusets(resources.cpusets) if resources.cpusets else []
    if cpusets and not local:
        raise SubmitError("CPUSETS= is for EXECUTOR=local; on SLURM, CPUS_PER_TASK= gives each task its own CPUs")
    return local, cpusets


def print_shards(table: list[dict], why_slots: str) -> None:
    """Each shard's shapes, cases and predicted time; why local shards run as they do."""
    from bench.scale import forecast

    for r in table:
        print(f"  shard {r['shard']}: {r['shapes']} shapes, {r['cases']} cases, predicted "
              f"{forecast.fmt_duration(r['seconds'])}", flush=True)
    if why_slots:
        print(f"jacobench: EXECUTOR=local: {why_slots}", flush=True)


def submit(chosen: Settings, resources: Resources) -> Submission:
    """Plan (bad input refused before anything is submitted), print the shards and their predicted time, submit the
    array. Nothing is measured here."""
    from bench.scale import costs, forecast, shards
    from bench.spec.plan import plan_run

    submitit = load_submitit()
    local, cpusets = where_to_run(chosen, resources)
    threads = chosen.threads or (str(len(cpusets[0])) if cpusets else "")  # one thread per CPU of a set
    plan = plan_run(dataclasses.replace(chosen, threads=threads), here=local)
    run = shards.run_id(plan)
    root = Path(chosen.results_dir).resolve()
    if shards.find(root, run) and not (chosen.resume or chosen.force):
        raise SubmitError(f"{root / run}.shard-*: shards of this run exist; RESUME=1 finishes them, FORCE=1 replaces "
                          "them, or choose another RUN")
    table = forecast.shard_table(forecast.forecast(plan, costs.default()), resources.shards)
    slots, why = local_slots(plan.devices, cpusets, resources.parallelism) if local else (None, "")
    at_once = len(slots) if slots else resources.shards
    waves = math.ceil(resources.shards / at_once)
    timeout = resources.timeout_min or default_timeout_min(max(r["seconds"] for r in table) * waves)
    gpus = resources.gpus_per_task if resources.gpus_per_task is not None else \
        int(any(d.startswith("cuda") for d in plan.devices))

    print(f"jacobench: submit run {run}: grid {plan.grid.name}, {plan.total_cases} cases in {resources.shards} "
          f"shards (plan {plan.plan_hash}), EXECUTOR={'local' if local else 'slurm'}", flush=True)
    print_shards(table, why)
    logs = root / f"{run}.submitit"
    executor = executor_for(submitit, dataclasses.replace(resources, executor="local" if local else "slurm"),
                            logs / "%j", gpus, timeout, f"jacobench-{run}")
    argv = shard_argv(chosen, run, threads)
    count = resources.shards
    with sigint_ignored_by_children():
        jobs = executor.map_array(run_shard, [argv] * count, range(1, count + 1), [count] * count,
                                  [slots] * count, [str(logs / "slots")] * count)
    with contextlib.suppress(OSError):
        (logs / "%j").rmdir()  # the executor's folder pattern, made literally by submitit and left empty
    ids = [str(j.job_id) for j in jobs]
    array = ids[0].split("_")[0] if "_" in ids[0] else ""
    print(f"jacobench: submitted {count} tasks" + (f" as job array {array} ({ids[0]} … {ids[-1]})" if array else
                                                   f" (local processes {', '.join(ids)})")
          + ("" if local else f", {gpus} GPU(s) per task") + f", time limit {timeout} min; logs in {logs}/<job id>/",
          flush=True)
    print(f"jacobench: waiting for them; Ctrl-C stops the waiting, not the tasks: then `make merge RUN={run}` "
          "when they are done", flush=True)
    return Submission(run, root, jobs)
