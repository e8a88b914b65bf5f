"""The Laplacian as the trace of hessian_vmap_jacfwd_jacfwd's per-sample Hessian (strategies/_trace.py).

Same cost, memory, sample assumption and differentiability as hessian_vmap_jacfwd_jacfwd.
"""

from strategies._trace import register_trace
from strategies.hessian_vmap_jacfwd_jacfwd import hessian_vmap_jacfwd_jacfwd

laplacian_trace_vmap_jacfwd_jacfwd = register_trace(hessian_vmap_jacfwd_jacfwd)
