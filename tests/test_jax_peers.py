"""The JAX peers (plugins/jacobench-jax): registered through the entry point, the translation exact, every peer
validated against the harness's float64 references, float64 through x64, unsupported models saying why.

The tests that compute need jax and folx (`pip install -e '.[jax]' -e plugins/jacobench-jax`); without them they
skip with that reason, and the registration and the "JAX is missing" message are tested all the same.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

import strategies
from bench.harness import reference, second_order
from bench.schema import Sizes
from bench.spec import models
from strategies import REGISTRY, Unsupported

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "jacobench-jax"
ENTRY_POINTS = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())["project"]["entry-points"][
    strategies.ENTRY_POINT_GROUP]


@pytest.fixture(scope="module")
def peers():
    """The plugin's strategies, registered through its entry points as an installed plugin would be (an installed
    plugin registered them already)."""
    saved = dict(REGISTRY)
    sys.path.insert(0, str(PLUGIN_DIR))
    entries = [metadata.EntryPoint(name=n, value=v, group=strategies.ENTRY_POINT_GROUP) for n, v in
               ENTRY_POINTS.items() if n not in REGISTRY]
    strategies.load_entry_points(entries)
    yield {name: REGISTRY[name] for name in ENTRY_POINTS}
    REGISTRY.clear()
    REGISTRY.update(saved)
    sys.path.remove(str(PLUGIN_DIR))


@pytest.fixture(scope="module")
def jax(peers):
    why = "JAX or folx is not installed (pip install -e '.[jax]' -e plugins/jacobench-jax)"
    pytest.importorskip("folx", reason=why)
    return pytest.importorskip("jax", reason=why)


def build(preset: str, sizes: Sizes, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.Tensor]:
    return models.build(models.resolve(preset), sizes, "cpu", dtype)


# ---- registration, with or without JAX -----------------------------------------------------------------------------


def test_every_entry_point_registers_a_jax_peer(peers):
    assert sorted(peers) == sorted(ENTRY_POINTS)
    for name, s in peers.items():
        assert (s.name, s.peer, s.compiled, s.independent_samples, s.differentiable) == (name, "jax", True, True,
                                                                                        False)
    assert {s.quantity for s in peers.values()} == {"jacobian", "hessian", "laplacian"}


def test_peers_never_win(peers):
    from bench import rules

    for s in peers.values():
        assert not rules.may_win(is_jacobian=True, estimator=s.estimator, closed_form=s.closed_form, peer=s.peer)


def test_without_jax_a_peer_is_unsupported_and_says_how_to_install(peers, monkeypatch):
    from jacobench_jax import backend

    monkeypatch.setattr(backend, "_STARTED", None)
    monkeypatch.setitem(sys.modules, "jax", None)  # import jax raises ImportError
    model, x = build("mlp", Sizes(2, 4, 3, 2))
    with pytest.raises(Unsupported, match=r"JAX cannot be imported .*pip install"):
        peers["jax_vmap_jacrev"](model, x)


def test_installed_plugin_is_found_through_its_entry_points():
    found = {ep.name for ep in metadata.entry_points(group=strategies.ENTRY_POINT_GROUP)}
    if not found & set(ENTRY_POINTS):
        pytest.skip("plugins/jacobench-jax is not installed (pip install -e plugins/jacobench-jax)")
    assert set(ENTRY_POINTS) <= set(REGISTRY)


# ---- the translation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["mlp", "deep_mlp", "pinn"])
def test_translation_is_the_same_function_in_float64(jax, preset):
    from jacobench_jax import backend, translate

    model, x = build(preset, Sizes(5, 8, 3, 2), torch.float64)
    backend.start()
    backend.check_dtype(jax, torch.float64)
    device = jax.devices("cpu")[0]
    t = translate.translate(model, x, device)
    x_jax = backend.to_jax(jax, x, device)
    with torch.no_grad():
        expected = model(x)  # [B, out]
    batched = torch.from_dlpack(t.forward(t.params, x_jax))  # the same code on the whole batch
    per_sample = torch.from_dlpack(jax.vmap(t.forward, in_axes=(None, 0))(t.params, x_jax))
    torch.testing.assert_close(batched, expected, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(per_sample, expected, rtol=1e-13, atol=1e-14)


def every_activation() -> nn.Module:
    acts = [nn.SiLU(), nn.GELU(), nn.Softplus(beta=2.0, threshold=1.0), nn.Sigmoid(), nn.GELU(approximate="tanh"),
            nn.ELU(alpha=0.7), nn.LeakyReLU(0.1), nn.ReLU(), nn.Identity(), nn.Tanh()]
    layers: list[nn.Module] = [nn.Linear(3, 6)]
    for act in acts:
        layers += [act, nn.Sequential(nn.Linear(6, 6))]  # nested Sequentials are flattened
    return nn.Sequential(*layers, nn.Linear(6, 2, bias=False), nn.Dropout(0.5)).eval().double()


def test_every_activation_translates_with_torchs_formula(jax, peers):
    torch.manual_seed(0)
    model, x = every_activation(), 2 * torch.randn(7, 3, dtype=torch.float64)
    ref = reference.reference(model, x)
    check = reference.validate(peers["jax_vmap_jacrev"](model, x), ref.jacobian, "jacobian", torch.float64)
    assert check.ok, check.message


@pytest.mark.parametrize("preset, why", [
    ("cnn", "no JAX translation of"),
    ("mlp_batchnorm", "BatchNorm1d"),
    ("resmlp", "no JAX translation of"),
])
def test_unsupported_models_say_why(jax, peers, preset, why):
    sizes = Sizes(2, 4, 16, 2)
    model, x = build(preset, sizes)
    for s in peers.values():
        with pytest.raises(Unsupported, match=why):
            s(model, x)


def test_dropout_in_train_mode_is_unsupported(jax, peers):
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 2)).train()
    with pytest.raises(Unsupported, match="Dropout"):
        peers["jax_vmap_jacfwd"](model, torch.randn(2, 3))


# ---- every peer against the harness's float64 reference --------------------------------------------------------


SHAPES = [("mlp", Sizes(1, 8, 3, 2)), ("mlp", Sizes(6, 16, 4, 3)), ("pinn", Sizes(5, 8, 2, 1)),
          ("deep_mlp", Sizes(4, 8, 3, 2))]


def check_peer(strategy, preset: str, sizes: Sizes, dtype: torch.dtype) -> reference.Check:
    model, x = build(preset, sizes, dtype)
    out = strategy(model, x)
    assert out.dtype == dtype and out.device == x.device
    if strategy.quantity == "jacobian":
        return reference.validate(out, reference.reference(model, x).jacobian, strategy.returns, dtype)
    ref = second_order.second_order_reference(model, x, strategy.quantity)
    return second_order.validate_second_order(out, ref, strategy.quantity, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("preset, sizes", SHAPES, ids=lambda v: str(v) if isinstance(v, str) else
                         f"B{v.batch}-H{v.hidden}-in{v.in_dim}-out{v.out_dim}")
def test_every_peer_validates_against_the_reference(jax, peers, preset, sizes, dtype):
    for name, s in peers.items():
        check = check_peer(s, preset, sizes, dtype)
        assert check.ok, f"{name}: {check.message}"


def test_float32_stays_float32_once_x64_is_on(jax, peers):
    model, x = build("mlp", Sizes(3, 8, 3, 2), torch.float64)
    peers["jax_vmap_jacrev"](model, x)
    assert jax.config.jax_enable_x64
    model32, x32 = build("mlp", Sizes(3, 8, 3, 2))
    for s in peers.values():
        assert s(model32, x32).dtype == torch.float32


# ---- what is cached: translated once per model, converted once per input -----------------------------------------


def test_a_changed_weight_is_translated_again(jax, peers):
    from jacobench_jax import peers as module

    model, x = build("mlp", Sizes(4, 8, 3, 2), torch.float64)
    s = peers["jax_vmap_jacrev"]
    first = s(model, x)
    translation = module.TRANSLATIONS.get(model, x, jax.devices("cpu")[0])
    assert module.TRANSLATIONS.get(model, x, jax.devices("cpu")[0]) is translation  # cached
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # in place: its version changes
    second = s(model, x)
    assert not torch.allclose(first, second)
    assert reference.validate(second, reference.reference(model, x).jacobian, "jacobian", torch.float64).ok
    model[2] = nn.Linear(8, 2).double()  # a module replaced
    assert reference.validate(s(model, x), reference.reference(model, x).jacobian, "jacobian", torch.float64).ok


def test_the_input_is_converted_once_per_tensor_and_version(jax, peers):
    from jacobench_jax import peers as module

    model, x = build("mlp", Sizes(4, 8, 3, 2))
    device = jax.devices("cpu")[0]
    first = module.INPUTS.get(jax, x, device)
    assert module.INPUTS.get(jax, x, device) is first
    x.add_(1.0)  # changed in place: converted again, and the result follows
    assert module.INPUTS.get(jax, x, device) is not first
    ref = reference.reference(model, x).jacobian
    assert reference.validate(peers["jax_sum_jacrev"](model, x), ref, "jacobian", torch.float32).ok


def test_the_backend_has_the_threads_of_torch(jax, peers):
    from jacobench_jax import backend

    peers["jax_vmap_jacrev"](*build("mlp", Sizes(2, 4, 3, 2)))
    started = backend.started()
    assert started is not None and started.threads == torch.get_num_threads()
    import os

    assert os.environ[backend.THREADS_VARIABLE] == str(started.threads)
    saved = torch.get_num_threads()
    torch.set_num_threads(saved + 1)
    try:
        with pytest.raises(Unsupported, match="XLA's CPU pool was started with"):
            peers["jax_vmap_jacrev"](*build("mlp", Sizes(2, 4, 3, 2)))
    finally:
        torch.set_num_threads(saved)
