"""How a strategy is drawn in every plot: a fixed colour and marker per name (a compiled variant its eager twin's
colour with its own marker, a closed form the analytic's, a Hessian's trace the Hessian's, a plugin a stable hashed
one), so one strategy looks the same in every figure of every run."""

from __future__ import annotations

import zlib

from bench.schema import eager_twin

COLORS = {
    "analytic": "#000000",
    "grad_summed": "#9a9a9a",
    "grad_loop": "#1f77b4",
    "grad_batched": "#ff7f0e",
    "jacobian_diagonal": "#d62728",
    "jacobian_sum": "#9467bd",
    "vmap_jacrev": "#2ca02c",
    "vmap_jacfwd": "#17becf",
    "jvp_loop": "#8c564b",
    "func_sum_jacrev": "#e377c2",
    "vmap_jacrev_chunked": "#98df8a",
    "vmap_jacfwd_chunked": "#9edae5",
    "jvp_batched": "#c49c94",
    "linearize_batched": "#bcbd22",
    # second order: a Hessian strategy and its trace (laplacian_trace_*) share a colour; each quantity has its plots
    "hessian_grad_loop": "#1f77b4",
    "hessian_sum": "#9467bd",
    "hessian_vmap_jacrev_jacrev": "#2ca02c",
    "hessian_vmap_hessian": "#ff7f0e",
    "hessian_vmap_jacfwd_jacfwd": "#17becf",
    "hessian_hvp_vmapped": "#e377c2",
    "laplacian_hvp_loop": "#8c564b",
    "laplacian_jvp_jvp": "#d62728",
    "laplacian_hutchinson": "#9a9a9a",
}
MARKERS = {"analytic": "*", "grad_summed": ".", "grad_loop": "o", "grad_batched": "s", "jacobian_diagonal": "D",
           "jacobian_sum": "v", "vmap_jacrev": "P", "vmap_jacfwd": "X", "jvp_loop": "<", "func_sum_jacrev": "^",
           "vmap_jacrev_chunked": "p", "vmap_jacfwd_chunked": "h", "jvp_batched": ">", "linearize_batched": "d",
           "hessian_grad_loop": "o", "hessian_sum": "v", "hessian_vmap_jacrev_jacrev": "P", "hessian_vmap_hessian": "s",
           "hessian_vmap_jacfwd_jacfwd": "X", "hessian_hvp_vmapped": "^", "laplacian_hvp_loop": "<",
           "laplacian_jvp_jvp": ">", "laplacian_hutchinson": "."}
TRACE_PREFIX = ("laplacian_trace_", "hessian_")  # laplacian_trace_x is the trace of hessian_x: drawn alike
PLUGIN_COLORS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
                 "#31a354", "#756bb1", "#636363"]
PLUGIN_MARKERS = ["H", "d", "p", "h", "v", "^"]  # filled: the memory-vs-time plot rings the Pareto front
STATUS_COLORS = {"ok": "#2ca02c", "wrong": "#d62728", "failed": "#ff7f0e", "unsupported": "#c7c7c7"}
FORWARD = "forward model(x)"


COMPILED_MARKER = "8"  # a compiled variant: its eager twin's colour, this marker, a dashed line


def _drawn_as(strategy: str, closed_form: bool = False) -> str:
    """The name whose colour and marker a strategy takes: a closed form the analytic's, a Hessian's trace the
    Hessian's."""
    if closed_form:
        return "analytic"
    return strategy.replace(*TRACE_PREFIX, 1) if strategy.startswith(TRACE_PREFIX[0]) else strategy


def color(strategy: str, closed_form: bool = False) -> str:
    """Fixed colour per strategy name (a compiled variant takes its eager twin's, a closed form the analytic's);
    plugins get a stable hash-picked colour (the same in every run)."""
    strategy = _drawn_as(strategy, closed_form)
    return COLORS.get(strategy) or COLORS.get(eager_twin(strategy) or "") \
        or PLUGIN_COLORS[zlib.crc32(strategy.encode()) % len(PLUGIN_COLORS)]


def marker(strategy: str, closed_form: bool = False) -> str:
    if eager_twin(strategy) in COLORS:
        return COMPILED_MARKER
    strategy = _drawn_as(strategy, closed_form)
    return MARKERS.get(strategy) or PLUGIN_MARKERS[zlib.crc32(strategy.encode()) % len(PLUGIN_MARKERS)]
