"""Dealing shapes to shards: longest first, each to the least loaded shard (greedy LPT), deterministically."""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import TypeVar

Unit = TypeVar("Unit", bound=Hashable)


def split(costs: dict[Unit, float], count: int) -> dict[Unit, int]:
    """Each unit's shard (1-based): longest first to the least loaded shard (ties: the lowest index). Costs are
    rounded to milliseconds first, so a last-digit difference between machines cannot reorder two units."""
    order = sorted(costs, key=lambda u: (-round(costs[u], 3), repr(u)))
    loads = [(0.0, index) for index in range(1, count + 1)]  # a heap of (predicted seconds, shard)
    assigned = {}
    for u in order:
        load, index = heapq.heappop(loads)
        assigned[u] = index
        heapq.heappush(loads, (round(load + round(costs[u], 3), 3), index))
    return assigned
