"""A run: its settings (validated up front), its folder, and what finishing it writes.

Used by the CLI (to refuse bad input before anything starts) and by conftest.py (to run it under pytest).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

import strategies
from bench import environment, grid, models, results
from bench.errors import BenchError

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


class SettingsError(BenchError):
    pass


@dataclass(frozen=True)
class Settings:
    """What the user asked for (Make variables / CLI flags / pytest options), before validation."""

    grid: str = "default"
    devices: str = ""  # "" = cpu, plus cuda when available
    strategies: str = ""  # "" = all registered
    model: str = ""  # "" = the grid's models
    run_id: str = ""  # "" = a timestamped id
    results_root: str = "results"
    memory_budget: str = ""  # bytes ("8GiB") or "" = the grid's fraction of available memory
    time_budget: str = ""  # seconds or "" = the grid's budget.time_s
    dtype: str = ""  # comma-separated dtypes, or "" = the grid's dtypes
    threads: str = ""  # torch intra-op threads for the whole run, or "" = torch's default
    resume: bool = False
    force: bool = False


@dataclass
class Run:
    """A validated run: everything the suite needs, resolved."""

    settings: Settings
    grid: grid.Grid
    run_id: str
    folder: Path
    devices: list[str]
    strategy_names: list[str]
    model_defs: dict[str, models.ModelDef]
    cases: list[grid.Case]
    memory_budget_bytes: int | None
    time_budget_s: float
    threads: int = 0  # torch.get_num_threads() for the whole run
    notes: list[str] = field(default_factory=list)  # worth a line before the run starts
    finished: set[tuple] = field(default_factory=set)  # keys already in cases.jsonl (resume)
    lock: IO | None = None  # held open for the whole run: the run folder belongs to this process

    @property
    def cases_path(self) -> Path:
        return self.folder / "cases.jsonl"

    def fingerprint(self) -> dict[str, Any]:
        """What must match for RESUME=1 to continue this run."""
        return {
            "grid": self.grid.as_dict() | {"path": None},
            "devices": self.devices,
            "strategies": self.strategy_names,
            "models": sorted(self.model_defs),
            "memory_budget": self.settings.memory_budget,
            "time_budget_s": self.time_budget_s,
            "dtypes": sorted({c.dtype for c in self.cases}),
            "threads": self.threads,
        }


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise SettingsError(f"MEMORY_BUDGET={text!r}: give a positive size such as 4GiB, 512MB or 1000000")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise SettingsError(f"TIME_BUDGET={text!r}: give a positive number of seconds, e.g. 5")
    return value


def resolve_devices(spec: str) -> list[str]:
    names = [d.strip() for d in spec.split(",") if d.strip()] if spec else []
    if not names:
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    for name in names:
        if not DEVICE_PATTERN.match(name):
            raise SettingsError(f"unknown device {name!r}: use cpu, cuda or cuda:N (e.g. DEVICES=cpu,cuda)")
        if name.startswith("cuda"):
            if not torch.cuda.is_available():
                raise SettingsError(f"DEVICES={spec}: CUDA is not available on this machine "
                                    f"(torch {torch.__version__}); use DEVICES=cpu")
            index = int(name.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise SettingsError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return list(dict.fromkeys(names))


def resolve_strategies(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()] if spec else list(strategies.REGISTRY)
    for name in names:
        if name not in strategies.REGISTRY:
            raise SettingsError(f"unknown strategy {name!r}: choose from {', '.join(strategies.REGISTRY)}")
    return list(dict.fromkeys(names))


def resolve_dtypes(spec: str) -> tuple[str, ...] | None:
    names = tuple(dict.fromkeys(d.strip() for d in spec.split(",") if d.strip()))
    for name in names:
        if name not in grid.DTYPES:
            raise SettingsError(f"DTYPE={spec}: unknown dtype {name!r}; choose from {', '.join(grid.DTYPES)}")
    return names or None


def apply_threads(spec: str) -> int:
    """THREADS=n sets torch's intra-op threads for this process (the whole run); returns the count in use."""
    if spec:
        try:
            threads = int(spec)
        except ValueError:
            threads = 0
        if threads <= 0:
            raise SettingsError(f"THREADS={spec!r}: give a positive number of threads, e.g. 1")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def check_models(specs: list[str], the_grid: grid.Grid, dtypes: tuple[str, ...] | None
                 ) -> tuple[dict[str, models.ModelDef], list[str]]:
    """Resolve and try each model once; refuse one that cannot run, note one that breaks on a one-sample batch."""
    model_defs, notes = {}, []
    base = the_grid.base
    run_dtypes = dtypes or tuple(dict.fromkeys(d for b in the_grid.blocks for d in b.dtypes))
    for spec in specs:
        model_def = models.resolve(spec)
        probe = models.check(model_def, base["hidden"], base["in_dim"], base["out_dim"])
        built = str(probe.dtype).removeprefix("torch.") if probe.dtype else None
        if built and built != "float32" and built not in run_dtypes and not dtypes:
            raise SettingsError(f"model {model_def.name}: the factory builds {built} parameters but the run measures "
                                f"{', '.join(run_dtypes)}; set DTYPE={built} to measure it as built, or "
                                f"DTYPE={run_dtypes[0]} to cast it")
        if probe.one_sample:
            notes.append(f"model {model_def.name} fails on a one-sample batch ({probe.one_sample}): its B=1 cases and "
                         "the per-sample strategies (vmap_jacrev, vmap_jacfwd) will end in error")
        model_defs[model_def.name] = model_def
    return model_defs, notes


