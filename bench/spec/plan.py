"""What a run will measure: the user's settings (bench/spec/settings.py), validated and resolved up front, before
anything is written.

`plan_run(Settings(...))` refuses every bad input with one clear message (a BenchError) and returns a `RunPlan`:
the grid's cases, devices, strategies, models, budgets and thread count; with SHARD=k/N, the cases of that shard
(bench/scale/shards.py), and in every plan the hash that shards of one plan share.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import strategies
from bench import results
from bench.errors import BenchError
from bench.schema import MODES, QUANTITIES, Sizes, case_id
from bench.spec import grid, models
from bench.spec.model_plan import check_models, resolve_models  # noqa: F401  (check_models: plan's API before)
from bench.spec.settings import DEFAULT_GRID, FIXED_MODEL_GRID, Settings

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


class SettingsError(BenchError):
    pass


Unit = tuple[str, str, Sizes]  # (model, dtype, sizes): what stays whole in one shard
_SHARD_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_FOLDER = re.compile(r"^(?P<run>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int
    run: str  # the run the shards merge into: results/<run>/
    split: str  # digest of the assignment of shapes to shards: equal in every shard of one split
    shapes: int  # shapes in this shard

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str) -> tuple[int, int]:
    """'2/4' -> (2, 4); a one-line error for anything else."""
    match = _SHARD_SPEC.match(spec)
    index, count = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 1 <= index <= count:
        raise SettingsError(f"SHARD={spec!r}: give k/N with 1 <= k <= N, e.g. SHARD=1/4")
    return index, count


def folder_name(run: str, index: int, count: int) -> str:
    return f"{run}.shard-{index}-of-{count}"


def parse_folder_name(name: str) -> tuple[str, int, int] | None:
    """'r.shard-2-of-4' -> ('r', 2, 4); None for a folder that is not a shard."""
    match = _FOLDER.match(name)
    return (match.group("run"), int(match.group("index")), int(match.group("count"))) if match else None


def unit(case: grid.Case) -> Unit:
    return case.model, case.dtype, case.sizes


@dataclass
class RunPlan:
    """A validated run: everything the suite needs, resolved; nothing written yet."""

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
    processes: int = 2  # worker processes that time each shape's contenders (bench/run/passes.py)
    fidelity: float = 0.1  # share of pass 1's wall time for the fidelity check (bench/run/fidelity.py)

    compiled: bool | None = None  # compiled strategies everywhere (True), nowhere (False), where the grid says (None)
    plan_hash: str = ""  # what shards of one plan share (bench/scale/shards.py)
    total_cases: int = 0  # planned cases of the whole plan, all shards together
    shard: Shard | None = None  # SHARD=k/N: `cases` are that shard's

    def strategies_for(self, case: grid.Case) -> list[str]:
        """The strategies that run on a case: those of its quantity; compiled ones (seconds of compiling per shape)
        where COMPILED= or, by default, the case's grid block says so, or everywhere when STRATEGIES= names them."""
        names = [n for n in self.strategy_names if strategies.REGISTRY[n].quantity == case.quantity]
        if self.compiled if self.compiled is not None else case.compiled:
            return names
        return [n for n in names if not strategies.REGISTRY[n].compiled]

    def shapes(self) -> Iterator[tuple[str, grid.Case, list[str]]]:
        """(device, shape, its strategies) in the order a run measures them: device by device, smallest shapes
        first, so a timeout or out-of-memory on a small shape skips the larger ones of the same strategy."""
        for device in self.devices:
            for case in self.cases:
                yield device, case, self.strategies_for(case)

    @property
    def planned_cases(self) -> int:
        return len(self.devices) * sum(len(self.strategies_for(c)) for c in self.cases)

    def fingerprint(self) -> dict[str, Any]:
        """What must match for RESUME=1 to continue this run."""
        # absent in a whole run, as before shards existed; the split too, so a resumed shard holds the same shapes
        shard = {"shard": {"shard": self.shard.label, "split": self.shard.split}} if self.shard else {}
        # absent in a Jacobian run, as before the QUANTITY axis: its runs resume and hash as they did
        measured = sorted({c.quantity for c in self.cases}, key=QUANTITIES.index)
        quantities = {} if measured in ([], ["jacobian"]) else {"quantities": measured}
        return shard | {
            "grid": self.grid.as_dict() | {"path": None},
            "devices": self.devices,
            "strategies": self.strategy_names,
            "models": sorted(self.model_defs),
            "memory_budget": self.settings.memory_budget,
            "time_budget_s": self.time_budget_s,
            "dtypes": sorted({c.dtype for c in self.cases}),
            "modes": sorted({c.mode for c in self.cases}),
            "threads": self.threads,
        } | quantities


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


