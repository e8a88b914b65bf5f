"""A run's folder while the run lasts: owned by one process (an OS lock), opened new, resumed or replaced, and
finished.

The host process holds the lock; its worker processes (bench/run/passes.py) measure, the host writes what they
send. Each worker process records what it did in env.json (`record_process`); `finish` turns the records of both
passes into the run's numbers (bench/verdicts.py): intervals that describe a rerun, and verdicts; and the fidelity
check's fresh timings into ratios (bench/run/fidelity.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from bench import fidelity, results, verdicts
from bench.errors import BenchError
from bench.harness import environment
from bench.schema import CaseRecord
from bench.spec import models
from bench.spec.plan import RunPlan, env_fields

EXIT_INTERRUPTED = 130


class FolderError(BenchError):
    pass


@dataclass
class RunFolder:
    """An open run folder: this process holds its lock until it exits."""

    path: Path
    lock: IO | None  # None in the second worker process: the first one holds the lock for both
    finished: dict[tuple, CaseRecord] = field(default_factory=dict)  # records already in cases.jsonl (resume), by key

    @property
    def cases_path(self) -> Path:
        return self.path / "cases.jsonl"

    @property
    def verdicts_path(self) -> Path:
        return self.path / results.VERDICTS_FILE

    def release(self) -> None:
        """Give the folder back (the OS would at exit; closing says so explicitly)."""
        if self.lock is not None:
            self.lock.close()


def open_run(plan: RunPlan) -> RunFolder:
    """Take the run folder for this process (lock), then create it, resume it (RESUME=1) or replace it (FORCE=1),
    and write env.json. Refuses, touching nothing, a folder in use, an existing one, or a resume of other settings."""
    check_folder(plan)  # cheap checks first: a refused run leaves even the lock file alone
    lock = results.lock_run(Path(plan.settings.results_dir), plan.run_id)  # before FORCE may delete anything
    finished = check_folder(plan)  # again: another process may have made the folder before this one took the lock
    _create(plan)
    return RunFolder(plan.folder, lock, finished)


def attach(plan: RunPlan) -> RunFolder:
    """The folder of a run whose first process holds the lock and waits for this one (the second worker)."""
    return RunFolder(plan.folder, None, _finished(plan.folder / "cases.jsonl"))


def check_folder(plan: RunPlan) -> dict[tuple, CaseRecord]:
    """Refuse what cannot be done with the folder; return the finished records of a run to resume, by key."""
    exists = (plan.folder / "env.json").exists() or (plan.folder / "cases.jsonl").exists()
    hint = f"RUN={plan.run_id}"
    if plan.settings.resume:
        if not exists:
            raise FolderError(f"{hint} RESUME=1: {plan.folder} does not exist; nothing to resume")
        env = results.read_json(plan.folder / "env.json")
        stored = env.get("fingerprint")
        if _canonical(stored) != _canonical(plan.fingerprint()):
            different = sorted(k for k in plan.fingerprint() if (stored or {}).get(k) != plan.fingerprint()[k])
            raise FolderError(
                f"{hint} RESUME=1: settings differ from the stored run ({', '.join(different) or 'fingerprint'}); "
                "resume with the same GRID/DEVICES/STRATEGIES/MODEL/budgets, or start a new RUN"
            )
        return _finished(plan.folder / "cases.jsonl")
    if exists and not plan.settings.force:
        raise FolderError(
            f"{plan.folder} already exists: RESUME=1 to finish it, FORCE=1 to replace it, or choose another RUN"
        )
    return {}


def _finished(path: Path) -> dict[tuple, CaseRecord]:
    return {r.key: r for r in results.read_cases(path)} if path.exists() else {}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _create(plan: RunPlan) -> None:
    if plan.settings.force and not plan.settings.resume and plan.folder.exists():
        shutil.rmtree(results.plots_dir(plan.folder), ignore_errors=True)
        shutil.rmtree(plan.folder)
    plan.folder.mkdir(parents=True, exist_ok=True)
    cases = plan.folder / "cases.jsonl"
    results.drop_torn_tail(cases)
    cases.touch()
    env_path = plan.folder / "env.json"
    previous = results.read_json(env_path) if plan.settings.resume and env_path.exists() else {}
    env = environment.collect(plan.devices) | {
        "format_version": results.FORMAT_VERSION,
        "run_id": plan.run_id,
        "created": previous.get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "resumed": previous.get("resumed", []) + ([time.strftime("%Y-%m-%dT%H:%M:%S%z")] if previous else []),
        "seed": {"base": models.SEED, "rule": "base + crc32('<model>-<B>-<H>-<in>-<out>') per case"},
        "grid": plan.grid.as_dict(),
        "models": {name: d.spec for name, d in plan.model_defs.items()},
        "settings": asdict(plan.settings),
        "memory_budget_bytes": plan.memory_budget_bytes,
        "time_budget_s": plan.time_budget_s,
        "fingerprint": plan.fingerprint(),
        "planned_cases": plan.planned_cases,
        "processes": previous.get("processes", []),  # what each worker process did (record_process)
        **env_fields(plan),
    }
    results.write_json(env_path, env)
    _point_latest(plan)


def _point_latest(plan: RunPlan) -> None:
    """results/latest -> the newest run (a relative symlink, replaced atomically)."""
    link = Path(plan.settings.results_dir) / "latest"
    tmp = link.with_name(f".latest.{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(plan.run_id)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)


def record_process(folder: Path, process: int, seconds: dict[str, float], calibration: dict[str, float],
                   wall_s: float, interrupted: bool, waited_s: float = 0.0) -> None:
    """Add what one worker process did to env.json: its phases in seconds, its machine calibration, its wall time,
    and the part of its timing spent waiting (for a slow episode of the machine to end, other processes' load)."""
    env_path = folder / "env.json"
    env = results.read_json(env_path) if env_path.exists() else {}
    env.setdefault("processes", []).append({
        "process": process, "pid": os.getpid(), "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(wall_s, 2), "phases": seconds, "calibration": calibration, "interrupted": interrupted,
        "waited_s": round(waited_s, 2)})
    results.write_json(env_path, env)


def record_load(folder: Path, load: dict[str, Any]) -> None:
    """What else used the machine during this session of the run (environment.Load), in env.json."""
    env_path = folder / "env.json"
    env = results.read_json(env_path) if env_path.exists() else {}
    env.setdefault("load", []).append(load | {"ended": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    results.write_json(env_path, env)


def finish(folder: Path, interrupted: bool = False) -> dict[str, int]:
    """The run's numbers from its records (bench/verdicts.py): the noise model, every ok case's statistics and
    rerun interval, every shape's verdict. While a run measures, its files are append-only (a later line of a case
    replaces an earlier one: the second process adds rounds); finishing compacts them, atomically, to one line per
    case in cases.jsonl and one verdict per shape in verdicts.jsonl, then writes summary.csv, the per-case entries
    of benchmark.json, and the end in env.json. Idempotent. Returns the counts per status."""
    started = time.perf_counter()
    records = list({r.key: r for r in results.read_cases(folder / "cases.jsonl")}.values())
    model = verdicts.noise(records)
    records = verdicts.with_intervals(records, model)
    results.write_lines(folder / "cases.jsonl", [r.as_dict() for r in records])
    results.write_lines(folder / results.VERDICTS_FILE, [v.as_dict() for v in verdicts.verdicts(records, model)])
    (folder / results.VERDICTS_FILE_2).unlink(missing_ok=True)  # a resumed format-2 run: one verdict file
    results.write_summary(folder / "summary.csv", records)
    results.replace_benchmark_entries(folder / "benchmark.json", verdicts.benchmark_entries(records))
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    env_path = folder / "env.json"
    env = results.read_json(env_path) if env_path.exists() else {}
    phases = total_phases(env.get("processes", []))
    phases["finish"] = round(time.perf_counter() - started, 2)
    env.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), interrupted=interrupted, status_counts=counts,
               noise=model.summary(), phases=phases)
    if env.get("fidelity"):
        env["fidelity"] = fidelity.summarize(env["fidelity"], records)
    speed = machine_speed(env.get("processes", []))
    if speed:
        env["machine_speed"] = speed
    results.write_json(env_path, env)
    return counts


def total_phases(processes: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per phase over every worker process of the run (resumed sessions included)."""
    total: dict[str, float] = {}
    for entry in processes:
        for name, seconds in (entry.get("phases") or {}).items():
            total[name] = round(total.get(name, 0.0) + seconds, 2)
    return total


def machine_speed(processes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How fast the machine ran during the run: the usual time of the fixed calibration call (its fast level in
    each worker process, bench/harness/machine.py), the median over the processes. `compare` sets two runs'
    levels side by side, to tell the machine's change from the strategies'."""
    levels = sorted(p["calibration"]["usual_s"] for p in processes if (p.get("calibration") or {}).get("usual_s"))
    if not levels:
        return None
    return {"calibration_s": levels[len(levels) // 2], "processes": len(levels)}
