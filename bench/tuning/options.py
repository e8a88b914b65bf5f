"""autotune's arguments, checked and resolved once into Settings; every bad argument is one AutotuneError."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from bench.errors import BenchError
from bench.schema import MODES, QUANTITIES
from bench.tuning import cache as tunecache
from strategies import REGISTRY
from strategies import names as names_of

Runs = str | PathLike | Sequence[str | PathLike] | None  # results=: one run folder or several


class AutotuneError(BenchError):
    """Bad arguments, or no strategy gives a valid Jacobian of the model (the message names every reason)."""


@dataclass(frozen=True)
class Settings:
    """autotune's arguments, checked and resolved once."""

    mode: str
    candidates: list[str]
    quantity: str
    budget_s: float
    folder: Path | None  # cache folder (None: no cache)
    results: list[Path]

    @property
    def what(self) -> str:
        """"jacobian" or "train" for the Jacobian (its mode), "laplacian · train" for a second-order quantity."""
        return self.mode if self.quantity == "jacobian" else f"{self.quantity} · {self.mode}"


def resolve(mode: str, strategies: Sequence[str] | str | None, budget_s: float, compiled: bool,
            cache: bool | str | PathLike, results: Runs, quantity: str = "jacobian") -> Settings:
    """The Settings of autotune's arguments; AutotuneError for the first bad one."""
    if mode not in MODES:
        raise AutotuneError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if quantity not in QUANTITIES:
        raise AutotuneError(f"quantity must be one of {', '.join(QUANTITIES)}, not {quantity!r}")
    names = candidates(strategies, quantity, compiled)
    if not names:
        raise AutotuneError("no candidate strategy: strategies= is empty")
    if not isinstance(budget_s, (int, float)) or not budget_s > 0:
        raise AutotuneError(f"budget_s must be a positive number of seconds, not {budget_s!r}")
    runs = [] if results is None else [results] if isinstance(results, (str, PathLike)) else list(results)
    return Settings(mode, names, quantity, float(budget_s), tunecache.folder_of(cache), [Path(r) for r in runs])


def candidates(strategies: Sequence[str] | str | None, quantity: str, compiled: bool) -> list[str]:
    """The registry names allowed to win: those named (checked), else every strategy of the quantity but the closed
    forms, the peers and the stochastic estimators (and the compiled ones unless compiled=True)."""
    own = names_of(quantity)
    if strategies is None:
        return [n for n in own if not REGISTRY[n].closed_form and not REGISTRY[n].peer and not REGISTRY[n].estimator
                and (compiled or not REGISTRY[n].compiled)]
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    unknown = [n for n in strategies if n not in REGISTRY]
    if unknown:
        raise AutotuneError(f"unknown strateg{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}: choose "
                            f"from {', '.join(own)}")
    other = [n for n in strategies if REGISTRY[n].quantity != quantity]
    if other:
        raise AutotuneError(f"{', '.join(other)} comput{'e' if len(other) > 1 else 'es'} "
                            f"{' and '.join(sorted({REGISTRY[n].quantity for n in other}))}, not a {quantity}: "
                            f"choose from {', '.join(own)}, or pass quantity=")
    return list(dict.fromkeys(strategies))
