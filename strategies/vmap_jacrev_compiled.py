"""torch.compile(vmap_jacrev): vmap(jacrev(f)) over single samples, compiled once per model and shape.

The first call of a shape compiles (seconds to tens of seconds on a CPU; the harness records it as setup_s, never in
the timed rounds); later calls run the compiled graph. Same cost in B, H, in, out as vmap_jacrev, minus Python and
dispatch overhead and with fused elementwise work. Not differentiable: torch.compile does not support
double backward, so training through J is left to the eager strategies.
"""

from torch import Tensor, nn

from strategies import register
from strategies._compiled import compiled
from strategies.vmap_jacrev import vmap_jacrev as eager

_run = compiled(eager)


@register(independent_samples=eager.independent_samples, compiled=True, cost=f"{eager.cost}, compiled",
          memory_estimate=eager.memory_estimate)
def vmap_jacrev_compiled(model: nn.Module, x: Tensor) -> Tensor:
    """torch.compile(vmap_jacrev), compiled for each shape (compile time apart, as setup_s)."""
    return _run(model, x)
