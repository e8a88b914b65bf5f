"""What one timed call is in each mode: the strategy's quantity alone, or a training step through it.

    jacobian  fn(model, x): J, or for a second-order strategy H or the Laplacian
    train     J = fn(model, x, create_graph=True); penalty = sum over the batch of ||J_b||²_F (of J.sum(1) for
              strategies returning the output sum); the gradient of the penalty with respect to every parameter,
              as in Jacobian regularization or contractive autoencoders. A second-order strategy trains through the
              PINN step instead (`pinn_step`): the Laplacian with its graph, the Poisson residual's mean square, its
              parameter gradient. The call returns that gradient as one flat vector, which is what train mode
              validates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor, nn

from bench.harness.reference import flat_gradient, trainable
from bench.harness.second_order import pinn_loss
from bench.schema import MODES
from strategies import Strategy

__all__ = ["MODES", "TRAIN_MEMORY_FACTOR", "pinn_step", "timed_call", "train_step"]
# Keeping J's graph and backpropagating through it: memory beyond the Jacobian alone, as a factor on the strategy's
# own estimate (the graph of J holds about one more copy of every saved activation, the backward another).
TRAIN_MEMORY_FACTOR = 3


def timed_call(strategy: Strategy, mode: str) -> Callable[[nn.Module, Tensor], object]:
    """fn(model, x) for this mode: what is validated and what is timed."""
    if mode == "jacobian":
        return strategy.fn
    return functools.partial(train_step if strategy.quantity == "jacobian" else pinn_step, strategy)


def train_step(strategy: Strategy, model: nn.Module, x: Tensor) -> Tensor:
    """J with its graph, the Jacobian penalty, and its gradient with respect to the parameters (flat)."""
    jac = strategy(model, x, create_graph=True)  # Unsupported for a strategy that keeps no graph
    return flat_gradient(jac.square().sum(), trainable(model))


def pinn_step(strategy: Strategy, model: nn.Module, x: Tensor) -> Tensor:
    """A physics-informed training step through a second-order strategy: the Laplacian with its graph (the trace of
    the Hessian for a hessian strategy), the Poisson residual Δu - f(x) and its mean square (second_order.pinn_loss),
    and the gradient of that loss with respect to every parameter (flat), which is what it validates."""
    if strategy.quantity not in ("hessian", "laplacian"):
        raise ValueError(f"{strategy.name} computes a {strategy.quantity}: the PINN step needs a Laplacian")
    second = strategy(model, x, create_graph=True)  # Unsupported for a strategy that keeps no graph
    laplacian = second if strategy.quantity == "laplacian" else second.diagonal(dim1=2, dim2=3).sum(-1)  # [B, out]
    return flat_gradient(pinn_loss(laplacian, x), trainable(model))
