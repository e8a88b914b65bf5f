"""Nearest measured neighbours in log space: what measured shapes say about one that was not measured.

Sizes span four orders of magnitude and costs grow as powers of them, so distances are taken between log2 sizes and
values are averaged as logs: the k nearest points, weighted by 1 / distance**power (inverse-distance weighting); an
exact match is the answer itself. The one interpolation of the project: bench/scale/costs.py predicts the wall time of
a run with it, bench/report/recommend.py the time of a strategy at a shape no run measured; numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.schema import FIXED_HIDDEN

K_NEAREST = 4
POWER = 2.0
EXACT = 1e-9  # a distance below this is the same point


# The width a model of fixed sizes (hidden recorded as FIXED_HIDDEN: not one of its axes, its width unknown) is taken
# to have when its sizes are set beside others': a common width, so its cost is interpolated, never extrapolated to 1.
FIXED_MODEL_WIDTH = 64


def log2_sizes(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """[n, 4] log2 of (batch, hidden, in_dim, out_dim) rows."""
    sizes = np.array(rows, dtype=float).reshape(len(rows), -1)  # [n, 4], a copy: the hidden column is rewritten
    if sizes.shape[1] > 1:
        sizes[:, 1] = np.where(sizes[:, 1] == FIXED_HIDDEN, FIXED_MODEL_WIDTH, sizes[:, 1])
    return np.log2(sizes)


def log2_distances(queries: Sequence[Sequence[float]], points: Sequence[Sequence[float]]) -> np.ndarray:
    """[queries, points] Euclidean distance between log2 sizes (rows of batch, hidden, in_dim, out_dim)."""
    diff = log2_sizes(queries)[:, None, :] - log2_sizes(points)[None, :, :]  # [queries, points, 4]
    return np.sqrt((diff**2).sum(axis=2))


def idw(distances: np.ndarray, values: np.ndarray, k: int = K_NEAREST, power: float = POWER
        ) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the inverse-distance-weighted mean of the values of its k nearest points.

    distances: [queries, points]; values: [points, columns] (one column per quantity averaged with the same
    weights). Returns (estimates [queries, columns], the nearest point of each query [queries]). A query at distance
    0 from a point takes that point's values (the first such point when several are).
    """
    distances = np.asarray(distances, dtype=float)
    values = np.asarray(values, dtype=float).reshape(distances.shape[1], -1)
    k = min(k, distances.shape[1])
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]  # [queries, k]
    d = np.take_along_axis(distances, nearest, axis=1)  # [queries, k]
    exact = d[:, :1] < EXACT  # [queries, 1]
    weights = np.where(exact, (np.arange(k) == 0).astype(float), 1.0 / np.maximum(d, EXACT) ** power)  # [queries, k]
    weights /= weights.sum(axis=1, keepdims=True)
    estimates = np.einsum("qk,qkc->qc", weights, values[nearest])  # [queries, columns]
    return estimates, nearest[:, 0]


K_FIT = 12  # points of a local linear fit: enough for an intercept and four slopes with some to spare
RIDGE = 0.01  # pulls slopes the neighbours do not pin down (an axis they do not vary along) to 0: the IDW value
SLOPES = (0.0, 3.0)  # per log2 step: a cost does not fall as a size grows, nor grow faster than its cube


def local_linear(distances: np.ndarray, points: np.ndarray, queries: np.ndarray, values: np.ndarray,
                 k: int = K_FIT, power: float = POWER) -> np.ndarray:
    """Per query, a weighted linear fit of values over its k nearest points' coordinates, read at the query: inside
    the measured points it is close to `idw`, outside them it extrapolates along the slopes the points show (a power
    law in sizes when coordinates and values are logs), where `idw` would repeat the nearest values.

    distances: [queries, points]; points: [points, dims]; queries: [queries, dims]; values: [points].
    Returns [queries]. Slopes are ridge-regularised toward 0 and clipped to SLOPES.
    """
    distances = np.asarray(distances, dtype=float)
    values = np.asarray(values, dtype=float).reshape(-1)
    k = min(k, distances.shape[1])
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]  # [queries, k]
    d = np.take_along_axis(distances, nearest, axis=1)  # [queries, k]
    weights = 1.0 / np.maximum(d, EXACT) ** power  # [queries, k]
    weights /= weights.sum(axis=1, keepdims=True)
    out = np.empty(len(queries))
    for q in range(len(queries)):
        w, v = weights[q], values[nearest[q]]  # [k], [k]
        delta = points[nearest[q]] - queries[q]  # [k, dims]
        centred = delta - w @ delta  # [k, dims]: slopes apart from the intercept
        gram = centred.T @ (w[:, None] * centred) + RIDGE * np.eye(delta.shape[1])  # [dims, dims]
        slopes = np.clip(np.linalg.solve(gram, centred.T @ (w * (v - w @ v))), *SLOPES)  # [dims]
        out[q] = w @ (v - delta @ slopes)
    return out
