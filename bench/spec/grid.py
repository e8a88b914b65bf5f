"""Grid presets (TOML) and their expansion into cases.

A preset is data, validated on load: every key, its meaning and default are in docs/grids.md. An unknown key or a
wrong value is a GridError of one line naming the file and the key.

`expand(grid)` (bench/spec/cases.py) yields one Case per distinct shape.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from bench.errors import BenchError
from bench.schema import AXES, MODES, QUANTITIES
from bench.spec.cases import Case, Own, case_from_dict, expand  # noqa: F401  (the grid's cases: expand(grid))

GRIDS_DIR = Path(__file__).parent / "grids"
DTYPES = ("float32", "float64", "float16", "bfloat16")
_BLOCK_KEYS = {"models", "dtypes", "modes", "quantities", "compiled", "base", "sweep", "plane", "cartesian"}
_TOP_KEYS = _BLOCK_KEYS | {"description", "budget", "also", "threads", "published", "peers", "strategies"}
# A published result the run is checked against: time(slower) / time(faster) at one shape, as the source reports it.
_PUBLISHED_KEYS = {"source": str, "model": str, "dtype": str, "batch": int, "hidden": int, "in_dim": int,
                   "out_dim": int, "slower": str, "faster": str, "ratio": float, "conditions": str}
_BUDGET_KEYS = ("time_s", "memory_fraction", "target_s", "settle_s", "compile_s")


class GridError(BenchError):
    """A grid preset that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Budget:
    time_s: float = 5.0  # one strategy call longer than this is a timeout
    memory_fraction: float = 0.5  # of the device's available memory
    target_s: float = 0.25  # wall time spent timing one case (rounds × iterations)
    settle_s: float = 5.0  # at most this long to wait for other processes' load to pass before re-timing
    compile_s: float = 300.0  # the first call of a compiled strategy (compiling included) longer than this: timeout


@dataclass(frozen=True)
class GridBlock:
    """One declarative part of a grid: models × dtypes × (base point, sweeps, plane, cartesian product)."""

    models: tuple[str, ...]
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]
    compiled: bool  # the compiled strategies (torch.compile, seconds of compiling per shape) run on this block too
    base: dict[str, int]
    sweep: dict[str, tuple[int, ...]]
    plane: dict[str, tuple[int, ...]]
    cartesian: dict[str, tuple[int, ...]]
    quantities: tuple[str, ...] = ("jacobian",)

    def as_dict(self) -> dict[str, Any]:
        # "quantities" only where a block asks for more than the Jacobian: a Jacobian grid's dict, and so the resume
        # fingerprint and the plan hash of its runs, stay what they were before the QUANTITY axis
        quantities = {} if self.quantities == ("jacobian",) else {"quantities": list(self.quantities)}
        return {
            "models": list(self.models),
            "dtypes": list(self.dtypes),
            "modes": list(self.modes),
            **quantities,
            "compiled": self.compiled,
            "base": self.base,
            "sweep": {k: list(v) for k, v in self.sweep.items()},
            "plane": {k: list(v) for k, v in self.plane.items()},
            "cartesian": {k: list(v) for k, v in self.cartesian.items()},
        }


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    description: str
    blocks: tuple[GridBlock, ...]  # the top level, then each [[also]]
    budget: Budget
    threads: int | None = None  # torch intra-op threads this grid is meant for (THREADS= overrides)
    published: tuple[dict[str, Any], ...] = ()  # published ratios to set beside this run's (reports show both)
    peers: bool = False  # another framework's strategies (installed plugins with a `peer`, e.g. JAX) run here too
    strategies: tuple[str, ...] = ()  # PyTorch's strategies this grid runs (empty: all); STRATEGIES= overrides

    @property
    def base(self) -> dict[str, int]:
        return self.blocks[0].base

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for b in self.blocks for m in b.models))

    def as_dict(self) -> dict[str, Any]:
        main, *also = (b.as_dict() for b in self.blocks)
        return {"name": self.name, "path": str(self.path), "description": self.description, **main,
                "also": also, "budget": vars(self.budget), "threads": self.threads,
                "published": [dict(p) for p in self.published], **({"peers": True} if self.peers else {}),
                **({"strategies": list(self.strategies)} if self.strategies else {})}


def available() -> list[str]:
    return sorted(p.stem for p in GRIDS_DIR.glob("*.toml"))


