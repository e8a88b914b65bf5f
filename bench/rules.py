"""Who may win a shape: one rule, read by the harness while it times, the verdicts, the reports, recommend and
autotune.

A strategy may win (be a shape's answer, a contender in its verdict, a recommendation) when it is autodiff in
PyTorch and exact: not a closed form (the limit the report compares with), not another framework's peer (shown
beside the race), not a stochastic estimator, and it returns J (a sum over outputs is not J when out > 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the harness and autotune import this module: pandas stays out of them
    import pandas as pd


def may_win(*, is_jacobian: bool, estimator: bool, closed_form: bool, peer: str) -> bool:
    return bool(is_jacobian) and not estimator and not closed_form and not peer


def eligible(record: Any) -> bool:
    """may_win for anything with the record's fields: a CaseRecord, or a row of a run's frame."""
    return may_win(is_jacobian=record.is_jacobian is True, estimator=record.estimator is True,
                   closed_form=record.closed_form is True, peer=record.peer or "")


def eligible_rows(frame: pd.DataFrame) -> pd.Series:
    """may_win for every row of a run's frame at once."""
    return (frame["is_jacobian"].astype(bool) & ~frame["estimator"].astype(bool) & ~frame["closed_form"].astype(bool)
            & frame["peer"].fillna("").eq(""))
