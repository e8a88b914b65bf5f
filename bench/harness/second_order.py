"""Second order: the float64 reference of per-sample Hessians and Laplacians, and of the PINN step, and the checks of
a strategy's output against them.

For strategies of quantity "hessian" or "laplacian"): `second_order_reference` computes the per-sample
Hessian H [B, out, in, in] (H[b, o, i, j] = d² y[b, o] / dx[b, i] dx[b, j]) or only what the Laplacian [B, out] needs,
with the same model checks and coupling detection, and in train mode the parameter gradient of the PINN step's loss
(`pinn_loss`); `validate_second_order` and `validate_pinn_gradient` compare a strategy's output with them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.harness.reference import (
    RTOL,
    TRAIN_RTOL_FACTOR,
    Check,
    ModelProblem,
    Reference,
    _float64_copy,
    _full_diagonal,
    _rows,
    flat_gradient,
    forward_error,
    nonfinite_rows,
    precision_note,
    reference,
    samples_coupled,
    tolerance_dtype,
    trainable,
    validate_gradient,
    values_coupled,
)

# Second derivatives go through one more differentiation than J, and a Laplacian adds in of them: the tolerance is
# this factor on the Jacobian's RTOL times the scale of what is compared: max |H|, or for the Laplacian the largest
# Σ_i |H[b, o, i, i]| (the sum its trace adds up, so cancellation in the trace does not shrink the tolerance). On the
# mlp, deep_mlp and pinn presets (H up to 256, in up to 16) every exact strategy stayed below a tenth of it in
# bfloat16 and float16, and below 0.005 of it in float32.
SECOND_ORDER_RTOL_FACTOR = 2
# The PINN step differentiates the Laplacian once more, with respect to the parameters (a third derivative), then
# averages over the batch: train mode's factor on top (measured: below 0.01 of it in bfloat16).
PINN_RTOL_FACTOR = SECOND_ORDER_RTOL_FACTOR * TRAIN_RTOL_FACTOR
# A stochastic estimate (Hutchinson) is within this many of its own noise scale at every entry: sqrt(2)·‖H[b, o]‖_F
# is the standard error of one Rademacher or Gaussian probe, so an estimate of several probes that fails this gate is
# broken (wrong scale, wrong probes, wrong quantity), not unlucky. A sanity gate, not a precision claim: the measured
# error is what the record keeps.
ESTIMATE_SIGMAS = 6
ESTIMATE_NOTE = "estimate:"  # how the message of an estimator's check begins: its measured error, kept in its record


@dataclass(frozen=True)
class SecondOrderReference:
    laplacian: Tensor  # [B, out] float64: the trace of each sample's and output's Hessian
    coupled: bool  # some output row depends on another sample's input (`values_coupled` included): per-sample
    # strategies are then wrong
    hessian_scale: float  # max |H|: the Hessian's tolerance scales with it
    laplacian_scale: float  # max over (b, o) of Σ_i |H[b, o, i, i]|: the Laplacian's tolerance scales with it
    hessian_norm: Tensor  # [B, out] float64 ‖H[b, o]‖_F: the noise scale of a stochastic estimate of the Laplacian
    hessian: Tensor | None = None  # [B, out, in, in] float64; kept only when asked for (quantity "hessian")
    # Train mode: the gradient of the PINN loss (`pinn_loss` of the Laplacian) with respect to every parameter, flat.
    pinn_gradient: Tensor | None = None
    # How far the model's own output is from its float64 copy's (Reference.forward_error): a model that computes
    # below its dtype inside is held to that precision's tolerance (`tolerance_dtype`).
    forward_error: float = 0.0


def coupled_second_order_reference_bytes(batch: int, hidden: int, in_dim: int, out_dim: int) -> int:
    """The full (B, out, in, B, in) float64 derivative of the per-sample Jacobian, vectorized through width H."""
    return 8 * batch * out_dim * in_dim * batch * (in_dim + 2 * hidden)


def pinn_source(x: Tensor) -> Tensor:
    """The PINN step's fixed source term f(x) = Σ_i sin(x_i), [B, in] -> [B, 1], the same for every output field."""
    return torch.sin(x).sum(1, keepdim=True)


