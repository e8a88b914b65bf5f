"""torch.compile(laplacian_trace_vmap_jacrev_jacrev): the trace of vmap(jacrev(jacrev(f))), compiled once per model
and shape.

The first call of a shape compiles (seconds on a CPU; the harness records it as setup_s, never in the timed rounds).
Measured here before it was added (2-core AMD EPYC, 2 threads, a Tanh MLP 16 → 64 → 64 → 1): ×7.3 faster than its
eager form at B = 16 (0.20 ms against 1.46 ms) and ×3.7 at B = 512 (1.44 ms against 5.38 ms); ×1.75 at B = 4096,
H = 256, in = 2. The eager Laplacians pay a Python-to-C++ trip per operation of a double backward pass; compiled,
the two reverse passes run as one fused graph, which is what separates the JAX peer's jitted Laplacian from eager
PyTorch at small batch. Not differentiable (torch.compile does not support double backward): the PINN step is left
to the eager strategies. `laplacian_trace_sum` (functional.jacobian of the batch sum) does not compile in torch
2.14.1 ("Cannot access data pointer of Tensor that doesn't have storage"), so it has no compiled form here.
"""

from strategies._compiled import register_compiled
from strategies.laplacian_trace_vmap_jacrev_jacrev import laplacian_trace_vmap_jacrev_jacrev

laplacian_trace_vmap_jacrev_jacrev_compiled = register_compiled(laplacian_trace_vmap_jacrev_jacrev)
