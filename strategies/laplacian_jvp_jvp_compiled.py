"""torch.compile(laplacian_jvp_jvp): forward over forward along each input direction, compiled once per model and
shape.

The first call of a shape compiles (seconds on a CPU; the harness records it as setup_s, never in the timed rounds).
Measured here before it was added (2-core AMD EPYC, 2 threads, a Tanh MLP 16 → 64 → 64 → 1): ×9.6 faster than its
eager form at B = 16 (0.27 ms against 2.55 ms) and ×4.1 at B = 512 (5.8 ms against 23.4 ms). The nearest PyTorch
comes to folx's forward Laplacian without a Taylor-mode library. Like its eager form, wrong through nn.LayerNorm in
torch 2.14 (validation marks it `wrong`), and not differentiable (torch.compile does not support double backward).
"""

from strategies._compiled import register_compiled
from strategies.laplacian_jvp_jvp import laplacian_jvp_jvp

laplacian_jvp_jvp_compiled = register_compiled(laplacian_jvp_jvp)
