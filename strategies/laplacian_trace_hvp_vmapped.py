"""The Laplacian as the trace of hessian_hvp_vmapped's per-sample Hessian (strategies/_trace.py).

Same cost, memory, sample assumption and differentiability as hessian_hvp_vmapped.
"""

from strategies._trace import register_trace
from strategies.hessian_hvp_vmapped import hessian_hvp_vmapped

laplacian_trace_hvp_vmapped = register_trace(hessian_hvp_vmapped)
