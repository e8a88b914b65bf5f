"""The JAX peers: JAX's per-sample derivatives of the same model, as a JAX user would write them, jit-compiled.

Each strategy translates the torch model into a JAX function with the same weights (jacobench_jax/translate.py,
once per model, dtype and device, again when a weight changes), builds its transform of it, and jax.jit compiles
that once per shape: the first call of a shape (import, backend start, translation, compiling) is the harness's
setup_s, as for torch.compile. A timed call is what a JAX user's loop costs: the jitted program on the weights and
the input as JAX arrays (converted once per shape: the input once per tensor and version), run until its result is
ready (block_until_ready), and that result handed back as a torch tensor through DLPack (no copy on CPU; inside
the timed call, as a PyTorch user of the peer would pay it). measure_overhead.py in this folder times the jitted
program alone against the whole call.

Every peer has peer="jax": shown beside the race, never a winner or a recommendation (bench/rules.py).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from jacobench_jax import backend
from jacobench_jax.translate import Forward, Translations
from strategies import Strategy, Unsupported

PEER = "jax"
Program = Callable[[Any, Any], Any]  # program(params, x [B, in]) -> the batched quantity
Build = Callable[[ModuleType, Forward], Program]  # build(jax, forward) -> the program jax.jit compiles

TRANSLATIONS = Translations()
INPUTS = backend.InputCache()


def prepared(model: nn.Module, x: Tensor, name: str, build: Build) -> tuple[Program, tuple, Any]:
    """The jitted program of this strategy for this model, its weights and the input, all as JAX holds them."""
    jax = backend.start().jax
    backend.check_dtype(jax, x.dtype)  # before any array is made: float64 needs x64
    device = backend.device_for(jax, x)
    translation = TRANSLATIONS.get(model, x, device)
    program = translation.programs.get(name)
    if program is None:
        program = translation.programs[name] = jax.jit(build(jax, translation.forward))
    return program, translation.params, INPUTS.get(jax, x, device)


def peer_fn(name: str, build: Build) -> Callable[[nn.Module, Tensor], Tensor]:
    """fn(model, x): the jitted program on JAX's copies, its result as a torch tensor once ready."""

    def fn(model: nn.Module, x: Tensor) -> Tensor:
        program, params, x_jax = prepared(model, x, name, build)
        return backend.to_torch(program(params, x_jax), x.device)

    fn.__name__ = fn.__qualname__ = name
    return fn


# ---- the transforms, batched over the samples ----------------------------------------------------------------------


def vmap_jacrev(jax: ModuleType, forward: Forward) -> Program:
    return jax.vmap(jax.jacrev(forward, argnums=1), in_axes=(None, 0))  # [B, out, in]


def vmap_jacfwd(jax: ModuleType, forward: Forward) -> Program:
    return jax.vmap(jax.jacfwd(forward, argnums=1), in_axes=(None, 0))  # [B, out, in]


def sum_jacrev(jax: ModuleType, forward: Forward) -> Program:
    def program(params: Any, x: Any) -> Any:
        per_output = jax.jacrev(lambda t: forward(params, t).sum(0))(x)  # [out, B, in]: d sum_b y[b, o] / d x
        return jax.numpy.swapaxes(per_output, 0, 1)  # [B, out, in]

    return program


def vmap_hessian(jax: ModuleType, forward: Forward) -> Program:
    return jax.vmap(jax.hessian(forward, argnums=1), in_axes=(None, 0))  # [B, out, in, in]


def laplacian_trace_hessian(jax: ModuleType, forward: Forward) -> Program:
    hessian = jax.hessian(forward, argnums=1)

    def one_sample(params: Any, xi: Any) -> Any:
        return jax.numpy.trace(hessian(params, xi), axis1=-2, axis2=-1)  # [out]

    return jax.vmap(one_sample, in_axes=(None, 0))  # [B, out]


def folx_laplacian(jax: ModuleType, forward: Forward) -> Program:
    try:
        import folx
    except ImportError as exc:
        raise Unsupported(f"folx cannot be imported ({exc}): pip install -e '.[jax]'") from None

    def one_sample(params: Any, xi: Any) -> Any:
        # dense (sparsity_threshold=0): the forward Laplacian carries the value, in first-order coefficients and
        # the Laplacian through the network in one forward pass
        return folx.forward_laplacian(lambda t: forward(params, t), sparsity_threshold=0)(xi).laplacian  # [out]

    return jax.vmap(one_sample, in_axes=(None, 0))  # [B, out]


# ---- the strategies ------------------------------------------------------------------------------------------------

THREADS = "XLA's CPU pool sized to torch's threads (PJRT_NPROC)"


def peer(name: str, build: Build, summary: str, cost: str, quantity: str = "jacobian", like: str = "") -> Strategy:
    """A JAX peer: compiled (jax.jit; its compile is setup_s), per-sample, not differentiable (no graph to torch's
    parameters), with the memory estimate of the torch strategy it mirrors (`like`)."""
    import strategies

    twin = strategies.REGISTRY.get(like)
    return Strategy(name=name, fn=peer_fn(name, build), quantity=quantity, independent_samples=True, compiled=True,
                    peer=PEER, summary=f"{summary}; jax.jit, result to torch inside the call",
                    cost=f"{cost}; {THREADS}", memory_estimate=twin.memory_estimate if twin is not None else None)


jax_vmap_jacrev = peer("jax_vmap_jacrev", vmap_jacrev, "jax.vmap(jax.jacrev(f)) over single samples",
                       "vmapped reverse mode: out VJPs per sample", like="vmap_jacrev")
jax_vmap_jacfwd = peer("jax_vmap_jacfwd", vmap_jacfwd, "jax.vmap(jax.jacfwd(f)) over single samples",
                       "vmapped forward mode: in JVPs per sample", like="vmap_jacfwd")
jax_sum_jacrev = peer("jax_sum_jacrev", sum_jacrev, "jax.jacrev of the batch sum f(x).sum(0), then [B, out, in]",
                      "reverse mode on the batch sum: out VJPs through the whole batch", like="func_sum_jacrev")
jax_vmap_hessian = peer("jax_vmap_hessian", vmap_hessian, "jax.vmap(jax.hessian(f)) over single samples",
                        "vmapped forward-over-reverse: in HVPs per sample and output", quantity="hessian",
                        like="hessian_vmap_hessian")
jax_laplacian_trace_hessian = peer(
    "jax_laplacian_trace_hessian", laplacian_trace_hessian, "trace of jax.vmap(jax.hessian(f)), inside the jit",
    "vmapped forward-over-reverse, then the trace", quantity="laplacian", like="laplacian_trace_vmap_hessian")
jax_folx_laplacian = peer("jax_folx_laplacian", folx_laplacian, "folx.forward_laplacian(f), jax.vmap over samples",
                          "1 forward pass carrying in first-order and 1 second-order coefficient per sample",
                          quantity="laplacian", like="laplacian_jvp_jvp")

PEERS = (jax_vmap_jacrev, jax_vmap_jacfwd, jax_sum_jacrev, jax_vmap_hessian, jax_laplacian_trace_hessian,
         jax_folx_laplacian)
