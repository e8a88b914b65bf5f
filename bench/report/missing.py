"""What a run could not measure, said at the top of its report: shapes without a valid strategy, verdicts resting on
an unknown or unpaired ratio, ok cases without an interval. A reader sees the holes instead of a table that hides
them (the tables show — where a number is missing).
"""

from __future__ import annotations

import pandas as pd

from bench.schema import SHAPE_COLUMNS, Sizes, shape_id

SHOWN = 3  # shapes named in a line; the rest counted


def missing_lines(frame: pd.DataFrame, playoffs: pd.DataFrame) -> list[str]:
    """One line per kind of hole in a run's results ([] when nothing is missing)."""
    return [line for line in (_no_valid(frame), _unsure_verdicts(playoffs), _no_interval(frame)) if line]


def _name(row: pd.Series) -> str:
    return shape_id(row["model"], row["dtype"], Sizes.of(row), row["mode"], row["quantity"]) + f" ({row['device']})"


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _no_valid(frame: pd.DataFrame) -> str:
    """Shapes where no strategy gave a valid result: every one wrong, unsupported or failed."""
    valid = frame.groupby(SHAPE_COLUMNS, sort=False)["valid"].any()
    empty = [_name(pd.Series(dict(zip(SHAPE_COLUMNS, key, strict=True)))) for key, ok in valid.items() if not ok]
    if not empty:
        return ""
    return (f"{len(empty)} of {len(valid)} shapes have no valid strategy (every one wrong, unsupported or failed): "
            f"{_listed(empty)}; their statuses and messages are under \"Status of every case\"")


def _unsure_verdicts(playoffs: pd.DataFrame) -> str:
    """Verdicts with a contender whose ratio to the best is unknown (a tie by the rule) or from unpaired medians."""
    if playoffs is None or playoffs.empty:
        return ""
    notes = playoffs["message"].fillna("").astype(str)
    unsure = playoffs[notes.str.contains("unknown or unbounded|no rounds paired", regex=True)]
    if unsure.empty:
        return ""
    names = [_name(r) for _, r in unsure.iterrows()]
    return (f"{len(unsure)} verdicts rest on a ratio the run could not pair or bound (a contender re-timed apart from "
            f"the fastest, or one round kept): {_listed(names)}; an unknown ratio counts as a tie (verdicts.jsonl "
            "says which contender)")


def _no_interval(frame: pd.DataFrame) -> str:
    kept_rounds = frame["round_times_s"].map(lambda r: isinstance(r, list) and len(r) > 0).astype(bool)
    ok = frame.loc[(frame["status"] == "ok") & kept_rounds]  # older runs kept no rounds, so made no interval
    open_ended = ok[ok["time_ci_low_s"].isna() | ok["time_ci_high_s"].isna()]
    if open_ended.empty:
        return ""
    return (f"{len(open_ended)} of {len(ok)} ok cases have no 95% interval (too few rounds kept to bound it): their "
            "times show without one")
