"""The terms every module shares: case statuses and their groups.

Measurement writes these words into result files and reporting reads them back; both import them from here.
"""

from __future__ import annotations

# Every status a case can end in, in the order tables list them.
STATUSES = ("ok", "wrong", "oom", "over_budget", "timeout", "skipped", "unsupported", "error")
STATUS_MEANING = {
    "ok": "validated against the float64 reference, then timed",
    "wrong": "validation failed: the strategy returns a wrong result without raising (never timed)",
    "oom": "ran out of memory",
    "over_budget": "predicted over the memory budget: not run",
    "timeout": "one call took longer than the time budget",
    "skipped": "not run: a smaller shape of the same strategy timed out or ran out of memory",
    "unsupported": "the strategy does not apply to this model",
    "error": "the strategy, the model or the harness raised; the message says which",
}
# Cases that did not finish for lack of time or memory, or broke: neither a speed nor a correctness verdict.
FAILED = ("oom", "over_budget", "timeout", "skipped", "error")


def status_kind(status: str) -> str:
    """ok, wrong, unsupported or failed: the four answers a reader needs about one strategy on one model."""
    return status if status in ("ok", "wrong", "unsupported") else "failed"
