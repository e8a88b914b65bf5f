"""The float64 reference every strategy is validated against, and the checks that make it trustworthy.

For one model and input: run a float64 copy of the model, refuse it when its output is not finite or not
deterministic (the model itself is then the problem, not any strategy), find out whether any output row depends on
another sample's input (`coupled`), and compute the per-sample Jacobian J [B, out, in] in the way that is exact for
that answer. `validate` then compares a strategy's output with it.

Second order (Hessians, Laplacians, the PINN step): bench/harness/second_order.py.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.spec.own_model import not_deterministic, why_not_deterministic
from bench.spec.precision import (  # noqa: F401  (reference.RTOL, reference.forward_error: the harness's API before)
    LOWER_PRECISION,
    RTOL,
    forward_error,
    precision_note,
    tolerance_dtype,
)

# An off-diagonal derivative below this fraction of the largest one is float64 round-off, not coupling: even summed
# over 4096 samples it stays far below the float64 tolerance.
COUPLING_THRESHOLD = 1e-13

# A batch-coupled model's reference takes one backward pass per output row y[b, o], batched, this many cotangent
# rows (cotangents x batch) per batched pass at most: `_coupled_chunks`.
COUPLED_CHUNK = 1 << 14


class ModelProblem(Exception):
    """The model itself (not a strategy) gives no usable reference on this input: non-finite or random output."""


@dataclass(frozen=True)
class Reference:
    jacobian: Tensor  # [B, out, in] float64, the diagonal blocks d y[b] / d x[b]
    coupled: bool  # some output row depends on another sample's input (through derivatives, or values only:
    # `values_coupled`)
    # Training through the Jacobian (train mode only): the gradient of the penalty sum(J²) with respect to every
    # parameter, flattened into one float64 vector; and of sum(J.sum(1)²) for strategies returning the output sum.
    penalty_gradient: Tensor | None = None
    output_sum_penalty_gradient: Tensor | None = None
    # How far the model's own output, in the case's dtype, is from its float64 copy's (relative to the largest
    # output): the dtype's round-off, unless the model computes below its dtype inside (`tolerance_dtype`).
    forward_error: float = 0.0


def nonfinite_rows(t: Tensor) -> list[int]:
    """Batch rows (dim 0) holding a NaN or an inf."""
    bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    return bad.nonzero().flatten().tolist()


def _rows(rows: list[int], batch: int) -> str:
    shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
    return f"{len(rows)} of {batch} samples (row{'s' if len(rows) > 1 else ''} {shown})"


def samples_coupled(model: nn.Module, x: Tensor) -> bool:
    """Does any output row y[b] depend on an input row x[c] with c != b, at this input?

    One vector-Jacobian product per set S of samples: a random cotangent on the output rows in S, zero elsewhere;
    the gradient on every input row outside S must be exactly zero. The sets are, for each bit of the row index, the
    rows with that bit set and the rows without it: any two rows b != c differ in some bit, so some set holds b and
    not c. 2·ceil(log2 B) backward passes find every dependence, in either direction (a forward or reverse cumulative
    sum, a batch mean, one sample feeding another).
    """
    batch = x.shape[0]
    if batch < 2:
        return False
    leaf = x.detach().requires_grad_(True)
    y = model(leaf)  # [B, out]
    if not y.requires_grad:
        return False  # the output does not depend on the input at all
    rows = torch.arange(batch, device=x.device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    cotangent = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)  # [B, out]
    largest, off_diagonal = 0.0, 0.0
    for bit in range(math.ceil(math.log2(batch))):
        has_bit = (rows >> bit) & 1 == 1
        for inside in (has_bit, ~has_bit):
            (g,) = torch.autograd.grad(y, leaf, grad_outputs=cotangent * inside.unsqueeze(1), retain_graph=True,
                                       allow_unused=True)
            if g is None:
                return False  # the output does not depend on the input at all
            largest = max(largest, g.abs().max().item())
            off_diagonal = max(off_diagonal, g[~inside].abs().max().item())
    return off_diagonal > COUPLING_THRESHOLD * largest


def values_coupled(model: nn.Module, x: Tensor) -> bool:
    """Does an output row y[b] change with the other rows' values where no derivative flows between samples (a
    statistic of the whole batch, detached: `x / x.abs().max().detach()`)? The model on each half of the batch
    against its rows of model(x), beyond float64 round-off. A strategy that evaluates one sample at a time (vmap)
    computes another function of such a model: a user's detached batch scale had every vmap strategy `wrong` (0.4 off)
    while samples_coupled, which follows derivatives, found nothing. A model that fails on half the batch is not
    judged here; its buffers are left as they were."""
    batch = x.shape[0]
    if batch < 2:
        return False
    buffers = [(b, b.clone()) for b in model.buffers()]
    try:
        with torch.no_grad():
            y = model(x)  # [B, out]
            halves = torch.cat([model(x[: batch // 2]), model(x[batch // 2:])])  # [B, out]
    except Exception:  # e.g. a layer of fixed batch size, or BatchNorm on a one-sample half
        return False
    finally:
        with torch.no_grad():
            for buffer, before in buffers:
                buffer.copy_(before)
    if halves.shape != y.shape:
        return False
    return (halves - y).abs().max().item() > RTOL[torch.float64] * (y.abs().max().item() or 1.0)


def reference(model: nn.Module, x: Tensor, train: bool = False) -> Reference:
    """The float64 per-sample Jacobian of `model` at `x`; ModelProblem when the model gives no usable one.

    Independent samples: reverse mode one output at a time, or forward mode one input at a time, on the whole batch
    (fewer passes wins). Coupled samples: the diagonal blocks of the full (B, out, B, in) Jacobian, a chunk of
    samples at a time (`_coupled_chunks`). With train=True also the parameter gradients of the Jacobian penalty, from
    J built with its graph (create_graph), then backpropagated (chunk by chunk for coupled samples).
    """
    model64, x64, out_dim = _float64_copy(model, x)
    batch, in_dim = x64.shape
    coupled = samples_coupled(model64, x64)
    gradients: dict[str, Tensor] = {}
    if coupled:
        jac, gradients = _coupled_reference(model64, x64, train)
    elif in_dim <= out_dim:
        jac = _forward_columns(model64, x64)
    else:
        jac = _reverse_rows(model64, x64, out_dim)
    bad = nonfinite_rows(jac)
    if bad:
        raise ModelProblem(f"the model's own float64 Jacobian holds NaN or inf for {_rows(bad, batch)} "
                           "(a derivative that does not exist at this input, e.g. sqrt at 0)")
    if train and not coupled:
        gradients = _penalty_gradients(_reverse_rows(model64, x64, out_dim, create_graph=True), trainable(model64))
    # coupled through values only (no derivative between samples): J's diagonal blocks as computed, but per-sample
    # strategies are still wrong
    coupled = coupled or values_coupled(model64, x64)
    return Reference(jac, coupled, **gradients, forward_error=forward_error(model, x, model64, x64))


def _penalty_gradients(with_graph: Tensor, params: list[Tensor]) -> dict[str, Tensor]:
    """The parameter gradients of the Jacobian penalty sum(J²) and of sum(J.sum(1)²), from J with its graph."""
    return {"penalty_gradient": flat_gradient(with_graph.square().sum(), params, retain_graph=True),
            "output_sum_penalty_gradient": flat_gradient(with_graph.sum(1).square().sum(), params, retain_graph=True)}


def _float64_copy(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor, int]:
    """Float64 copies of the model and input, and out; ModelProblem when the output is not finite or deterministic."""
    model64 = copy.deepcopy(model).double()
    x64 = x.detach().double()  # [B, in]
    with torch.no_grad():
        y = model64(x64)  # [B, out]
        state = {name: b.clone() for name, b in model64.named_buffers()}
        again = model64(x64)
    bad = nonfinite_rows(y)
    if bad:
        raise ModelProblem(f"the model itself returns NaN or inf (in float64) for {_rows(bad, x64.shape[0])} of this "
                           "input")
    if not torch.equal(y, again):
        raise ModelProblem(not_deterministic(why_not_deterministic(model64, state)))
    return model64, x64, y.shape[1]


def trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def flat_gradient(loss: Tensor, params: list[Tensor], retain_graph: bool = False) -> Tensor:
    """d loss / d params as one flat vector (zeros for a parameter the loss does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def _full_diagonal(model64: nn.Module, x64: Tensor, create_graph: bool = False) -> Tensor:
    full = torch.autograd.functional.jacobian(model64, x64, vectorize=True, create_graph=create_graph)  # [B,out,B,in]
    return torch.diagonal(full, dim1=0, dim2=2).permute(2, 0, 1)  # [B, out, in]


def _coupled_chunks(model64: nn.Module, x64: Tensor, create_graph: bool = False) -> Iterator[Tensor]:
    """The diagonal blocks of a batch-coupled model's full (B, out, B, in) Jacobian, a chunk of samples at a time:
    d y[b, o] / d x[b] for every b of the chunk and every o ([n, out, in]), from one batched backward pass with one
    cotangent per (b, o), of COUPLED_CHUNK cotangent rows at most. In one vectorized pass over all B·out cotangents
    (torch.autograd.functional.jacobian), a BatchNorm model's train-mode reference (J with its graph, then the
    penalty's gradient) took 0.9 s at B = 256, 57 s at B = 512 and 6 min at B = 1024 on this project's 2-core VM,
    inside C++ calls where the shape's 30 s time limit cannot act (it fired after 362 s); in chunks, 0.4 s, 1.0 s and
    2.9 s, with the time limit acting between chunks (B = 4096: 33 s). The blocks off the diagonal are never kept
    (B²·out·in numbers): the Jacobian alone at B = 4096 takes 3.3 s, where the one vectorized pass timed out."""
    leaf = x64.clone().requires_grad_(True)
    y = model64(leaf)  # [B, out]
    batch, out_dim = y.shape
    per_chunk = max(1, COUPLED_CHUNK // (batch * out_dim))  # samples
    for start in range(0, batch, per_chunk):
        samples = torch.arange(start, min(start + per_chunk, batch), device=y.device)
        rows = samples.repeat_interleave(out_dim)  # the sample of each cotangent
        outs = torch.arange(out_dim, device=y.device).repeat(len(samples))  # its output
        k = torch.arange(len(rows), device=y.device)
        cotangents = torch.zeros(len(rows), batch, out_dim, dtype=y.dtype, device=y.device)
        cotangents[k, rows, outs] = 1
        (g,) = torch.autograd.grad(y, leaf, cotangents, is_grads_batched=True, retain_graph=True,
                                   create_graph=create_graph, allow_unused=True)  # [n, B, in]
        if g is None:  # the output does not depend on the input
            g = torch.zeros(len(rows), batch, x64.shape[1], dtype=x64.dtype, device=x64.device)
        yield g[k, rows].reshape(len(samples), out_dim, x64.shape[1])


def _coupled_reference(model64: nn.Module, x64: Tensor, train: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """A batch-coupled model's J, chunk by chunk, and in train mode the penalty gradients summed over the chunks
    (the gradient of a sum over samples is the sum of the chunks' gradients)."""
    params = trainable(model64)
    blocks, gradients = [], {}
    for block in _coupled_chunks(model64, x64, create_graph=train):
        if train:
            for name, gradient in _penalty_gradients(block, params).items():
                gradients[name] = gradients[name] + gradient if name in gradients else gradient
        blocks.append(block.detach())
    return torch.cat(blocks), gradients


def _forward_columns(model64: nn.Module, x64: Tensor) -> Tensor:
    import torch.autograd.forward_ad as fwAD

    columns = []
    for i in range(x64.shape[1]):
        tangent = torch.zeros_like(x64)  # [B, in]
        tangent[:, i] = 1
        with fwAD.dual_level():
            y = model64(fwAD.make_dual(x64, tangent))
            columns.append(fwAD.unpack_dual(y).tangent.detach())  # [B, out]
    return torch.stack(columns, dim=2)  # [B, out, in]


def _reverse_rows(model64: nn.Module, x64: Tensor, out_dim: int, create_graph: bool = False) -> Tensor:
    leaf = x64.clone().requires_grad_(True)
    y = model64(leaf)  # [B, out]
    rows = []
    for o in range(out_dim):
        (g,) = torch.autograd.grad(y[:, o].sum(), leaf, retain_graph=True, allow_unused=True,
                                   create_graph=create_graph)  # [B, in]
        rows.append(torch.zeros_like(x64) if g is None else g)
    return torch.stack(rows, dim=1)  # [B, out, in]


@dataclass(frozen=True)
class Check:
    ok: bool
    max_abs_error: float | None
    tolerance: float
    message: str


def validate(output: object, reference_jacobian: Tensor, returns: str, dtype: torch.dtype,
             forward_error: float = 0.0) -> Check:
    """Compare a strategy's output with the float64 reference (J, or J.sum(1) for "output_sum"), within the
    tolerance of the dtype (of a lower precision the model computes in inside: `tolerance_dtype`)."""
    expected = reference_jacobian.sum(1) if returns == "output_sum" else reference_jacobian
    note = precision_note(dtype, forward_error)
    tolerance = RTOL.get(tolerance_dtype(dtype, forward_error), 1e-4) * expected.abs().max().item() + \
        torch.finfo(dtype).tiny
    if not isinstance(output, Tensor):
        return Check(False, None, tolerance, f"returned {type(output).__name__}, not a Tensor")
    if tuple(output.shape) != tuple(expected.shape):
        return Check(False, None, tolerance, f"returned shape {tuple(output.shape)}, expected {tuple(expected.shape)}")
    got = output.detach().to(expected.device, torch.float64)
    bad = nonfinite_rows(got)
    if bad:
        return Check(False, None, tolerance, f"the strategy returned NaN or inf for {_rows(bad, got.shape[0])}; "
                                             "the float64 reference is finite there")
    error = (got - expected).abs().max().item()
    if error > tolerance:
        return Check(False, error, tolerance, "; ".join(m for m in (f"max abs error {error:.3g} > tolerance "
                                                                     f"{tolerance:.3g}", note) if m))
    return Check(True, error, tolerance, note)


# Training through J differentiates twice: float32 round-off grows, so train mode allows 10× the Jacobian tolerance.
TRAIN_RTOL_FACTOR = 10


def validate_gradient(output: object, expected: Tensor, dtype: torch.dtype, factor: float = TRAIN_RTOL_FACTOR,
                      what: str = "the penalty", forward_error: float = 0.0) -> Check:
    """Compare the parameter gradient of a train step (one flat vector) with the float64 reference (at a lower
    precision's tolerance where the model computes in one inside: `tolerance_dtype`)."""
    note = precision_note(dtype, forward_error)
    tolerance = factor * RTOL.get(tolerance_dtype(dtype, forward_error), 1e-4) * expected.abs().max().item() + \
        torch.finfo(dtype).tiny
    if not isinstance(output, Tensor) or tuple(output.shape) != tuple(expected.shape):
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        return Check(False, None, tolerance, f"parameter gradient of shape {got}, expected {tuple(expected.shape)}")
    got = output.detach().to(expected.device, torch.float64)
    if not torch.isfinite(got).all():
        return Check(False, None, tolerance, f"the parameter gradient holds {int((~torch.isfinite(got)).sum())} NaN or "
                                             "inf values; the float64 reference is finite")
    error = (got - expected).abs().max().item()
    if error > tolerance:
        return Check(False, error, tolerance, "; ".join(m for m in (f"parameter gradient of {what}: max abs error "
                                                                     f"{error:.3g} > tolerance {tolerance:.3g}", note)
                                                        if m))
    return Check(True, error, tolerance, note)
