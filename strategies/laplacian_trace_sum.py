"""The Laplacian as the trace of hessian_sum's per-sample Hessian (strategies/_trace.py).

Same cost, memory, sample assumption and differentiability as hessian_sum.
"""

from strategies._trace import register_trace
from strategies.hessian_sum import hessian_sum

laplacian_trace_sum = register_trace(hessian_sum)
