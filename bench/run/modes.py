"""What one timed call is in each mode: the Jacobian alone, or a training step through it.

    jacobian  J = fn(model, x)
    train     J = fn(model, x, create_graph=True); penalty = sum over the batch of ||J_b||²_F (of J.sum(1) for
              strategies returning the output sum); the gradient of the penalty with respect to every parameter,
              as in Jacobian regularization, contractive autoencoders or a PINN loss. The call returns that gradient
              as one flat vector, which is what train mode validates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor, nn

from bench.run.reference import flat_gradient, pinn_loss, trainable
from bench.schema import MODES
from strategies import Strategy

__all__ = ["MODES", "TRAIN_MEMORY_FACTOR", "timed_call", "train_step"]
# Keeping J's graph and backpropagating through it: memory beyond the Jacobian alone, as a factor on the strategy's
# own estimate (the graph of J holds about one more copy of every saved activation, the backward another).
TRAIN_MEMORY_FACTOR = 3


def timed_call(strategy: Strategy, mode: str) -> Callable[[nn.Module, Tensor], object]:
    """fn(model, x) for this mode: what is validated and what is timed."""
    return strategy.fn if mode == "jacobian" else functools.partial(train_step, strategy)


def train_step(strategy: Strategy, model: nn.Module, x: Tensor) -> Tensor:
    """J with its graph, the Jacobian penalty, and its gradient with respect to the parameters (flat)."""
    jac = strategy(model, x, create_graph=True)  # Unsupported for a strategy that keeps no graph
    return flat_gradient(jac.square().sum(), trainable(model))


def pinn_step(strategy: Strategy, model: nn.Module, x: Tensor) -> Tensor:
    """A physics-informed training step through a second-order strategy: the Laplacian with its graph (the trace of
    the Hessian for a hessian strategy), the Poisson residual Δu - f(x) and its mean square (reference.pinn_loss),
    and the gradient of that loss with respect to every parameter (flat), which is what it validates."""
    if strategy.quantity not in ("hessian", "laplacian"):
        raise ValueError(f"{strategy.name} computes a {strategy.quantity}: the PINN step needs a Laplacian")
    second = strategy(model, x, create_graph=True)  # Unsupported for a strategy that keeps no graph
    laplacian = second if strategy.quantity == "laplacian" else second.diagonal(dim1=2, dim2=3).sum(-1)  # [B, out]
    return flat_gradient(pinn_loss(laplacian, x), trainable(model))