def load_grid(spec: str) -> Grid:
    """A preset name (bench/spec/grids/<name>.toml) or a path to a .toml file."""
    path = Path(spec)
    if path.suffix != ".toml" and "/" not in spec:
        path = GRIDS_DIR / f"{spec}.toml"
        if not path.exists():
            raise GridError(f"unknown grid {spec!r}: choose one of {', '.join(available())} or give a path to a .toml")
    if not path.is_file():
        raise GridError(f"grid file {spec} not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GridError(f"{path}: not valid TOML ({exc})") from None
    return _parse(data, path)


def _parse(data: dict[str, Any], path: Path) -> Grid:
    def fail(key: str, problem: str) -> GridError:
        return GridError(f"{path}: {key}: {problem}")

    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
    main = _parse_block({k: v for k, v in data.items() if k in _BLOCK_KEYS}, None, "", fail)
    also = data.get("also", [])
    if not isinstance(also, list) or not all(isinstance(t, dict) for t in also):
        raise fail("also", "must be an array of tables: [[also]]")
    blocks = [main]
    for n, table in enumerate(also, start=1):
        prefix = f"also[{n}]."
        extra = set(table) - _BLOCK_KEYS
        if extra:
            raise fail(prefix + sorted(extra)[0], f"unknown key (allowed: {', '.join(sorted(_BLOCK_KEYS))})")
        blocks.append(_parse_block(table, main, prefix, fail))

    budget_table = data.get("budget", {})
    if not isinstance(budget_table, dict):
        raise fail("budget", "must be a table: [budget]")
    budget_values = {}
    for key, value in budget_table.items():
        if key not in _BUDGET_KEYS:
            raise fail(f"budget.{key}", f"unknown key (allowed: {', '.join(_BUDGET_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise fail(f"budget.{key}", f"must be a positive number, got {value!r}")
        budget_values[key] = float(value)
    if budget_values.get("memory_fraction", 0.5) > 1:
        raise fail("budget.memory_fraction", "must be at most 1")
    if not isinstance(data.get("description", ""), str):
        raise fail("description", f"must be a string, got {data['description']!r}")
    threads = data.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0):
        raise fail("threads", f"must be a positive integer, got {threads!r}")
    if not isinstance(data.get("peers", False), bool):
        raise fail("peers", f"must be true or false, got {data['peers']!r}")
    names = data.get("strategies", [])
    if "strategies" in data and (not isinstance(names, list) or not names
                                 or not all(isinstance(n, str) and n for n in names)):
        raise fail("strategies", f"must be a non-empty list of strategy names, got {names!r}")
    return Grid(name=path.stem, path=path, description=str(data.get("description", "")), blocks=tuple(blocks),
                budget=Budget(**budget_values), threads=threads, published=_parse_published(data, fail),
                peers=data.get("peers", False), strategies=tuple(dict.fromkeys(names)))


def _parse_published(data: dict[str, Any], fail) -> tuple[dict[str, Any], ...]:
    """[[published]] tables: every key of _PUBLISHED_KEYS, of its type."""
    tables = data.get("published", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise fail("published", "must be an array of tables: [[published]]")
    for n, table in enumerate(tables, start=1):
        for key, kind in _PUBLISHED_KEYS.items():
            value = table.get(key)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = table[key] = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise fail(f"published[{n}].{key}", f"missing or not a {kind.__name__}")
        extra = set(table) - set(_PUBLISHED_KEYS)
        if extra:
            raise fail(f"published[{n}].{sorted(extra)[0]}", f"unknown key (allowed: {', '.join(_PUBLISHED_KEYS)})")
    return tuple(tables)


def _parse_block(data: dict[str, Any], parent: GridBlock | None, prefix: str, fail) -> GridBlock:
    """A block's keys; an [[also]] block inherits models, dtypes and base axes it does not give."""
    for section in ("base", "sweep", "plane", "cartesian"):
        if section in data and not isinstance(data[section], dict):
            raise fail(prefix + section, f"must be a table, e.g. [{section}]")
    read = _BlockReader(data, prefix, fail)
    plane = read.axes("plane", ("in_dim", "out_dim"))
    if plane and set(plane) != {"in_dim", "out_dim"}:
        raise fail(prefix + "plane", "needs both in_dim and out_dim")
    return GridBlock(
        models=read.names("models", parent.models if parent else ("mlp",)),
        dtypes=read.names("dtypes", parent.dtypes if parent else ("float32",), DTYPES),
        modes=read.names("modes", parent.modes if parent else ("jacobian",), MODES),
        quantities=read.names("quantities", parent.quantities if parent else ("jacobian",), QUANTITIES),
        compiled=read.flag("compiled"),
        base=read.base(parent.base if parent else None),
        sweep=read.axes("sweep"),
        plane=plane,
        cartesian=read.axes("cartesian"),
    )


@dataclass
class _BlockReader:
    """Reads one block's values, raising a GridError that names the file and the key."""

    data: dict[str, Any]
    prefix: str
    fail: Any  # (key, problem) -> GridError

    def names(self, key: str, default: tuple[str, ...], allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = self.data.get(key, list(default))
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.fail(self.prefix + key, "must be a non-empty list of names")
        for v in value:
            if allowed is not None and v not in allowed:
                raise self.fail(self.prefix + key, f"unknown value {v!r} (allowed: {', '.join(allowed)})")
        return tuple(value)

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(self.prefix + key, f"must be true or false, got {value!r}")
        return value

    def size(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail(self.prefix + key, f"sizes must be positive integers, got {value!r}")
        return value

    def axes(self, section: str, allowed: tuple[str, ...] | list[str] = AXES) -> dict[str, tuple[int, ...]]:
        out = {}
        for axis, values in self.data.get(section, {}).items():
            key = f"{section}.{axis}"
            if axis not in allowed:
                raise self.fail(self.prefix + key, f"unknown axis (allowed: {', '.join(allowed)})")
            if not isinstance(values, list) or not values:
                raise self.fail(self.prefix + key, "must be a non-empty list of sizes")
            out[axis] = tuple(sorted({self.size(key, v) for v in values}))
        return out

    def base(self, inherited: dict[str, int] | None) -> dict[str, int]:
        """The block's base point. batch is required; hidden, in_dim and out_dim may be left out when every model of
        the grid is of fixed sizes (planning checks that: missing_axes)."""
        base = dict(inherited or {})
        if inherited is None and not self.data.get("base"):
            raise self.fail("base", "missing: give batch, hidden, in_dim and out_dim of the base point (batch alone "
                            "for models of fixed sizes)")
        for axis, value in self.data.get("base", {}).items():
            if axis not in AXES:
                raise self.fail(f"{self.prefix}base.{axis}", f"unknown axis (allowed: {', '.join(AXES)})")
            base[axis] = self.size(f"base.{axis}", value)
        if "batch" not in base:
            raise self.fail(self.prefix + "base", "missing batch")
        return base


def missing_axes(block: GridBlock) -> list[str]:
    """The axes a block's base point lacks: a sized model needs all four, a model of fixed sizes batch only."""
    return [a for a in AXES if a not in block.base]