def resolve_devices(spec: str, here: bool = True) -> list[str]:
    names = [d.strip() for d in spec.split(",") if d.strip()] if spec else []
    if not names:
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    for name in names:
        if not DEVICE_PATTERN.match(name):
            raise SettingsError(f"unknown device {name!r}: use cpu, cuda or cuda:N (e.g. DEVICES=cpu,cuda)")
        if name.startswith("cuda") and here:
            if not torch.cuda.is_available():
                raise SettingsError(f"DEVICES={spec}: CUDA is not available on this machine "
                                    f"(torch {torch.__version__}); use DEVICES=cpu")
            index = int(name.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise SettingsError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return list(dict.fromkeys(names))


def resolve_strategies(spec: str, quantities: tuple[str, ...] = ("jacobian",), peers: bool = False,
                       grid_names: tuple[str, ...] = (), grid_path: str = "the grid") -> list[str]:
    """The named strategies, or every registered strategy of the run's quantities (each case runs those of its own
    quantity: RunPlan.strategies_for) — or the grid's own list of them (its `strategies` key) —, another framework's
    (a peer, e.g. the JAX plugin's) only where the grid says `peers = true`: installing a plugin does not change what
    a grid measures. A named strategy that computes no quantity the run measures is refused."""
    wanted = [q for q in QUANTITIES if q in quantities]
    default = [n for n, s in strategies.REGISTRY.items() if s.quantity in wanted and (peers or not s.peer)]
    if grid_names and not spec:
        unknown = [n for n in grid_names if n not in strategies.REGISTRY or strategies.REGISTRY[n].peer]
        if unknown:
            raise SettingsError(f"{grid_path}: strategies: unknown strategy {unknown[0]!r} (a peer's come from "
                                "`peers = true`)")
        default = [n for n in default if n in grid_names or strategies.REGISTRY[n].peer]
    names = [s.strip() for s in spec.split(",") if s.strip()] if spec else default
    for name in names:
        if name not in strategies.REGISTRY:
            raise SettingsError(f"unknown strategy {name!r}: choose from {', '.join(default)}")
        quantity = strategies.REGISTRY[name].quantity
        if quantity not in wanted:
            raise SettingsError(f"strategy {name!r} computes a {quantity}, and this run measures "
                                f"{' and '.join(wanted)} only: add QUANTITY={','.join([*wanted, quantity])} (or use a "
                                "grid whose quantities hold it), or leave it out of STRATEGIES")
    return list(dict.fromkeys(names))


def resolve_choices(spec: str, variable: str, what: str, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    """A comma-separated setting (DTYPE=, MODE=, QUANTITY=) as distinct names, each one of `allowed`; None when it
    is empty (the grid's own then)."""
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    for name in names:
        if name not in allowed:
            raise SettingsError(f"{variable}={spec}: unknown {what} {name!r}; choose from {', '.join(allowed)}")
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


def plan_run(settings: Settings, here: bool = True) -> RunPlan:
    """Validate every setting and resolve the run; nothing is written (THREADS already applies to this process).
    here=False plans for another machine (`make plan`, `make submit` from a cluster's login node): CUDA devices are
    checked by name only."""
    if settings.shard:
        parse_shard(settings.shard)  # refused up front; bench/scale/shards.py keeps that shard's cases
    settings = absolute_paths(settings)
    the_grid = grid.load_grid(grid_for(settings))
    devices = resolve_devices(settings.devices, here)
    dtypes = resolve_choices(settings.dtype, "DTYPE", "dtype", grid.DTYPES)
    modes = resolve_choices(settings.mode, "MODE", "mode", MODES)
    quantities = resolve_choices(settings.quantity, "QUANTITY", "quantity", QUANTITIES)
    strategy_names = resolve_strategies(settings.strategies,
                                        quantities or tuple(q for b in the_grid.blocks for q in b.quantities),
                                        the_grid.peers, the_grid.strategies, str(the_grid.path))
    threads = apply_threads(settings.threads or str(the_grid.threads or ""))
    chosen = resolve_models(the_grid, settings.model, dtypes, settings.in_dim, devices)
    the_grid, model_defs, notes = chosen.grid, chosen.defs, chosen.notes
    memory_budget = parse_bytes(settings.memory_budget) if settings.memory_budget else None
    time_budget = parse_seconds(settings.time_budget) if settings.time_budget else the_grid.budget.time_s
    run_id = results.check_run_id(settings.run or f"{time.strftime('%Y%m%d-%H%M%S')}-{the_grid.name}")
    plan = RunPlan(
        settings=settings,
        grid=the_grid,
        run_id=run_id,
        folder=Path(settings.results_dir) / run_id,
        devices=devices,
        strategy_names=strategy_names,
        model_defs=model_defs,
        cases=chosen.measurable(grid.expand(the_grid, tuple(model_defs) if settings.model else None, dtypes, modes,
                                            quantities, chosen.own)),
        memory_budget_bytes=memory_budget,
        time_budget_s=time_budget,
        threads=threads,
        notes=notes,
        compiled=resolve_compiled(settings.compiled, settings.strategies),
        processes=resolve_processes(settings.processes),
        fidelity=resolve_fidelity(settings.fidelity),
    )
    plan.notes += [f"no strategy of STRATEGIES= computes a {q}: its shapes are not measured" for q in
                   dict.fromkeys(c.quantity for c in plan.cases) if not any(plan.strategies_for(c) for c in plan.cases
                                                                             if c.quantity == q)]
    plan.plan_hash, plan.total_cases = plan_hash(plan), plan.planned_cases
    return plan


def absolute_paths(settings: Settings) -> Settings:
    """GRID= and MODEL= files as absolute paths: env.json records them so, and a worker process or a resumed run
    started from another folder finds the same files."""
    grid_file = Path(settings.grid)
    file, colon, attr = settings.model.rpartition(":")
    return replace(settings, grid=str(grid_file.resolve()) if grid_file.is_file() else settings.grid,
                   model=f"{Path(file).resolve()}:{attr}" if colon and Path(file).is_file() else settings.model)


def grid_for(settings: Settings) -> str:
    """GRID=, where the default grid means the default for the model: `batch` for a model of fixed sizes (MODEL= a
    factory of no arguments), whose sizes the default grid's hidden, in and out sweeps cannot vary."""
    if settings.grid != DEFAULT_GRID or not settings.model:
        return settings.grid
    return FIXED_MODEL_GRID if models.resolve(settings.model).fixed else settings.grid


MAX_PROCESSES = 4


def resolve_processes(spec: str) -> int:
    if spec not in [str(n) for n in range(1, MAX_PROCESSES + 1)]:
        raise SettingsError(f"PROCESSES={spec!r}: give 2 (the contenders timed again in a second process), 1, or up "
                            f"to {MAX_PROCESSES}")
    return int(spec)


def resolve_fidelity(spec: str) -> float:
    try:
        share = float(spec) if spec else 0.1
    except ValueError:
        share = -1.0
    if not 0 <= share <= 1:
        raise SettingsError(f"FIDELITY={spec!r}: give the share of the first pass's time for the fidelity check, "
                            "from 0 (none) to 1, e.g. 0.1")
    return share


def resolve_compiled(spec: str, strategies_spec: str) -> bool | None:
    if spec not in ("", "0", "1"):
        raise SettingsError(f"COMPILED={spec!r}: give 1 (compiled strategies on every case) or 0 (on none)")
    if spec:
        return spec == "1"
    return True if strategies_spec else None  # strategies named in STRATEGIES= run wherever they are asked for


def plan_hash(plan: RunPlan) -> str:
    import torch

    payload = {
        "fingerprint": {k: v for k, v in plan.fingerprint().items() if k != "shard"},
        "models": {name: d.spec for name, d in sorted(plan.model_defs.items())},
        "compiled": plan.compiled,
        "cases": [case_id(name, device, case.shape_id) for device in plan.devices for case in plan.cases
                  for name in plan.strategies_for(case)],
        "torch": torch.__version__,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def env_fields(plan: RunPlan) -> dict[str, Any]:
    """What env.json says about the plan: its hash and size, and the shard (None for a whole run)."""
    shard = plan.shard
    return {"plan_hash": plan.plan_hash, "plan_cases": plan.total_cases,
            "shard": None if shard is None else {"index": shard.index, "count": shard.count, "run": shard.run,
                                                 "split": shard.split, "shapes": shard.shapes}}
