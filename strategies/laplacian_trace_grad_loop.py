"""The Laplacian as the trace of hessian_grad_loop's per-sample Hessian (strategies/_trace.py).

Same cost, memory, sample assumption and differentiability as hessian_grad_loop.
"""

from strategies._trace import register_trace
from strategies.hessian_grad_loop import hessian_grad_loop

laplacian_trace_grad_loop = register_trace(hessian_grad_loop)
