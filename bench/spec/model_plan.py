"""The models of a run, resolved and checked before anything is written: presets and files named by MODEL= or by a
grid's `models` (the same way), what each model fixes for itself (grid.Own: the sizes of a factory of no arguments,
the dtype it is built in), and one line for each mistake a user makes with a model of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.errors import BenchError
from bench.schema import FIXED_HIDDEN, Sizes
from bench.spec import grid, models, own_model


class ModelSettingsError(BenchError):
    pass


@dataclass
class ModelSet:
    """A run's models: definitions by name, what each fixes for itself, and notes worth a line before the run."""

    defs: dict[str, models.ModelDef]
    own: dict[str, grid.Own] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    grid: grid.Grid | None = None  # the grid with its blocks' models by name (a path becomes file.factory)
    untrainable: set[str] = field(default_factory=set)  # no parameter requires grad: no train-mode cases

    def measurable(self, cases: list[grid.Case]) -> list[grid.Case]:
        """The cases without the train-mode ones of a model with nothing to train; a ModelError when none is left."""
        kept = [c for c in cases if not (c.mode == "train" and c.model in self.untrainable)]
        if cases and not kept:
            raise models.ModelError(f"model {sorted(self.untrainable)[0]} has no trainable parameters "
                                    "(requires_grad is False on every one): train mode has nothing to train; "
                                    "MODE=jacobian measures it")
        return kept


def grid_with_names(the_grid: grid.Grid) -> tuple[grid.Grid, dict[str, models.ModelDef]]:
    """The grid's models resolved (a preset, or path/to/file.py:factory as MODEL= takes it; a relative path is read
    from the current folder, else from the grid file's), each block naming them by their run name."""
    defs: dict[str, models.ModelDef] = {}
    names: dict[str, str] = {}
    for spec in the_grid.models:
        try:
            model_def = models.resolve(_beside(spec, the_grid.path))
        except models.ModelError as exc:
            raise grid.GridError(f"{the_grid.path}: models: {exc}") from None
        defs[model_def.name], names[spec] = model_def, model_def.name
    blocks = tuple(replace(b, models=tuple(dict.fromkeys(names[m] for m in b.models))) for b in the_grid.blocks)
    return replace(the_grid, blocks=blocks), defs


def _beside(spec: str, grid_path: Path) -> str:
    file, colon, attr = spec.rpartition(":")
    if not colon or spec in models.PRESETS or Path(file).is_file():
        return spec
    beside = grid_path.parent / file
    return f"{beside}:{attr}" if beside.is_file() else spec


def resolve_models(the_grid: grid.Grid, override: str, dtypes: tuple[str, ...] | None, in_dim: str = "",
                   devices: list[str] | None = None) -> ModelSet:
    """Every model of the run (MODEL= `override`, else the grid's), with what it fixes for itself; refuses, in one
    line, a size its architecture does not take, a model that cannot run or that autograd cannot differentiate."""
    if override:
        model_def = models.resolve(override)
        the_grid, defs = the_grid, {model_def.name: model_def}
    else:
        the_grid, defs = grid_with_names(the_grid)
    given_in_dim = own_model.parse_in_dim(in_dim)
    found = ModelSet(defs, grid=the_grid)
    for name, model_def in defs.items():
        found.own[name] = _own_sizes(model_def, given_in_dim, found.notes)
    for name in [n for n in defs if not found.own[n].fixed]:
        _require_axes(the_grid, name, override)
    _check_sizes(found, dtypes, override)
    for name in defs:
        _probe(found, name, _probe_sizes(found, name, override), dtypes, devices or ["cpu"])
    found.own = {k: v for k, v in found.own.items() if v != grid.Own()}
    return found


def _own_sizes(model_def: models.ModelDef, in_dim: int | None, notes: list[str]) -> grid.Own:
    if not model_def.fixed:
        if in_dim is not None:
            raise ModelSettingsError(f"IN_DIM={in_dim}: model {model_def.name} takes its sizes from the grid "
                                     "(factory(in_dim, hidden, out_dim)); IN_DIM= is for a factory of no arguments")
        return grid.Own()
    sizes = own_model.own_sizes(model_def, in_dim)
    notes.append(f"model {model_def.name} has fixed sizes: in {sizes.in_dim} (from {sizes.source}), out "
                 f"{sizes.out_dim}; measured at the grid's batch sizes only (hidden, in and out are not its axes)")
    return grid.Own(in_dim=sizes.in_dim, out_dim=sizes.out_dim)


def _require_axes(the_grid: grid.Grid, name: str, override: str) -> None:
    for n, block in enumerate(the_grid.blocks):
        missing = grid.missing_axes(block)
        if missing and (override or name in block.models):
            where = "base" if n == 0 else f"also[{n}].base"
            raise grid.GridError(f"{the_grid.path}: {where}: missing {', '.join(missing)}, which model {name} "
                                 "takes from the grid (only a model of fixed sizes brings its own)")