def prepare(settings: Settings, create: bool, reopen: bool = False) -> Run:
    """Validate everything; with create=True also lock the run folder, make it (or reopen it, on resume) and write
    env.json.

    reopen=True: this process made the folder already (`python -m bench run` before handing over to pytest).
    """
    the_grid = grid.load_grid(settings.grid)
    devices = resolve_devices(settings.devices)
    strategy_names = resolve_strategies(settings.strategies)
    dtypes = resolve_dtypes(settings.dtype)
    threads = apply_threads(settings.threads)
    model_specs = [settings.model] if settings.model else list(the_grid.models)
    model_defs, notes = check_models(model_specs, the_grid, dtypes)
    memory_budget = parse_bytes(settings.memory_budget) if settings.memory_budget else None
    time_budget = parse_seconds(settings.time_budget) if settings.time_budget else the_grid.budget.time_s
    run_id = results.check_run_id(settings.run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{the_grid.name}")
    run = Run(
        settings=settings,
        grid=the_grid,
        run_id=run_id,
        folder=Path(settings.results_root) / run_id,
        devices=devices,
        strategy_names=strategy_names,
        model_defs=model_defs,
        cases=grid.expand(the_grid, tuple(model_defs) if settings.model else None, dtypes),
        memory_budget_bytes=memory_budget,
        time_budget_s=time_budget,
        threads=threads,
        notes=notes,
    )
    if reopen:
        run.finished = _finished_keys(run.cases_path)
        return run
    _check_folder(run)
    if create:
        run.lock = results.lock_run(Path(settings.results_root), run_id)  # before FORCE may delete anything
        _check_folder(run)  # again: another process may have made the folder before this one took the lock
        _open_folder(run)
    return run


def _check_folder(run: Run) -> None:
    exists = (run.folder / "env.json").exists() or (run.folder / "cases.jsonl").exists()
    hint = f"RUN={run.run_id}"
    if run.settings.resume:
        if not exists:
            raise SettingsError(f"{hint} RESUME=1: {run.folder} does not exist; nothing to resume")
        env = results.read_json(run.folder / "env.json")
        stored = env.get("fingerprint")
        if _canonical(stored) != _canonical(run.fingerprint()):
            different = sorted(k for k in run.fingerprint() if (stored or {}).get(k) != run.fingerprint()[k])
            raise SettingsError(
                f"{hint} RESUME=1: settings differ from the stored run ({', '.join(different) or 'fingerprint'}); "
                "resume with the same GRID/DEVICES/STRATEGIES/MODEL/budgets, or start a new RUN"
            )
        run.finished = _finished_keys(run.cases_path)
    elif exists and not run.settings.force:
        raise SettingsError(
            f"{run.folder} already exists: RESUME=1 to finish it, FORCE=1 to replace it, or choose another RUN"
        )


def _finished_keys(path: Path) -> set[tuple]:
    return {results.case_key(r) for r in results.read_cases(path)} if path.exists() else set()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _open_folder(run: Run) -> None:
    if run.settings.force and not run.settings.resume and run.folder.exists():
        shutil.rmtree(run.folder)
        shutil.rmtree(Path("plots") / run.run_id, ignore_errors=True)
    run.folder.mkdir(parents=True, exist_ok=True)
    results.drop_torn_tail(run.cases_path)
    run.cases_path.touch()
    env_path = run.folder / "env.json"
    previous = results.read_json(env_path) if run.settings.resume and env_path.exists() else {}
    env = environment.collect(run.devices) | {
        "run_id": run.run_id,
        "created": previous.get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "resumed": previous.get("resumed", []) + ([time.strftime("%Y-%m-%dT%H:%M:%S%z")] if previous else []),
        "seed": {"base": models.SEED, "rule": "base + crc32('<model>-<B>-<H>-<in>-<out>') per case"},
        "grid": run.grid.as_dict(),
        "models": {name: d.spec for name, d in run.model_defs.items()},
        "settings": asdict(run.settings),
        "memory_budget_bytes": run.memory_budget_bytes,
        "time_budget_s": run.time_budget_s,
        "fingerprint": run.fingerprint(),
        "planned_cases": len(run.cases) * len(run.devices) * len(run.strategy_names),
    }
    results.write_json(env_path, env)
    _point_latest(run)


def _point_latest(run: Run) -> None:
    """results/latest -> the newest run (a relative symlink, replaced atomically)."""
    link = Path(run.settings.results_root) / "latest"
    tmp = link.with_name(f".latest.{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run.run_id)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)


def finish(folder: Path, interrupted: bool = False) -> dict[str, int]:
    """Rebuild summary.csv from cases.jsonl and record the end in env.json; return counts per status."""
    rows = results.write_summary(folder / "summary.csv", results.read_cases(folder / "cases.jsonl"))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    env_path = folder / "env.json"
    env = results.read_json(env_path) if env_path.exists() else {}
    env.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), interrupted=interrupted, status_counts=counts)
    results.write_json(env_path, env)
    return counts