def pinn_loss(laplacian: Tensor, x: Tensor) -> Tensor:
    """The PINN step's loss: the Poisson residual r = Δu - f(x) of every sample and output, mean(r²)."""
    residual = laplacian - pinn_source(x.detach())  # [B, out]
    return residual.square().mean()


def second_order_reference(model: nn.Module, x: Tensor, quantity: str = "hessian", memory_budget: int | None = None,
                           hidden: int = 0, train: bool = False) -> SecondOrderReference:
    """The float64 per-sample Hessian (quantity "hessian") or what the Laplacian needs (quantity "laplacian") of
    `model` at `x`; ModelProblem when the model gives no usable one.

    Independent samples: per output, the per-sample gradient of y[:, o].sum() with its graph, then one more reverse
    pass per input i, whose row b is H[b, o, i, :] (out·in double backward passes on the whole batch). Coupled
    samples: the diagonal blocks of the full derivative of the per-sample Jacobian, (B, out, in, B, in), which needs
    B²·out·in² numbers: MemoryError above `memory_budget`. With train=True also the parameter gradient of
    `pinn_loss`, from the Laplacian built with its graph, backpropagated.
    """
    if quantity not in ("hessian", "laplacian"):
        raise ValueError(f"second_order_reference computes a hessian or a laplacian, not a {quantity}")
    with torch.enable_grad():  # nested reverse passes, also when called under no_grad
        return _second_order_reference(model, x, quantity, memory_budget, hidden, train)


def _second_order_reference(model: nn.Module, x: Tensor, quantity: str, memory_budget: int | None, hidden: int,
                            train: bool) -> SecondOrderReference:
    model64, x64, out_dim = _float64_copy(model, x)
    batch, in_dim = x64.shape
    coupled = samples_coupled(model64, x64)
    if coupled:
        needed = coupled_second_order_reference_bytes(batch, hidden, in_dim, out_dim)
    else:
        needed = 8 * batch * out_dim * in_dim * (in_dim if quantity == "hessian" else 1)
    if memory_budget is not None and needed > memory_budget:
        raise MemoryError(f"the float64 second-order reference needs {needed / 2**30:.1f} GiB")
    if coupled:
        hess = _coupled_hessian(model64, x64)  # [B, out, in, in]
        diagonal, norm = hess.diagonal(dim1=2, dim2=3), hess.square().sum((2, 3)).sqrt()  # [B, out, in], [B, out]
        scale = hess.abs().max().item() if hess.numel() else 0.0
    else:
        diagonal, norm, scale, hess = _hessian_rows(model64, x64, out_dim, keep=quantity == "hessian")
    bad = sorted(set(nonfinite_rows(diagonal)) | set(nonfinite_rows(norm)))
    if bad:
        raise ModelProblem(f"the model's own float64 second derivatives hold NaN or inf for {_rows(bad, batch)} "
                           "(a derivative that does not exist at this input, e.g. sqrt at 0)")
    ref = SecondOrderReference(
        laplacian=diagonal.sum(2), coupled=coupled or values_coupled(model64, x64), hessian_scale=scale,
        laplacian_scale=diagonal.abs().sum(2).max().item() if diagonal.numel() else 0.0, hessian_norm=norm,
        hessian=hess.contiguous() if quantity == "hessian" else None,
        forward_error=forward_error(model, x, model64, x64))
    if not train:
        return ref
    try:
        if coupled:
            laplacian = _coupled_hessian(model64, x64, create_graph=True).diagonal(dim1=2, dim2=3).sum(2)
        else:
            laplacian = _laplacian_with_graph(model64, x64, out_dim)
        gradient = flat_gradient(pinn_loss(laplacian, x64), trainable(model64))
    except RuntimeError as exc:  # e.g. "batch_norm does not support 3rd+ order derivatives"
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelProblem(f"torch cannot differentiate this model three times (the PINN step's parameter gradient of "
                           f"its Laplacian): {first}") from None
    return dataclasses.replace(ref, pinn_gradient=gradient)


