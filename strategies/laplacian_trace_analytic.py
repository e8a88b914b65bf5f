"""The Laplacian as the trace of hessian_analytic's per-sample Hessian (strategies/_trace.py).

Same cost, memory, sample assumption and differentiability as hessian_analytic.
"""

from strategies._trace import register_trace
from strategies.hessian_analytic import hessian_analytic

laplacian_trace_analytic = register_trace(hessian_analytic)
