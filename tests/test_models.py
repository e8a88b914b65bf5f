"""Model presets: each maps (B, in) to (B, out), keeps samples independent when it says so, refuses sizes that do not
fit with one line at planning time, and every strategy is either right on it or says Unsupported."""

from __future__ import annotations

import pytest
import torch

import strategies
from bench.cli import main
from bench.harness import reference
from bench.schema import Sizes
from bench.spec import grid, models, plan
from tests.helpers import strategy_params

# Two sizes (in_dim, hidden, out_dim) per preset that fit it; the first is the small one the strategy test uses.
SIZES = {
    "mlp": [(4, 8, 3), (16, 32, 16)],
    "deep_mlp": [(4, 8, 3), (16, 32, 16)],
    "mlp_batchnorm": [(4, 8, 3), (8, 16, 1)],
    "pinn": [(2, 8, 1), (3, 16, 2)],
    "cnn": [(16, 3, 3), (256, 8, 10)],
    "attention": [(16, 8, 3), (64, 32, 8)],
    "flow": [(4, 8, 4), (9, 16, 9)],
    "resmlp": [(5, 8, 3), (16, 64, 16)],
    "linear_tanh": [(3, 1, 5), (32, 1, 64)],
}
CASES = [(name, size) for name, sizes in SIZES.items() for size in sizes]

# Sizes each architecture cannot take, and the words of the one-line refusal.
UNFIT = {
    "pinn": [((5, 8, 1), "in_dim=5 is not a number of coordinates")],
    "cnn": [((10, 4, 3), "in_dim=10 is not a square image"), ((9, 4, 3), "two 2x2 poolings need at least 4x4")],
    "attention": [((12, 8, 3), "in_dim=12 is not 8 tokens x width")],
    "flow": [((8, 8, 4), "in_dim=8 != out_dim=4"), ((1, 8, 1), "in_dim must be at least 2")],
}


def test_every_registered_model_is_covered_here():
    assert set(SIZES) == set(models.PRESETS)


@pytest.mark.parametrize("name", list(models.PRESETS))
def test_factory_says_how_the_three_sizes_are_read(name):
    model_def = models.PRESETS[name]
    assert model_def.factory.__doc__ and model_def.description, name


@pytest.mark.parametrize("name,size", CASES, ids=[f"{n}-in{i}-H{h}-out{o}" for n, (i, h, o) in CASES])
@pytest.mark.parametrize("batch", [1, 5])
def test_preset_maps_batch_in_to_batch_out(name, size, batch):
    in_dim, hidden, out_dim = size
    model_def = models.PRESETS[name]
    assert model_def.problem(Sizes(batch, hidden, in_dim, out_dim)) == ""
    if batch == 1 and model_def.couples_samples:
        pytest.skip("BatchNorm in train mode needs more than one sample")
    model, x = models.build(model_def, Sizes(batch, hidden, in_dim, out_dim), "cpu", torch.float32)
    assert models.run_problem(model, x, out_dim) == ""
    assert model(x).shape == (batch, out_dim)


@pytest.mark.parametrize("name,size", CASES, ids=[f"{n}-in{i}-H{h}-out{o}" for n, (i, h, o) in CASES])
def test_samples_are_independent_when_the_preset_says_so(name, size):
    in_dim, hidden, out_dim = size
    model_def = models.PRESETS[name]
    model, x = models.build(model_def, Sizes(6, hidden, in_dim, out_dim), "cpu", torch.float64)
    assert reference.samples_coupled(model, x) is model_def.couples_samples


# model(x) of each seed preset at B2-H4-in3-out2 in float64, as the presets built it before the model zoo: their
# seeds and layers must not change, or earlier runs stop being comparable.
SEED_OUTPUTS = {
    "mlp": [0.37716043, 0.77635836, 0.35953803, 1.12309968],
    "deep_mlp": [-0.55464295, 1.00523193, -0.55312528, 1.00299841],
    "mlp_batchnorm": [0.02924484, -0.08052714, 0.52429241, 0.2121857],
}


@pytest.mark.parametrize("name", list(SEED_OUTPUTS))
def test_the_seed_models_are_unchanged(name):
    model, x = models.build(models.PRESETS[name], Sizes(2, 4, 3, 2), "cpu", torch.float64)
    assert model(x).flatten().tolist() == pytest.approx(SEED_OUTPUTS[name], abs=1e-7)


@pytest.mark.parametrize("name,size,words", [(n, s, w) for n, cases in UNFIT.items() for s, w in cases])
def test_unfit_sizes_are_named_by_fits_and_by_the_factory(name, size, words):
    model_def = models.PRESETS[name]
    in_dim, hidden, out_dim = size
    assert words in model_def.problem(Sizes(1, hidden, in_dim, out_dim))
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        model_def.factory(*size)


def test_user_models_have_no_size_check():
    user = models.ModelDef("mine", lambda i, h, o: torch.nn.Linear(i, o), "user model")
    assert user.fits is None and user.problem(Sizes(1, 1, 10, 3)) == ""


# ---- the refusal through the CLI: one line, exit 2, before anything runs -------------------------------------------