def _check_sizes(found: ModelSet, dtypes: tuple[str, ...] | None, override: str) -> None:
    """Every case of every block against its model's `fits`: one line naming the model, the sizes and the block."""
    unfit = []  # one message per case that does not fit
    for n, block in enumerate(found.grid.blocks):
        where = f"grid {found.grid.path.name}, " + ("top-level block" if n == 0 else f"[[also]] block {n}")
        if override:
            where += f"; MODEL={override} replaces the models of every block"
        block_models = tuple(found.defs) if override else block.models
        for case in grid.expand(replace(found.grid, blocks=(block,)), block_models, dtypes, own=found.own):
            problem = found.defs[case.model].problem(case.sizes)
            if problem:
                unfit.append(f"model {case.model}: {problem}; case {case.shape_id} of {where}")
    if unfit:
        more = f"; {len(unfit) - 1} more case(s) do not fit" if len(unfit) > 1 else ""
        raise models.ModelError(unfit[0] + more)


def _probe_sizes(found: ModelSet, name: str, override: str) -> Sizes:
    """Where a model is tried: the base of its first block, at its own sizes when it fixes them."""
    base = next(b.base for b in found.grid.blocks if override or name in b.models)
    own = found.own[name]
    return Sizes(base["batch"], FIXED_HIDDEN, own.in_dim, own.out_dim) if own.fixed else Sizes.of(base)


def _probe(found: ModelSet, name: str, sizes: Sizes, dtypes: tuple[str, ...] | None, devices: list[str]) -> None:
    """Run the model once; refuse what cannot be measured, note what a user should know, fix its dtype."""
    model_def = found.defs[name]
    probe = own_model.check(model_def, sizes)
    if probe.graph:
        raise models.ModelError(f"model {name}: {probe.graph}")
    found.own[name] = replace(found.own[name], dtype=_own_dtype(found, name, probe, dtypes))
    if probe.training and name not in models.PRESETS:
        found.notes.append(f"model {name} is measured in training mode, as its factory returns it "
                           "(nn.Module.training=True: Dropout and BatchNorm behave as in training); return "
                           "model.eval() from the factory to measure inference")
    found.notes += own_model.precision_notes(name, probe)
    if not probe.trainable:
        found.untrainable.add(name)
        found.notes.append(f"model {name} has no trainable parameters (requires_grad is False on every one): train "
                           "mode, which backpropagates through J to the parameters, has nothing to train; its "
                           "train cases are left out")
    if probe.scripted:
        found.notes.append(f"model {name} is a TorchScript module: its speed depends on how it was first called (its "
                           "profiling executor specializes on the first calls). The run, and the fresh processes that "
                           "check it, call it first under no_grad (each shape's check of model(x)), as a program "
                           "that runs inference first; where the Jacobian is a program's first call, autograd calls "
                           "of a scripted MLP took ×1.7 as long here (122 µs against 70 µs)")
    if probe.compiled:
        found.notes.append(f"model {name} is a torch.compile'd module: it is measured as the module it wraps "
                           "(model._orig_mod), and torch.compile by the *_compiled strategies, which compile the "
                           "whole Jacobian call with the model inlined (compiled on its own, the model failed to "
                           "compile in the run's forked worker processes: autograd's threads and fork)")
    if probe.one_sample:
        found.notes.append(f"model {name} fails on a one-sample batch ({probe.one_sample}): its B=1 cases and the "
                           "per-sample strategies (vmap_jacrev, vmap_jacfwd) will end in error")
    found.notes += own_model.device_notes(name, probe, devices)


def _own_dtype(found: ModelSet, name: str, probe: own_model.Probe, dtypes: tuple[str, ...] | None) -> str | None:
    """A model built in another dtype than float32 is measured as built, unless DTYPE= says otherwise; a note says
    which. None: the grid's dtypes (or DTYPE=) as usual."""
    built = str(probe.dtype).removeprefix("torch.") if probe.dtype else None
    grid_dtypes = tuple(dict.fromkeys(d for b in found.grid.blocks for d in b.dtypes))
    if not built or built == "float32" or built in (dtypes or grid_dtypes):
        return None
    if dtypes:
        found.notes.append(f"model {name} is built in {built}: cast to {', '.join(dtypes)}, as DTYPE= says")
        return None
    found.notes.append(f"model {name} is built in {built} and the grid says {', '.join(grid_dtypes)}: measured in "
                       f"{built}, as built; DTYPE={grid_dtypes[0]} casts it")
    return built


def check_models(specs: list[str], the_grid: grid.Grid, dtypes: tuple[str, ...] | None, override: str = ""
                 ) -> tuple[dict[str, models.ModelDef], list[str]]:
    """The grid's models (or MODEL= `override`) resolved and checked: (definitions by name, notes)."""
    del specs  # the grid's models, or the override: resolve_models reads them itself
    found = resolve_models(the_grid, override, dtypes)
    return found.defs, found.notes
