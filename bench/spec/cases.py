"""A grid's expansion into cases: one Case per distinct shape, tagged with the grid parts it belongs to, smallest
first. A model that fixes its sizes or its dtype (`Own`: a user model of fixed sizes, or one built in float64) is
measured at its own: the grid's hidden, in and out do not apply to it (only its batch sizes do), nor its dtypes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.schema import AXES, FIXED_HIDDEN, QUANTITIES, Sizes, case_key, shape_id

if TYPE_CHECKING:
    from bench.spec.grid import Grid, GridBlock


@dataclass(frozen=True)
class Own:
    """What a model fixes for itself, replacing the grid's: its sizes (a factory of no arguments) and its dtype (a
    model built in float64, say, measured as built unless DTYPE= says otherwise)."""

    in_dim: int | None = None  # with out_dim: a model of fixed sizes (hidden recorded as FIXED_HIDDEN)
    out_dim: int | None = None
    dtype: str | None = None

    @property
    def fixed(self) -> bool:
        return self.in_dim is not None and self.out_dim is not None

    def point(self, point: dict[str, int]) -> dict[str, int]:
        """The grid's point as this model takes it: its own in, out and hidden, the grid's batch."""
        if not self.fixed:
            return point
        return {"batch": point["batch"], "hidden": FIXED_HIDDEN, "in_dim": self.in_dim, "out_dim": self.out_dim}


# The grid parts that vary hidden, in or out: at a model of fixed sizes, their points fall on the base point.
_SIZE_PARTS = ("hidden", "in_dim", "out_dim", "plane")


@dataclass(frozen=True)
class Case:
    """One shape of the grid in one setting: what every strategy of the shape is measured on."""

    model: str
    dtype: str
    sizes: Sizes
    mode: str = "jacobian"
    quantity: str = "jacobian"  # what every strategy of the shape computes: J, H or the Laplacian
    sweeps: tuple[str, ...] = field(default=(), compare=False)
    compiled: bool = field(default=False, compare=False)  # a block of this shape runs the compiled strategies

    def key(self, strategy: str, device: str) -> tuple:
        """The finished-case key (schema.case_key) of this case measured by `strategy` on `device`."""
        return case_key({"strategy": strategy, "device": device, "model": self.model, "dtype": self.dtype,
                         "mode": self.mode, "quantity": self.quantity, **self.sizes._asdict()})

    @property
    def shape_id(self) -> str:
        return shape_id(self.model, self.dtype, self.sizes, self.mode, self.quantity)

    @property
    def size(self) -> int:
        """A measure of the work in one call: B·H·(in + out), to order cases smallest first."""
        return self.sizes.batch * max(self.sizes.hidden, 1) * (self.sizes.in_dim + self.sizes.out_dim)

    def as_dict(self) -> dict[str, Any]:
        """The case as JSON data (what the host sends a worker process)."""
        return {"model": self.model, "dtype": self.dtype, "sizes": list(self.sizes), "mode": self.mode,
                "quantity": self.quantity, "sweeps": list(self.sweeps), "compiled": self.compiled}


def case_from_dict(data: dict[str, Any]) -> Case:
    return Case(data["model"], data["dtype"], Sizes(*data["sizes"]), data["mode"], data["quantity"],
                tuple(data["sweeps"]), data["compiled"])


def _points(block: GridBlock) -> list[tuple[str, dict[str, int]]]:
    """(grid part, the axes it sets beside the base) of every point of a block."""
    points: list[tuple[str, dict[str, int]]] = [("base", {})]
    points += [(axis, {axis: v}) for axis, values in block.sweep.items() for v in values]
    if block.plane:
        points += [("plane", {"in_dim": i, "out_dim": o})
                   for i, o in itertools.product(block.plane["in_dim"], block.plane["out_dim"])]
    if block.cartesian:
        names = list(block.cartesian)
        points += [("cartesian", dict(zip(names, values, strict=True)))
                   for values in itertools.product(*(block.cartesian[a] for a in names))]
    return points


def expand(grid: Grid, models: tuple[str, ...] | None = None, dtypes: tuple[str, ...] | None = None,
           modes: tuple[str, ...] | None = None, quantities: tuple[str, ...] | None = None,
           own: dict[str, Own] | None = None) -> list[Case]:
    """All distinct cases of the grid, each tagged with the parts it belongs to; smallest first (the Jacobian
    before second order, the quantity alone before training through it).

    `models` (MODEL=) replaces the models of every block, `dtypes` (DTYPE=) their dtypes, `modes` (MODE=) theirs,
    `quantities` (QUANTITY=) theirs; `own` holds what a model fixes for itself (its sizes, its dtype).
    """
    own = own or {}
    parts: dict[tuple, set[str]] = {}  # (model, dtype, Sizes, mode, quantity) -> grid parts
    compiled: set[tuple] = set()  # the keys a block with compiled = true holds
    for block in grid.blocks:
        for model in models or block.models:
            mine = own.get(model, Own())
            for dtype in (mine.dtype,) if mine.dtype else dtypes or block.dtypes:
                for mode, quantity in itertools.product(modes or block.modes, quantities or block.quantities):
                    for part, overrides in _points(block):
                        key = (model, dtype, Sizes.of(mine.point(block.base | overrides)), mode, quantity)
                        parts.setdefault(key, set()).add("base" if mine.fixed and part in _SIZE_PARTS else part)
                        if block.compiled:
                            compiled.add(key)
    order = ("base", *AXES, "plane", "cartesian")
    cases = [Case(*key, sweeps=tuple(p for p in order if p in tags), compiled=key in compiled)
             for key, tags in parts.items()]
    return sorted(cases, key=lambda c: (c.mode != "jacobian", QUANTITIES.index(c.quantity), c.model, c.dtype, c.size,
                                        c.sizes.batch, c.sizes.in_dim, c.sizes.out_dim, c.sizes.hidden))
