"""Pick: what autotune chose for one input shape, and why; the fields the cache keeps, and reading them back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from strategies import REGISTRY

SOURCE_FIELDS = ("source", "where", "measured", "context")  # where a pick comes from: said when read, never kept


@dataclass
class Pick:
    """What autotune chose for one input shape, and why."""

    strategy: str
    verdict: str  # "winner" | "tie"
    tied_with: list[str] = field(default_factory=list)  # not surely more than stats.TIE_MARGIN slower than the pick
    times: dict[str, float] = field(default_factory=dict)  # median seconds per call of every valid candidate (its
    # rounds in the race; a candidate not raced: its single timed call)
    first: dict[str, float] = field(default_factory=dict)  # the single timed call after validation, which decided
    # who races and how many calls a round takes
    ratios: dict[str, list[float]] = field(default_factory=dict)  # contender -> [time / the pick's, low, high]
    raced: list[str] = field(default_factory=list)  # the candidates timed together in the race
    contenders: list[str] = field(default_factory=list)  # the raced ones not screened out: the verdict is among them
    rounds: int = 0  # sweeps of the race (a screened-out candidate ran in the first ones only)
    kept: dict[str, int] = field(default_factory=dict)  # raced candidate -> rounds kept
    refused: dict[str, str] = field(default_factory=dict)  # candidate -> why it cannot be used here
    validated: int = 0  # candidates whose first call was checked against the float64 reference
    phases: dict[str, float] = field(default_factory=dict)  # seconds of the tuning's parts: start (the model's
    # output, the cache lookup), reference (float64, and warming the strategies up), validation (first calls and the
    # single timed calls), race
    seconds: float = 0.0  # wall time of the tuning
    budget_s: float = 0.0
    note: str = ""  # a disturbed race, a fallback pick, blocks set aside
    source: str = "tuned"  # tuned | cache | results
    where: str = ""  # the cache file, or the run folder the pick comes from
    measured: str = ""  # results=: which model the run measured, where
    context: str = ""  # why the cache or the results were not used

    def saved(self) -> dict[str, Any]:
        """The fields kept in the cache file (where a pick comes from is said when it is read back)."""
        return {k: v for k, v in asdict(self).items() if k not in SOURCE_FIELDS}

    @classmethod
    def from_saved(cls, data: dict[str, Any], where: str) -> Pick | None:
        """A pick read back from the cache file; None for an entry this version cannot use (a strategy no longer
        registered, or fields of the wrong kind): it is tuned again."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            pick = cls(**{**known, "source": "cache", "where": where})
            return pick if pick.usable() else None
        except TypeError:  # a field missing, or of a kind no check expects: written by an incompatible version
            return None

    def usable(self) -> bool:
        """Every field of the kind this version writes, and a strategy still registered."""
        return (self.strategy in REGISTRY and self.verdict in ("winner", "tie")
                and all(isinstance(getattr(self, f), list) for f in ("tied_with", "raced", "contenders"))
                and all(isinstance(getattr(self, f), dict)
                        for f in ("times", "first", "ratios", "refused", "kept", "phases"))
                and all(isinstance(t, (int, float)) for t in [*self.times.values(), *self.first.values()]))