BASE = "[base]\nbatch = 4\nhidden = 4\nin_dim = 3\nout_dim = 2\n"
BAD_GRIDS = {
    "cnn not a square": (BASE + '[[also]]\nmodels = ["cnn"]\nbase = { in_dim = 10 }\n', [],
                         "model cnn: in_dim=10 is not a square image (use 16, 64, 256",
                         "case cnn-B4-H4-in10-out2 of grid g.toml, [[also]] block 1"),
    "attention in a sweep": (BASE + '[[also]]\nmodels = ["attention"]\nbase = { in_dim = 16 }\n'
                             'sweep = { in_dim = [16, 20] }\n', [],
                             "model attention: in_dim=20 is not 8 tokens x width", "case attention-B4-H4-in20-out2"),
    "flow in != out": ('models = ["flow"]\n' + BASE.replace("in_dim = 3", "in_dim = 4").replace("out_dim = 2",
                                                                                              "out_dim = 4")
                       + "[sweep]\nout_dim = [1, 4]\n", [],
                       "model flow: in_dim=4 != out_dim=1", "top-level block"),
    "pinn too many coordinates": ('models = ["pinn"]\n' + BASE + "[sweep]\nin_dim = [2, 3, 6, 7]\n", [],
                                  "model pinn: in_dim=6 is not a number of coordinates", "1 more case(s) do not fit"),
    "MODEL= on every block": (BASE, ["--model", "cnn"], "model cnn: in_dim=3 is not a square image",
                              "MODEL=cnn replaces the models of every block"),
}


@pytest.mark.parametrize("name", list(BAD_GRIDS))
def test_unfit_size_is_one_line_at_planning_time(name, tmp_path, capsys, monkeypatch):
    text, extra, problem, where = BAD_GRIDS[name]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_text(text)
    assert main(["run", "--grid", "g.toml", "--run", "unfit", "--strategies", "grad_loop", *extra]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jacobench: error: ") and problem in lines[0] and where in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "results").exists()


def test_a_model_is_probed_at_the_base_of_its_own_block():
    """The top-level base (in 3) is no image: cnn, listed only in an [[also]] block, is tried at that block's base."""
    the_grid = grid.load_grid("zoo")
    model_defs, _ = plan.check_models(list(the_grid.models), the_grid, None)
    assert set(model_defs) >= set(models.PRESETS) - {"mlp_batchnorm", "linear_tanh"}


def test_zoo_runs_every_preset_at_sizes_that_fit():
    cases = grid.expand(grid.load_grid("zoo"))
    assert {c.model for c in cases} >= set(models.PRESETS) - {"mlp_batchnorm", "linear_tanh"}  # tutorial: published
    for case in cases:
        assert models.PRESETS[case.model].problem(case.sizes) == "", case.shape_id
    assert len({c.sizes.batch for c in cases if c.model == "pinn"}) >= 2


# ---- every strategy on every preset: right, or Unsupported, or a failure recorded here with its reason ----------

# (strategy, model) -> (expected outcome, words of its message). Every strategy is right on every independent preset
# or says Unsupported (analytic on anything but Linear/activation chains). Add an entry when a strategy cannot run a
# preset for a real reason (e.g. vmap has no batching rule for one of its ops), never to hide a wrong answer.
KNOWN_FAILURES: dict[tuple[str, str], tuple[str, str]] = {
    # torch.func transforms refuse BatchNorm's in-place update of running_mean/var (a captured buffer) in train mode.
    ("vmap_jacrev", "mlp_batchnorm"): ("error", "in-place operation"),
    ("vmap_jacfwd", "mlp_batchnorm"): ("error", "in-place operation"),
    ("jvp_loop", "mlp_batchnorm"): ("error", "in-place operation"),
}


def _outcome(strategy: strategies.Strategy, model: torch.nn.Module, x: torch.Tensor, expected: torch.Tensor
             ) -> tuple[str, str]:
    try:
        output = strategy(model, x)
    except strategies.Unsupported as exc:
        return "unsupported", str(exc)
    except Exception as exc:  # recorded, so KNOWN_FAILURES can say which failures are expected
        return "error", f"{type(exc).__name__}: {exc}"
    check = reference.validate(output, expected, strategy.returns, torch.float64)
    return ("ok", "") if check.ok else ("wrong", check.message)


@pytest.fixture(scope="module")
def float64_cases() -> dict[str, tuple[torch.nn.Module, torch.Tensor, reference.Reference]]:
    built = {}
    for name, sizes in SIZES.items():
        in_dim, hidden, out_dim = sizes[0]
        model, x = models.build(models.PRESETS[name], Sizes(4, hidden, in_dim, out_dim), "cpu", torch.float64)
        built[name] = (model, x, reference.reference(model, x))
    return built


@pytest.mark.parametrize("model_name", list(SIZES))
@pytest.mark.parametrize("strategy_name", strategy_params(strategies.names("jacobian")))
def test_strategy_is_right_or_unsupported_on_every_preset(strategy_name, model_name, float64_cases):
    strategy = strategies.REGISTRY[strategy_name]
    model, x, ref = float64_cases[model_name]
    outcome, message = _outcome(strategy, model, x, ref.jacobian)
    known = KNOWN_FAILURES.get((strategy_name, model_name))
    if known:
        assert (outcome, known[1] in message) == (known[0], True), message
    elif ref.coupled and strategy.independent_samples:
        # A strategy that assumes independent samples cannot be right on a batch-coupled model: it must not match
        # (the harness learns this from the reference's coupling check, not from the strategy).
        assert outcome in ("wrong", "error", "unsupported"), f"{strategy_name} matched a coupled model"
    else:
        assert outcome in ("ok", "unsupported"), f"{strategy_name} on {model_name}: {outcome}: {message}"
