"""The float64 reference: coupling found in every direction, the diagonal blocks exact, the model's own NaN refused."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn

import strategies
from bench.harness import reference, runner
from bench.harness.reference import ModelProblem
from bench.schema import Sizes
from bench.spec.cases import Case


class Mixed(nn.Module):
    """y[b] = tanh(W · mix(x)[b]): `mix` decides which samples each output row sees."""

    def __init__(self, in_dim: int, out_dim: int, mix):
        super().__init__()
        self.lin, self.mix = nn.Linear(in_dim, out_dim), mix

    def forward(self, x: Tensor) -> Tensor:  # [B, in] -> [B, out]
        return torch.tanh(self.lin(self.mix(x)))


class Fn(nn.Module):
    """A function of x, with its own Linear so the reference has parameters to copy to float64."""

    def __init__(self, fn):
        super().__init__()
        self.lin, self.fn = nn.Linear(3, 2), fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.lin, x)


def last_feeds_first(x: Tensor) -> Tensor:
    """Only row 0 depends on another sample (the last one): one off-diagonal block in B²."""
    return torch.cat([x[:1] + x[-1:], x[1:]])


MIXES = {
    "forward cumsum": lambda x: x.cumsum(0),  # sample 0 changes every row
    "reverse cumsum": lambda x: x.flip(0).cumsum(0).flip(0),  # sample 0 changes row 0 only
    "batch mean": lambda x: x - x.mean(0, keepdim=True),
    "last feeds first": last_feeds_first,
    "neighbour": lambda x: x + 0.5 * x.roll(1, dims=0),
}
INDEPENDENT = {
    "identity": lambda x: x,
    "per-sample norm": lambda x: x / x.norm(dim=1, keepdim=True),
    "mean cancelled": lambda x: x - x.mean(0, keepdim=True) + x.mean(0, keepdim=True),  # a path, zero derivative
    "round-off coupling": lambda x: x + 1e-20 * x.mean(0, keepdim=True),  # far below any tolerance
}
SHAPES = [(5, 3, 4), (5, 4, 3), (7, 2, 6), (8, 6, 2)]  # (B, in, out): in < out and in > out, odd and even B


def model_and_input(mix, batch: int, in_dim: int, out_dim: int) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return Mixed(in_dim, out_dim, mix).double(), torch.randn(batch, in_dim, dtype=torch.float64)


def true_diagonal_blocks(model: nn.Module, x: Tensor) -> Tensor:
    """d y[b] / d x[b] from the full (B, out, B, in) Jacobian: right whatever the model couples."""
    full = torch.autograd.functional.jacobian(model, x)  # [B, out, B, in]
    return torch.diagonal(full, dim1=0, dim2=2).permute(2, 0, 1)  # [B, out, in]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}-in{i}-out{o}" for b, i, o in SHAPES])
@pytest.mark.parametrize("name", list(MIXES))
def test_coupling_is_found_in_every_direction(name, shape):
    model, x = model_and_input(MIXES[name], *shape)
    assert reference.samples_coupled(model, x)
    ref = reference.reference(model, x)
    assert ref.coupled
    torch.testing.assert_close(ref.jacobian, true_diagonal_blocks(model, x), rtol=1e-12, atol=1e-12)


def test_a_coupled_reference_taken_in_chunks_is_the_full_jacobians_and_its_penalty_gradients(monkeypatch):
    # BatchNorm in train mode couples the samples; two samples a chunk: three chunks of one batched backward each
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2)).double().train()
    x = torch.randn(6, 3, dtype=torch.float64)
    monkeypatch.setattr(reference, "COUPLED_CHUNK", 2 * 2 * 6)
    ref = reference.reference(model, x, train=True)
    full = torch.autograd.functional.jacobian(model, x, create_graph=True)  # [B, out, B, in], in one piece
    blocks = torch.diagonal(full, dim1=0, dim2=2).permute(2, 0, 1)
    params = list(model.parameters())
    assert ref.coupled
    torch.testing.assert_close(ref.jacobian, blocks.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref.penalty_gradient, reference.flat_gradient(blocks.square().sum(), params, True))
    torch.testing.assert_close(ref.output_sum_penalty_gradient,
                               reference.flat_gradient(blocks.sum(1).square().sum(), params))


@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}-in{i}-out{o}" for b, i, o in SHAPES])
@pytest.mark.parametrize("name", list(INDEPENDENT))
def test_independent_models_take_the_cheap_exact_path(name, shape):
    model, x = model_and_input(INDEPENDENT[name], *shape)
    ref = reference.reference(model, x)
    assert not ref.coupled
    torch.testing.assert_close(ref.jacobian, true_diagonal_blocks(model, x), rtol=1e-12, atol=1e-12)


def test_a_detached_batch_statistic_couples_the_values_not_the_derivatives():
    """A user's detached batch scale: no derivative flows between samples (the cheap exact path holds), but a sample's
    output changes with the rest of the batch, so the model is flagged coupled, and a per-sample strategy (vmap,
    one sample at a time) that comes out wrong is told why."""
    model, x = model_and_input(lambda x: x / x.abs().max().detach(), 8, 3, 2)
    assert not reference.samples_coupled(model, x) and reference.values_coupled(model, x)
    ref = reference.reference(model, x)
    assert ref.coupled
    torch.testing.assert_close(ref.jacobian, true_diagonal_blocks(model, x), rtol=1e-12, atol=1e-12)
    case = Case("mixed", "float64", Sizes(8, 4, 3, 2))
    check = runner.validate(strategies.REGISTRY["vmap_jacrev"](model, x), ref, strategies.REGISTRY["vmap_jacrev"],
                            case)
    assert not check.ok and check.message.endswith(runner.COUPLED_HINT)
    assert runner.validate(strategies.REGISTRY["grad_batched"](model, x), ref, strategies.REGISTRY["grad_batched"],
                           case).ok
    for name in INDEPENDENT:  # round-off and an exact cancellation are no coupling of values either
        assert not reference.values_coupled(*model_and_input(INDEPENDENT[name], 8, 3, 2))


def test_every_pair_of_rows_is_probed():
    """Row b depends on row c for a single pair (c, b): found for every such pair at B = 6."""
    batch = 6
    for c in range(batch):
        for b in range(batch):
            if b == c:
                continue

            def one_pair(x: Tensor, b=b, c=c) -> Tensor:
                shift = torch.zeros_like(x)
                shift[b] = x[c]
                return x + shift

            model, x = model_and_input(one_pair, batch, 3, 2)
            assert reference.samples_coupled(model, x), (c, b)


def test_a_one_sample_batch_and_an_input_free_output_are_not_coupled():
    model, x = model_and_input(MIXES["forward cumsum"], 1, 3, 2)
    assert not reference.samples_coupled(model, x)
    constant = Fn(lambda lin, t: lin(torch.zeros_like(t))).double()
    assert not reference.samples_coupled(constant, x.repeat(4, 1))


def test_the_models_own_nan_is_refused_with_the_rows():
    x = torch.tensor([[0.0, 1, 2], [2.0, 0, 0], [0.5, 0, 0], [3.0, 1, 1]], dtype=torch.float64)
    with pytest.raises(ModelProblem, match=r"model itself returns NaN or inf .* 2 of 4 samples \(rows 1, 3\)"):
        reference.reference(Fn(lambda lin, t: lin(t) * torch.sqrt(1 - t[:, :1])), x)
    with pytest.raises(ModelProblem, match="Jacobian holds NaN or inf for 1 of 4"):
        reference.reference(Fn(lambda lin, t: lin(t) * torch.sqrt(t[:, :1])), x.abs())  # sqrt(0): no derivative


def test_a_random_model_is_refused():
    noisy = Fn(lambda lin, t: lin(t) + torch.randn(t.shape[0], 2, dtype=t.dtype))
    with pytest.raises(ModelProblem, match=r"not deterministic: .* \(a random op in its forward\)"):
        reference.reference(noisy, torch.randn(4, 3).double())
    dropout = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    with pytest.raises(ModelProblem, match=r"\(Dropout in training mode, as the factory returned the model\)"):
        reference.reference(dropout, torch.randn(4, 3))


def test_a_model_that_updates_its_own_state_is_refused_with_the_buffers():
    """spectral_norm in training mode runs a step of power iteration on every call: the weight, and so the output,
    moves from one call to the next; the message names the buffers it updates, not 'a random op'."""
    model = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(3, 8)), nn.Tanh(), nn.Linear(8, 2))
    with pytest.raises(ModelProblem, match=r"its forward updates its own buffers 0\.parametrizations\.weight\.0\._u, "
                                           r"0\.parametrizations\.weight\.0\._v, as spectral_norm"):
        reference.reference(model.train(), torch.randn(4, 3))
    reference.reference(model.eval(), torch.randn(4, 3))  # no update in eval mode: measured


def test_validate_says_where_non_finite_numbers_came_from():
    ref = torch.ones(4, 2, 3, dtype=torch.float64)
    got = torch.ones(4, 2, 3)
    got[2, 1, 0] = float("nan")
    check = reference.validate(got, ref, "jacobian", torch.float32)
    assert not check.ok and "strategy returned NaN or inf for 1 of 4 samples (row 2)" in check.message
    assert reference.validate(torch.ones(4, 2, 3), ref, "jacobian", torch.float32).ok
    assert reference.validate(torch.full((4, 3), 2.0), ref, "output_sum", torch.float32).ok


class Autocast(nn.Module):
    """A user's mixed-precision model: its layers under CPU autocast (bfloat16 matmuls), a float32 output."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 4))

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x).float()


