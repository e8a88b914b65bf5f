"""The Laplacian as the trace of hessian_vmap_hessian's per-sample Hessian (strategies/_trace.py).

Same cost, memory, sample assumption and differentiability as hessian_vmap_hessian.
"""

from strategies._trace import register_trace
from strategies.hessian_vmap_hessian import hessian_vmap_hessian

laplacian_trace_vmap_hessian = register_trace(hessian_vmap_hessian)
