"""A side of a comparison: one (run, device), its cases and its verdicts (bench/report/compare.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.report.best import best_per_shape
from bench.report.frames import LoadedRun
from bench.schema import DEVICE_ORDER, SHAPE_COLUMNS

SHAPE = [c for c in SHAPE_COLUMNS if c != "device"]  # a shape as both sides measured it: its quantity included


@dataclass
class Side:
    label: str
    run: LoadedRun
    device: str
    frame: pd.DataFrame

    @property
    def best(self) -> pd.DataFrame:
        """best_per_shape of this side, with the verdicts of its playoffs."""
        playoffs = self.run.playoffs
        return best_per_shape(self.frame, playoffs[playoffs["device"] == self.device])


def sides_of(runs: list[LoadedRun]) -> list[Side]:
    """(run, device) pairs in the order given, cpu before cuda within a run, with short distinct labels."""
    pairs = [(run, device) for run in runs
             for device in sorted(run.frame["device"].unique(), key=lambda d: (DEVICE_ORDER.get(d, 9), d))]
    one_device = all(r.frame["device"].nunique() == 1 for r in runs)
    labels: list[str] = []
    for run, device in pairs:
        label = run.run_id if one_device else device if len(runs) == 1 else f"{run.run_id}-{device}"
        labels.append(label if label not in labels else f"{label}-{len(labels) + 1}")
    return [Side(label, run, device, run.frame[run.frame["device"] == device])
            for label, (run, device) in zip(labels, pairs, strict=True)]
