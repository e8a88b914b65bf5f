"""Every registered Jacobian strategy against an independent float64 reference (central finite differences).

Parametrized over the registry's Jacobian strategies: a new strategy file is covered without editing this file.
Second-order strategies (quantity hessian or laplacian) are tested in tests/test_second_order.py.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import Tensor, nn

import strategies
from bench.schema import Sizes
from strategies import REGISTRY, Unsupported
from tests.helpers import case_params, strategy_params

NAMES = strategy_params(strategies.names("jacobian"))  # a compiled one's cases are slow: each compiles


@pytest.fixture(scope="module", autouse=True)
def dynamo_never_falls_back():
    """A compiled strategy compiles once per model structure, shape and dtype for the whole module (a new model of
    the same shapes reuses the graph: dynamo guards on what it reads). Past dynamo's recompile limit it would run the
    eager code and these tests would no longer test the compiled one: the limit is raised and reaching it fails."""
    import torch._dynamo

    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=256, fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()
REQUIRED = {"grad_summed", "grad_loop", "grad_batched", "jacobian_diagonal", "jacobian_sum", "vmap_jacrev",
            "vmap_jacfwd", "jvp_loop", "analytic"}


class GatedResidual(nn.Module):
    """Not an MLP: a skip connection, a LayerNorm and a multiplicative gate (samples stay independent)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.up, self.gate, self.down = nn.Linear(in_dim, hidden), nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim)
        self.norm, self.skip = nn.LayerNorm(hidden), nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B, in] -> [B, out]
        h = torch.tanh(self.norm(self.up(x))) * torch.sigmoid(self.gate(x))  # [B, H]
        return self.down(h) + self.skip(x) * x.sum(1, keepdim=True)


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))


def deep_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.SiLU(),
        nn.Sequential(nn.Linear(hidden, hidden), nn.GELU()),
        nn.Linear(hidden, hidden), nn.Softplus(beta=2.0), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.Sigmoid(),
        nn.Linear(hidden, hidden), nn.GELU(approximate="tanh"),
        nn.Linear(hidden, hidden), nn.ELU(), nn.Identity(), nn.LeakyReLU(0.1),
        nn.Linear(hidden, out_dim),
    )


# (id, factory, batch, in, hidden, out)
CASES = [
    ("seed-mlp", mlp, 10, 3, 20, 2),
    ("deep-mlp", deep_mlp, 6, 5, 12, 4),
    ("out1", mlp, 7, 4, 9, 1),
    ("in1", deep_mlp, 5, 1, 8, 3),
    ("batch1", mlp, 1, 4, 8, 3),
    ("wide-out", mlp, 4, 2, 8, 9),
    ("non-mlp", GatedResidual, 5, 4, 8, 3),
]


# The compiled strategies on the cases that differ in structure (a deep MLP at in = 1, a model that is not an MLP).
COMPILED_FLOAT64 = ("seed-mlp", "in1", "non-mlp")
COMPILED_FLOAT32 = ("deep-mlp",)


def pairs(compiled_cases: tuple[str, ...]) -> list:
    """(case, strategy) parameters of every Jacobian strategy (tests/helpers.case_params)."""
    by_id = {c[0]: c for c in CASES}
    return [pytest.param(by_id[p.values[0]], p.values[1], id=p.id, marks=p.marks)
            for p in case_params(strategies.names("jacobian"), list(by_id), compiled_cases)]


