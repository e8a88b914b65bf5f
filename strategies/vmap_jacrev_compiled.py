"""torch.compile(vmap_jacrev): vmap(jacrev(f)) over single samples, compiled once per model and shape.

The first call of a shape compiles (seconds to tens of seconds on a CPU; the harness records it as setup_s, never in
the timed rounds); later calls run the compiled graph. Same cost in B, H, in, out as vmap_jacrev, minus Python and
dispatch overhead and with fused elementwise work. Not differentiable: torch.compile does not support double
backward, so training through J is left to the eager strategies.
"""

from strategies._compiled import register_compiled
from strategies.vmap_jacrev import vmap_jacrev

vmap_jacrev_compiled = register_compiled(vmap_jacrev)