def _hessian_rows(model64: nn.Module, x64: Tensor, out_dim: int, keep: bool
                  ) -> tuple[Tensor, Tensor, float, Tensor | None]:
    """Independent samples: per output and input one double backward pass on the whole batch, giving H[:, o, i, :].
    Returns the diagonal [B, out, in], the norm [B, out], max |H|, and H [B, out, in, in] when `keep`."""
    batch, in_dim = x64.shape
    leaf = x64.clone().requires_grad_(True)
    y = model64(leaf)  # [B, out]
    diagonal = torch.zeros(batch, out_dim, in_dim, dtype=x64.dtype)  # [B, out, in]
    square_sum = torch.zeros(batch, out_dim, dtype=x64.dtype)  # [B, out]
    hess = torch.zeros(batch, out_dim, in_dim, in_dim, dtype=x64.dtype) if keep else None  # [B, out, in, in]
    scale = 0.0
    for o in range(out_dim):
        (g,) = torch.autograd.grad(y[:, o].sum(), leaf, retain_graph=True, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:
            continue  # y[:, o] is affine in x: no curvature
        for i in range(in_dim):
            (row,) = torch.autograd.grad(g[:, i].sum(), leaf, retain_graph=True, allow_unused=True)  # [B, in]
            if row is None:
                continue
            diagonal[:, o, i] = row[:, i]
            square_sum[:, o] += row.square().sum(1)
            scale = max(scale, row.abs().max().item())
            if keep:
                hess[:, o, i] = row
    return diagonal, square_sum.sqrt(), scale, hess


def _laplacian_with_graph(model64: nn.Module, x64: Tensor, out_dim: int) -> Tensor:
    """Independent samples: the Laplacian [B, out] as the sum of H[:, o, i, i], every pass keeping its graph."""
    leaf = x64.clone().requires_grad_(True)
    y = model64(leaf)  # [B, out]
    columns = []
    for o in range(out_dim):
        (g,) = torch.autograd.grad(y[:, o].sum(), leaf, create_graph=True)  # [B, in]
        lap = torch.zeros(x64.shape[0], dtype=x64.dtype)  # [B]
        for i in range(x64.shape[1]):
            if g.requires_grad:
                (row,) = torch.autograd.grad(g[:, i].sum(), leaf, create_graph=True, allow_unused=True)  # [B, in]
                lap = lap if row is None else lap + row[:, i]
        columns.append(lap)
    return torch.stack(columns, dim=1)  # [B, out]


def _coupled_hessian(model64: nn.Module, x64: Tensor, create_graph: bool = False) -> Tensor:
    """Coupled samples: H[b, o, i, j] = d/dx[b, j] of the per-sample Jacobian d y[b, o] / dx[b, i], other samples
    held fixed: the diagonal blocks of the full (B, out, in, B, in) derivative of the diagonal Jacobian."""
    full = torch.autograd.functional.jacobian(lambda t: _full_diagonal(model64, t, create_graph=True), x64,
                                              create_graph=create_graph)  # [B, out, in, B, in]
    return torch.diagonal(full, dim1=0, dim2=3).permute(3, 0, 1, 2)  # [out, in, in, B] -> [B, out, in, in]


def of_quantity(quantity: str, model: nn.Module, x: Tensor, memory_budget: int | None = None, hidden: int = 0,
                train: bool = False) -> Reference | SecondOrderReference:
    """The float64 reference a shape of this quantity is validated against: `reference` (the Jacobian, and in train
    mode the penalty's gradient) or `second_order_reference` (the Hessian or what the Laplacian needs, and in train
    mode the PINN step's gradient)."""
    if quantity == "jacobian":
        return reference(model, x, train=train)
    return second_order_reference(model, x, quantity, memory_budget, hidden=hidden, train=train)


def validate_second_order(output: object, ref: SecondOrderReference, quantity: str, dtype: torch.dtype,
                          estimator: bool = False) -> Check:
    """Compare a second-order strategy's output (the Hessian or the Laplacian) with the float64 reference.

    Exact strategies: max |error| <= SECOND_ORDER_RTOL_FACTOR · RTOL[dtype] · scale (max |H|, or the largest
    Σ_i |H_ii| for the Laplacian), RTOL of a lower precision where the model computes in one inside
    (`tolerance_dtype` of the reference's forward error: an MLP under CPU autocast had every strategy's Laplacian
    0.35-0.76% and Hessian 0.74-0.86% off, all `wrong` at float32's tolerance). Estimators (Laplacian only): every
    entry within that tolerance plus ESTIMATE_SIGMAS noise scales sqrt(2)·‖H[b, o]‖_F; the message reports the
    measured error either way.
    """
    if quantity == "hessian":
        if ref.hessian is None:
            raise ValueError("this reference holds no Hessian: compute it with quantity='hessian'")
        expected, scale = ref.hessian, ref.hessian_scale
    else:
        expected, scale = ref.laplacian, ref.laplacian_scale
    note = precision_note(dtype, ref.forward_error)
    tolerance = SECOND_ORDER_RTOL_FACTOR * RTOL.get(tolerance_dtype(dtype, ref.forward_error), 1e-4) * scale + \
        torch.finfo(dtype).tiny
    problem = _shape_or_finite_problem(output, expected, tolerance)
    if problem:
        return problem
    error = output.detach().to(expected.device, torch.float64) - expected
    largest = error.abs().max().item() if error.numel() else 0.0
    if estimator:
        bound = tolerance + ESTIMATE_SIGMAS * math.sqrt(2) * ref.hessian_norm  # [B, out]
        relative = largest / max(expected.abs().max().item(), torch.finfo(torch.float64).tiny)
        measured = f"{ESTIMATE_NOTE} max abs error {largest:.3g} ({relative:.3g} of the largest |Δ|)"
        if (error.abs() > bound).any():
            worst = (error.abs() / bound).max().item()
            return Check(False, largest, tolerance, f"{measured}, {worst:.3g}× the bound of {ESTIMATE_SIGMAS} noise "
                                                    "scales sqrt(2)·‖H‖_F at its worst entry")
        return Check(True, largest, tolerance, "; ".join(m for m in (measured, note) if m))
    if largest > tolerance:
        return Check(False, largest, tolerance, "; ".join(m for m in (f"{quantity}: max abs error {largest:.3g} > "
                                                                     f"tolerance {tolerance:.3g}", note) if m))
    return Check(True, largest, tolerance, note)


def validate_pinn_gradient(output: object, expected: Tensor, dtype: torch.dtype, estimator: bool = False,
                           forward_error: float = 0.0) -> Check:
    """Compare the parameter gradient of a PINN step (one flat vector) with the float64 reference (a third
    derivative: PINN_RTOL_FACTOR on the Jacobian's RTOL, times max |gradient|). The step through an estimator
    trains on a noisy loss, whose gradient is not the exact one: it is checked for shape and finiteness only, and the
    message reports its error."""
    check = validate_gradient(output, expected, dtype, factor=PINN_RTOL_FACTOR, what="the PINN loss",
                              forward_error=forward_error)
    if not estimator or check.max_abs_error is None:
        return check
    relative = check.max_abs_error / max(expected.abs().max().item(), torch.finfo(torch.float64).tiny)
    measured = f"{ESTIMATE_NOTE} parameter gradient max abs error {check.max_abs_error:.3g} ({relative:.3g} of the " \
               "largest)"
    return Check(True, check.max_abs_error, check.tolerance, measured)


def _shape_or_finite_problem(output: object, expected: Tensor, tolerance: float) -> Check | None:
    """A failed Check when the output is not a tensor of the expected shape, or holds NaN or inf; else None."""
    if not isinstance(output, Tensor):
        return Check(False, None, tolerance, f"returned {type(output).__name__}, not a Tensor")
    if tuple(output.shape) != tuple(expected.shape):
        return Check(False, None, tolerance, f"returned shape {tuple(output.shape)}, expected {tuple(expected.shape)}")
    bad = nonfinite_rows(output.detach()) if output.dim() else []
    if bad:
        return Check(False, None, tolerance, f"the strategy returned NaN or inf for {_rows(bad, output.shape[0])}; "
                                             "the float64 reference is finite there")
    return None