def build(factory, batch: int, in_dim: int, hidden: int, out_dim: int, dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    model = factory(in_dim, hidden, out_dim).to(dtype).eval()
    x = torch.randn(batch, in_dim, dtype=dtype)  # [B, in]
    return model, x


@torch.no_grad()
def finite_difference_jacobian(model: nn.Module, x: Tensor, step: float = 1e-6) -> Tensor:
    """Diagonal blocks d y[b] / d x[b] by central differences, one sample and one input at a time (float64)."""
    batch, in_dim = x.shape
    out_dim = model(x).shape[1]
    jac = torch.zeros(batch, out_dim, in_dim, dtype=torch.float64)  # [B, out, in]
    for b in range(batch):
        for i in range(in_dim):
            plus, minus = x.clone(), x.clone()
            plus[b, i] += step
            minus[b, i] -= step
            jac[b, :, i] = (model(plus)[b] - model(minus)[b]) / (2 * step)
    return jac


def expected(strategy, jac: Tensor) -> Tensor:
    return jac.sum(1) if strategy.returns == "output_sum" else jac


def call(strategy, model, x) -> Tensor:
    try:
        return strategy(model, x)
    except Unsupported as exc:
        pytest.skip(f"{strategy.name}: {exc}")


def test_required_strategies_registered_in_order():
    assert REQUIRED <= set(REGISTRY)
    assert [n for n in REGISTRY if n in strategies._BUILTIN_ORDER] == list(strategies._BUILTIN_ORDER)
    for name, s in REGISTRY.items():
        assert s.name == name
        assert s.returns in ("jacobian", "output_sum")
        assert s.summary, f"{name} needs a docstring: its first line is the report's summary"
        assert isinstance(s.independent_samples, bool)


@pytest.mark.parametrize("case,name", pairs(COMPILED_FLOAT64))
def test_float64_matches_finite_differences(name, case):
    _, factory, batch, in_dim, hidden, out_dim = case
    strategy = REGISTRY[name]
    model, x = build(factory, batch, in_dim, hidden, out_dim)
    reference = expected(strategy, finite_difference_jacobian(model, x))
    got = call(strategy, model, x)
    assert got.shape == reference.shape
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case,name", pairs(COMPILED_FLOAT32))
def test_float32_within_dtype_tolerance(name, case):
    _, factory, batch, in_dim, hidden, out_dim = case
    strategy = REGISTRY[name]
    model64, x64 = build(factory, batch, in_dim, hidden, out_dim)
    reference = expected(strategy, finite_difference_jacobian(model64, x64))
    model32, x32 = copy.deepcopy(model64).float(), x64.float()
    got = call(strategy, model32, x32)
    assert got.dtype == torch.float32
    eps = torch.finfo(torch.float32).eps
    scale = reference.abs().max().item() + 1
    assert (got.double() - reference).abs().max().item() <= 100 * eps * math.sqrt(hidden) * scale


@pytest.mark.parametrize("name", NAMES)
def test_leaves_no_grad_and_does_not_mutate_input(name):
    strategy = REGISTRY[name]
    model, x = build(mlp, 4, 3, 6, 2, dtype=torch.float32)
    x_before = x.clone()
    call(strategy, model, x)
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad and x.grad is None
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("name", NAMES)
def test_works_on_input_that_requires_grad(name):
    strategy = REGISTRY[name]
    model, x = build(mlp, 3, 2, 5, 2)
    x.requires_grad_(True)
    got = call(strategy, model, x)
    reference = expected(strategy, finite_difference_jacobian(model, x.detach()))
    torch.testing.assert_close(got.detach(), reference, rtol=1e-6, atol=1e-7)
    assert x.grad is None


def test_grad_summed_is_output_sum_and_jacobian_only_when_out_is_1():
    model, x = build(mlp, 6, 3, 10, 4)
    jac = finite_difference_jacobian(model, x)
    summed = REGISTRY["grad_summed"](model, x)
    assert summed.shape == (6, 3)  # (B, in), not (B, out, in)
    torch.testing.assert_close(summed, jac.sum(1), rtol=1e-6, atol=1e-7)
    assert (summed - jac[:, 0]).abs().max() > 1e-3  # with out > 1 it is not any row of J

    model1, x1 = build(mlp, 6, 3, 10, 1)
    exact = REGISTRY["analytic"](model1, x1)  # [B, 1, in]
    torch.testing.assert_close(REGISTRY["grad_summed"](model1, x1), exact[:, 0], rtol=1e-12, atol=1e-14)


def test_seed_example_reproduced():
    """The seed's shape (B=10, H=20, in=3, out=2, float64): summed grad == diag jacobian summed; loop == diag."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 20), nn.Tanh(), nn.Linear(20, 2)).double()
    x = torch.rand(10, 3, dtype=torch.float64)
    diagonal = REGISTRY["jacobian_diagonal"](model, x)
    assert diagonal.shape == (10, 2, 3)
    torch.testing.assert_close(REGISTRY["grad_summed"](model, x), diagonal.sum(1), rtol=0, atol=1e-14)
    torch.testing.assert_close(REGISTRY["grad_loop"](model, x), diagonal, rtol=0, atol=1e-14)


def batchnorm_model() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2)).double().train()
    return model, torch.randn(6, 3, dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_coupled_samples_exact_or_declared(name):
    """BatchNorm1d in train mode couples samples: a strategy either matches the true diagonal blocks, raises,
    or declares independent_samples=True."""
    strategy = REGISTRY[name]
    model, x = batchnorm_model()
    truth = expected(strategy, finite_difference_jacobian(model, x))
    try:
        got = strategy(model, x)
    except Exception:  # raising is an acceptable answer; a silent wrong one is not
        return
    matches = got.shape == truth.shape and torch.allclose(got, truth, rtol=1e-6, atol=1e-7)
    if not strategy.independent_samples:
        assert matches, f"{name} is wrong on a batch-coupled model but declares independent_samples=False"


def test_coupling_is_visible_to_this_test():
    """Guard for the test above: on the BatchNorm model a per-sample strategy really does differ."""
    model, x = batchnorm_model()
    truth = finite_difference_jacobian(model, x)
    assert not torch.allclose(REGISTRY["grad_loop"](model, x), truth, atol=1e-4)


def test_analytic_refuses_what_it_cannot_differentiate():
    analytic = REGISTRY["analytic"]
    model, x = build(GatedResidual, 3, 4, 6, 2)
    with pytest.raises(Unsupported):
        analytic(model, x)
    bn, xb = batchnorm_model()
    with pytest.raises(Unsupported):
        analytic(bn, xb)
    dropout = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double().train()
    with pytest.raises(Unsupported):
        analytic(dropout, torch.randn(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("in_dim,out_dim", [(2, 9), (9, 2), (4, 4)])
def test_analytic_both_association_orders(in_dim, out_dim):
    model, x = build(deep_mlp, 3, in_dim, 7, out_dim)
    torch.testing.assert_close(REGISTRY["analytic"](model, x), finite_difference_jacobian(model, x),
                               rtol=1e-6, atol=1e-7)


def test_memory_estimates():
    diag = REGISTRY["jacobian_diagonal"].memory_estimate
    assert diag is not None
    small = diag(Sizes(64, 32, 8, 8), torch.float32)
    assert diag(Sizes(128, 32, 8, 8), torch.float32) > 3.5 * small  # O(B²)
    assert diag(Sizes(64, 32, 8, 8), torch.float64) > 1.9 * small
    assert small >= 64 * 64 * 8 * 8 * 4
    for s in REGISTRY.values():
        if s.memory_estimate is not None:
            assert s.memory_estimate(Sizes(4, 8, 3, 2), torch.float32) > 0


def test_register_rejects_duplicates_and_bad_returns():
    with pytest.raises(ValueError):
        strategies.register(name="grad_loop")(lambda model, x: x)
    with pytest.raises(ValueError):
        strategies.register(name="new_one", returns="hessian")
    assert "new_one" not in REGISTRY


def exact_jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """d y[b] / d x[b] from the full (B, out, B, in) Jacobian, float64, no graph."""
    full = torch.autograd.functional.jacobian(model, x)  # [B, out, B, in]
    return torch.diagonal(full, dim1=0, dim2=2).permute(2, 0, 1)


def penalty_gradient_by_differences(returns: str, model: nn.Module, x: Tensor, step: float = 1e-6) -> list[Tensor]:
    """d/dθ of the Jacobian penalty sum(J²) (of J.sum(1) for "output_sum"), by central differences over every
    parameter: independent of any double-backward machinery."""
    def penalty() -> float:
        jac = exact_jacobian(model, x)  # [B, out, in]
        return float(((jac.sum(1) if returns == "output_sum" else jac) ** 2).sum())

    grads = []
    with torch.no_grad():
        for p in model.parameters():
            g, flat = torch.zeros_like(p), p.view(-1)
            for k in range(flat.numel()):
                old = flat[k].item()
                flat[k] = old + step
                plus = penalty()
                flat[k] = old - step
                minus = penalty()
                flat[k] = old
                g.view(-1)[k] = (plus - minus) / (2 * step)
            grads.append(g)
    return grads


@functools.cache
def penalty_gradient(factory, returns: str) -> list[Tensor]:
    """penalty_gradient_by_differences of the model and input build(factory, 4, 3, 6, 2) gives every test below:
    the same for every strategy that returns the same quantity, so computed once (thousands of Jacobians each)."""
    model, x = build(factory, 4, 3, 6, 2)
    return penalty_gradient_by_differences(returns, model, x)


def gated_without_norm(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """GatedResidual with its LayerNorm replaced by the identity (see the next test for why)."""
    model = GatedResidual(in_dim, hidden, out_dim)
    model.norm = nn.Identity()
    return model


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("factory", [mlp, deep_mlp, gated_without_norm], ids=["mlp", "deep-mlp", "non-mlp"])
def test_create_graph_gives_a_jacobian_that_trains(name, factory):
    """Training through the Jacobian: sum(J²) backpropagated to the parameters matches central differences."""
    strategy = REGISTRY[name]
    model, x = build(factory, 4, 3, 6, 2)
    if not strategy.differentiable:
        with pytest.raises(Unsupported):
            strategy(model, x, create_graph=True)
        return
    jac = call_with_graph(strategy, model, x)
    grads = torch.autograd.grad((jac**2).sum(), list(model.parameters()), allow_unused=True)
    for got, want in zip(grads, penalty_gradient(factory, strategy.returns), strict=True):
        torch.testing.assert_close(torch.zeros_like(want) if got is None else got, want, rtol=1e-6, atol=1e-8)


FORWARD_MODE = [n for n in NAMES if n in ("vmap_jacfwd", "vmap_jacfwd_chunked", "jvp_loop", "jvp_batched")]


@pytest.mark.parametrize("name", FORWARD_MODE)
def test_forward_mode_trains_wrongly_through_layer_norm(name):
    """A known torch limit the suite must catch, not hide: the forward-mode derivative of layer_norm does not carry
    its dependence on the parameters into a backward pass (pytorch/pytorch#196700 is the same family), so training
    through a forward-mode J of a model with LayerNorm gets wrong parameter gradients while J itself is right. If a
    torch release fixes it, this test fails and can go."""
    strategy = REGISTRY[name]
    model, x = build(GatedResidual, 4, 3, 6, 2)
    torch.testing.assert_close(strategy(model, x), exact_jacobian(model, x), rtol=1e-9, atol=1e-10)
    jac = strategy(model, x, create_graph=True)
    grads = torch.autograd.grad((jac**2).sum(), list(model.parameters()), allow_unused=True)
    errors = [((torch.zeros_like(want) if got is None else got) - want).abs().max().item()
              for got, want in zip(grads, penalty_gradient(GatedResidual, strategy.returns), strict=True)]
    assert max(errors) > 1e-3


class WritesIntoItsInput(nn.Module):
    """Sets one input coordinate to zero in a copy of its input before the layers, as users mask a feature."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, in] -> [B, out]
        x = x.clone()
        x[:, 0] = 0.0
        return torch.sin(self.lin(x))


@pytest.mark.parametrize("name", [n for n in strategies.names("jacobian")
                                  if not REGISTRY[n].compiled and REGISTRY[n].returns == "jacobian"])
def test_linearize_misses_a_write_into_a_copy_of_the_input(name):
    """A known torch limit the suite must catch, not hide (found running a user's model through the suite, torch
    2.14.1): torch.func.linearize's tangent map of a model that writes into a copy of its input (x = x.clone();
    x[:, 0] = 0) is the derivative at the input as it was before the write (column 0 right, the others at the
    unwritten input), without an error; every other strategy is right. The run marks linearize_batched `wrong`. If a
    torch release fixes it, this test fails for linearize_batched and the exception can go."""
    model, x = build(WritesIntoItsInput, 3, 4, 0, 3)
    err = (call(REGISTRY[name], model, x) - exact_jacobian(model, x)).abs().max().item()
    if name == "linearize_batched":
        assert err > 1e-3
    else:
        assert err < 1e-9


def call_with_graph(strategy, model, x) -> Tensor:
    try:
        return strategy(model, x, create_graph=True)
    except Unsupported as exc:
        pytest.skip(f"{strategy.name}: {exc}")


@pytest.mark.parametrize("name", NAMES)
def test_without_create_graph_j_carries_no_graph(name):
    model, x = build(mlp, 4, 3, 6, 2)
    jac = call(REGISTRY[name], model, x)
    assert jac.grad_fn is None and not jac.requires_grad


# Memory estimates decide `over_budget` before a case runs: they must be the right size, not exact. On the seed MLP at
# shapes where the call needs tens of MB (well above the allocator's noise), the estimate stays within this factor of
# the peak measured the way a run measures it (VmHWM after clear_refs, in this process).
MEMORY_FACTOR = 4
MEMORY_SHAPES = [("jacobian_diagonal", Sizes(256, 64, 16, 16)), ("vmap_jacrev", Sizes(2048, 256, 16, 64)),
                 ("grad_batched", Sizes(2048, 256, 16, 64)), ("vmap_jacfwd", Sizes(2048, 256, 64, 16)),
                 ("jacobian_sum", Sizes(2048, 256, 16, 64))]


@pytest.mark.parametrize("name,sizes", MEMORY_SHAPES, ids=[f"{n}-{s.id}" for n, s in MEMORY_SHAPES])
def test_memory_estimate_is_within_a_factor_of_the_measured_peak(name, sizes):
    from bench.harness import measure
    from bench.spec import models

    model, x = models.build(models.PRESETS["mlp"], sizes, "cpu", torch.float32)
    strategy = REGISTRY[name]
    strategy(model, x)  # lazy imports and the allocator's first growth, as a run's warm-up does
    peak = measure.peak_memory(lambda: strategy(model, x), "cpu")
    if peak is None:
        pytest.skip("no /proc/self/clear_refs: peak memory cannot be measured here")
    estimate = strategy.memory_estimate(sizes, torch.float32)
    assert 1 / MEMORY_FACTOR <= estimate / peak <= MEMORY_FACTOR, f"estimate {estimate:,} B, measured {peak:,} B"