def test_a_model_computing_below_its_dtype_is_held_to_that_precision():
    """Every strategy's J of a bfloat16-autocast model is off the float64 reference by the model's own round-off
    (all 178 cases of such a user model were `wrong` at float32's tolerance): its results are held to bfloat16's
    tolerance, and the check says why. A plain float32 model keeps float32's."""
    torch.manual_seed(0)
    model, x = Autocast().eval(), torch.randn(16, 8)
    ref = reference.reference(model, x)
    assert reference.RTOL[torch.float32] < ref.forward_error <= reference.RTOL[torch.bfloat16]
    assert reference.tolerance_dtype(torch.float32, ref.forward_error) == torch.bfloat16
    jac = strategies.REGISTRY["vmap_jacrev"](model, x)
    assert not reference.validate(jac, ref.jacobian, "jacobian", torch.float32).ok  # float32's tolerance
    check = reference.validate(jac, ref.jacobian, "jacobian", torch.float32, ref.forward_error)
    assert check.ok and re.match(r"held to bfloat16's tolerance: the model's own float32 output is "
                                 r"[\d.]+% off its float64 output", check.message)
    plain = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 4)).eval()
    plain_ref = reference.reference(plain, x)
    assert plain_ref.forward_error < 1e-6 and reference.precision_note(torch.float32, plain_ref.forward_error) == ""
    assert reference.reference(plain.double(), x.double()).forward_error == 0.0
