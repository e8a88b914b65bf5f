"""The Laplacian as the trace of hessian_vmap_jacrev_jacrev's per-sample Hessian (strategies/_trace.py).

Same cost, memory, sample assumption and differentiability as hessian_vmap_jacrev_jacrev.
"""

from strategies._trace import register_trace
from strategies.hessian_vmap_jacrev_jacrev import hessian_vmap_jacrev_jacrev

laplacian_trace_vmap_jacrev_jacrev = register_trace(hessian_vmap_jacrev_jacrev)
