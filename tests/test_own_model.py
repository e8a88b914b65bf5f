"""Your own model, end to end: a factory of no arguments (fixed sizes, IN_DIM=, GRID=batch), a grid file that names
a model by its path, and the mistakes users make with a model of their own, each one line before anything runs."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.schema import FIXED_HIDDEN, Sizes, shape_id
from bench.spec import grid, models
from bench.spec.plan import plan_run
from bench.spec.settings import Settings
from tests.helpers import run_bench

USER_MODELS = textwrap.dedent(
    '''
    import math

    import torch
    from torch import nn


    class Heat(nn.Module):
        """(x, y, t) -> Fourier features in a frozen parameter -> two SiLU layers of width 64 -> (u, v)."""

        def __init__(self):
            super().__init__()
            self.frequencies = nn.Parameter(torch.randn(3, 16), requires_grad=False)  # [3, 16]
            self.net = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

        def forward(self, x):
            z = 2 * math.pi * x @ self.frequencies  # [B, 16]
            return self.net(torch.cat([z.sin(), z.cos()], dim=1))  # [B, 2]


    def heat():
        return Heat().eval()


    class Tempered(nn.Module):
        """A learned temperature registered before the layers: the model's own parameter comes first."""

        def __init__(self):
            super().__init__()
            self.temperature = nn.Parameter(torch.tensor(1.5))
            self.inp, self.out = nn.Linear(5, 8), nn.Linear(8, 4)

        def forward(self, x):
            h = self.inp(x)
            return self.out(h * torch.sigmoid(self.temperature * h))


    def tempered():
        return Tempered().eval()


    class Cast(nn.Module):
        """float64 weights, and a forward that casts its input to them (as users write it)."""

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).double()

        def forward(self, x):
            return self.net(x.double())


    def cast():
        return Cast().eval()


    def plain():
        return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).eval()


    def sized(in_dim, hidden, out_dim):
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim)).eval()


    def two_sizes(in_dim, out_dim):
        return nn.Linear(in_dim, out_dim)


    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))

        def forward(self, x):
            with torch.no_grad():
                x = x * 2  # the mistake: the input leaves the graph
            return self.net(x)


    def no_grad():
        return Detached().eval()


    def double():
        return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double().eval()


    def half(in_dim, hidden, out_dim):
        return nn.Linear(in_dim, out_dim).half()


    class Loose(nn.Module):
        def __init__(self):
            super().__init__()
            self.mean = torch.zeros(3)  # not a buffer: .to() leaves it behind
            self.net = nn.Linear(3, 2)

        def forward(self, x):
            return self.net(x - self.mean)


    def loose():
        return Loose().eval()


    def scripted():
        return torch.jit.script(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).eval())


    class Autocast(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 2))

        def forward(self, x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.net(x).float()


    def autocast():
        return Autocast().eval()


    def compiled():
        return torch.compile(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).eval())


    def traced():
        return torch.jit.trace(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).eval(), torch.randn(4, 5))


    def lazy():
        return nn.Sequential(nn.LazyLinear(8), nn.LazyBatchNorm1d(), nn.Tanh(), nn.LazyLinear(2))


    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(3, 2)

        def forward(self, x):
            return self.net(x + 1e-3 * torch.randn_like(x))


    def noisy():
        return Noisy().eval()


    def dropout():
        return nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 2))


    def frozen():
        model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
        return model.requires_grad_(False)
    '''
)


@pytest.fixture
def user_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "user.py"
    path.write_text(USER_MODELS)
    return path


def plan(**given: str):
    return plan_run(Settings(strategies="grad_loop,vmap_jacrev", **given), here=False)


def test_a_factory_of_no_arguments_is_a_model_of_fixed_sizes(user_file):
    assert models.resolve(f"{user_file}:plain").fixed and not models.resolve(f"{user_file}:sized").fixed
    with pytest.raises(models.ModelError, match=r"takes \(in_dim, out_dim\); give it the three sizes"):
        models.resolve(f"{user_file}:two_sizes")


def test_the_default_grid_of_a_fixed_model_is_batch(user_file):
    run = plan(model=f"{user_file}:plain")
    assert run.grid.name == "batch"
    assert {c.sizes for c in run.cases} == {Sizes(b, FIXED_HIDDEN, 3, 2) for b in (1, 4, 16, 64, 256, 1024, 4096)}
    assert {c.mode for c in run.cases} == {"jacobian", "train"}
    assert sorted({c.sizes.batch for c in run.cases if c.compiled}) == [64, 1024]
    assert run.cases[0].shape_id == "user.plain-B1-in3-out2"
    assert any("fixed sizes: in 3 (from nn.Linear 0.in_features), out 2" in n for n in run.notes)


def test_a_sized_grid_collapses_onto_a_fixed_model(user_file):
    """GRID=quick sweeps hidden, in and out: a model of fixed sizes is measured at its own, over quick's batches."""
    run = plan(model=f"{user_file}:plain", grid="quick")
    assert {c.sizes.batch for c in run.cases} == {1, 4, 8, 32, 128, 512, 2048}  # 4: its [[also]] block
    assert {(c.sizes.hidden, c.sizes.in_dim, c.sizes.out_dim) for c in run.cases} == {(FIXED_HIDDEN, 3, 2)}
    assert all(set(c.sweeps) <= {"base", "batch"} for c in run.cases)


def test_input_width_from_in_dim_when_the_model_does_not_tell_it(user_file):
    with pytest.raises(models.ModelError, match=r"give it as IN_DIM=n, n the width of the \(B, n\) input") as refused:
        plan(model=f"{user_file}:heat")
    assert "frequencies comes before any nn.Linear" in str(refused.value)
    run = plan(model=f"{user_file}:heat", in_dim="3")
    assert {(c.sizes.in_dim, c.sizes.out_dim) for c in run.cases} == {(3, 2)}
    with pytest.raises(models.ModelError, match=r"raised RuntimeError"):
        plan(model=f"{user_file}:heat", in_dim="5")
    with pytest.raises(models.ModelError, match=r"IN_DIM='x': give the model's input width"):
        plan(model=f"{user_file}:heat", in_dim="x")


def test_a_parameter_of_one_number_does_not_hide_the_first_layers_width(user_file):
    run = plan(model=f"{user_file}:tempered")
    assert {(c.sizes.in_dim, c.sizes.out_dim) for c in run.cases} == {(5, 4)}
    assert any("in 5 (from nn.Linear inp.in_features)" in n for n in run.notes)


def test_a_float64_model_that_casts_its_input_is_probed_as_built(user_file):
    run = plan(model=f"{user_file}:cast")
    assert {(c.sizes.in_dim, c.sizes.out_dim) for c in run.cases} == {(5, 4)}


def test_in_dim_is_refused_for_a_sized_factory(user_file):
    with pytest.raises(BaseException, match=r"IN_DIM=3: model user.sized takes its sizes from the grid"):
        plan(model=f"{user_file}:sized", grid="smoke", in_dim="3")


def test_a_sized_factory_keeps_todays_grid(user_file):
    run = plan(model=f"{user_file}:sized", grid="smoke")
    assert run.grid.name == "smoke" and all(c.sizes.hidden == 16 for c in run.cases)


@pytest.mark.parametrize("how", ["absolute", "relative", "beside the grid"])
def test_a_grid_file_names_a_model_as_model_does(user_file, tmp_path, how):
    spec = {"absolute": f"{user_file}:plain", "relative": "user.py:plain", "beside the grid": "user.py:plain"}[how]
    folder = tmp_path / "grids" if how == "beside the grid" else tmp_path
    folder.mkdir(exist_ok=True)
    if how == "beside the grid":
        (folder / "user.py").write_text(USER_MODELS)
        user_file.unlink()
    (folder / "mine.toml").write_text(f'models = ["{spec}"]\nmodes = ["jacobian", "train"]\n[base]\nbatch = 16\n'
                                      "[sweep]\nbatch = [16, 256, 2048]\n")
    run = plan(grid=str(folder / "mine.toml"))
    assert {c.model for c in run.cases} == {"user.plain"} and set(run.model_defs) == {"user.plain"}
    assert {c.sizes.batch for c in run.cases} == {16, 256, 2048}


def test_a_grid_file_with_an_unknown_model_names_the_file_and_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_text('models = ["nosuch.py:factory"]\n[base]\nbatch = 4\n')
    with pytest.raises(grid.GridError, match=r"g.toml: models: MODEL=nosuch.py:factory: file nosuch.py not found"):
        plan(grid="g.toml")


@pytest.mark.parametrize("text, key", [
    ('[base]\nbatch = 4\n', "base: missing hidden, in_dim, out_dim, which model mlp takes from the grid"),
    ('description = 3\n[base]\nbatch = 4\n', "description: must be a string"),
    ('[base]\nbatch = 4\nhidden = 8\nin_dim = 3\nout_dim = 2\n[[also]]\nbase = { batch = 0 }\n',
     "also[1].base.batch: sizes must be positive integers"),
    ('colour = 1\n[base]\nbatch = 4\n', "colour: unknown key"),
])
def test_a_wrong_grid_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, monkeypatch, text, key):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_text(text)
    assert main(["plan", "--grid", "g.toml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "g.toml: " + key in err[0], err


def test_a_model_that_leaves_the_graph_is_one_line(user_file, capsys):
    assert main(["plan", "--model", f"{user_file}:no_grad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not depend on x for autograd" in err[0] and "torch.no_grad()" in err[0], err


def test_a_float64_model_is_measured_as_built_unless_dtype_says(user_file):
    run = plan(model=f"{user_file}:double")
    assert {c.dtype for c in run.cases} == {"float64"}
    assert any("built in float64 and the grid says float32: measured in float64" in n for n in run.notes)
    half = plan(model=f"{user_file}:half", grid="smoke")  # a sized factory too (it was refused before)
    assert {c.dtype for c in half.cases} == {"float16"}
    cast = plan(model=f"{user_file}:double", dtype="float32")
    assert {c.dtype for c in cast.cases} == {"float32"}
    assert any("cast to float32, as DTYPE= says" in n for n in cast.notes)


def test_a_tensor_kept_outside_buffers_is_noted(user_file):
    run = plan(model=f"{user_file}:loose")
    assert any("keeps tensor(s) mean outside its parameters and buffers" in n for n in run.notes)


def test_a_torchscript_model_is_noted_and_first_called_under_no_grad_in_a_fresh_process(user_file, monkeypatch):
    """A TorchScript module's speed depends on its first call (a scripted MLP's autograd calls: 70 µs after a first
    call under no_grad, 122 µs after a first call with autograd): the run says so, and a fresh process that checks the
    run's numbers calls the model first as the run does, under no_grad (each shape's check of model(x))."""
    from bench.harness import fresh

    run = plan(model=f"{user_file}:scripted", in_dim="3")
    assert any("is a TorchScript module: its speed depends on how it was first called" in n for n in run.notes)
    checked = []
    monkeypatch.setattr(models, "run_problem", lambda model, x, out_dim: checked.append((model, x)))
    job = {"model": f"{user_file}:scripted", "name": "user.scripted", "sizes": [4, FIXED_HIDDEN, 3, 2],
           "device": "cpu", "dtype": "float32", "threads": 0}
    built = fresh._build(job)
    assert checked == [built]  # the model's first call: the run's check, model(x) under no_grad


def test_a_model_computing_below_float32_inside_is_noted(user_file):
    run = plan(model=f"{user_file}:autocast")
    noted = r"computes below float32 inside \(autocast, or a cast in forward\): its float32 output is [\d.]+% off"
    assert any(re.search(noted + r" its float64 copy's, .* validated at b?float16's tolerance", n) for n in run.notes)
    assert not any("computes below float32" in n for n in plan(model=f"{user_file}:plain").notes)


def test_ids_leave_out_the_hidden_width_of_a_fixed_model():
    assert shape_id("heat", "float32", Sizes(16, FIXED_HIDDEN, 3, 2)) == "heat-B16-in3-out2"
    assert Sizes(16, 32, 3, 2).id == "B16-H32-in3-out2"


@pytest.mark.slow
def test_a_fixed_model_runs_end_to_end(user_file, tmp_path):
    """python -m bench run: hidden recorded as 0, the report opens, recommend reads it (hidden left out)."""
    (tmp_path / "tiny.toml").write_text("[base]\nbatch = 4\n[sweep]\nbatch = [1, 4]\n[budget]\ntarget_s = 0.01\n")
    proc = run_bench(tmp_path, "run", "--grid", "tiny.toml", "--model", "user.py:plain", "--run", "own",
                     "--strategies", "grad_loop,vmap_jacrev", "--processes", "1", "--fidelity", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = [json.loads(line) for line in (tmp_path / "results" / "own" / "cases.jsonl").read_text().splitlines()]
    assert {c["hidden"] for c in cases} == {FIXED_HIDDEN} and {c["status"] for c in cases} == {"ok"}
    assert "jacobench report" in (tmp_path / "results" / "own" / "report.md").read_text()
    answer = run_bench(tmp_path, "recommend", "--results", "results/own", "--batch", "4", "--in-dim", "3",
                       "--out-dim", "2")
    assert answer.returncode == 0 and ("grad_loop" in answer.stdout or "vmap_jacrev" in answer.stdout), answer.stderr


def test_a_fixed_model_with_the_wrong_output_is_told_what_to_return(tmp_path):
    """A scalar per sample returned as (B,) is out = 1 squeezed; a tuple is not a wrong input width."""
    path = tmp_path / "heads.py"
    path.write_text("import torch\n"
                    "class Energy(torch.nn.Linear):\n    def forward(self, x):\n"
                    "        return super().forward(x).squeeze(-1)\n"
                    "class Pair(torch.nn.Linear):\n    def forward(self, x):\n        return super().forward(x), x\n"
                    "def energy():\n    return Energy(3, 1)\n"
                    "def pair():\n    return Pair(3, 2)\n")
    with pytest.raises(models.ModelError, match=r"to \(2,\), .*out = 1: return it as \(B, 1\), e.g. y.unsqueeze"):
        plan(model=f"{path}:energy")
    with pytest.raises(models.ModelError, match=r"returned a tuple, expected a Tensor \(B, out\)$"):
        plan(model=f"{path}:pair")


def test_a_model_file_imports_its_sibling_modules(tmp_path: Path):
    """A user's model file that imports a module beside it (`from layers import Block`), as it would when run as a
    script, resolves; the folder goes after the suite's own packages on sys.path."""
    (tmp_path / "layers.py").write_text("from torch import nn\n\n\nclass Block(nn.Linear):\n    pass\n")
    (tmp_path / "net.py").write_text("from layers import Block\n\n\ndef net():\n    return Block(3, 2)\n")
    model_def = models.resolve(f"{tmp_path / 'net.py'}:net")
    assert model_def.fixed and type(model_def.factory()).__name__ == "Block"
    assert sys.path.index(str(tmp_path)) > sys.path.index(str(Path(models.__file__).parents[2]))


def test_a_torch_compiled_model_is_measured_as_its_eager_module(user_file):
    """A factory returning torch.compile(model): every case was an error (its compile failed in the forked workers);
    the module it wraps is measured, torch.compile by the *_compiled strategies, and a note says so."""
    model_def = models.resolve(f"{user_file}:compiled")
    assert type(models.instantiate(model_def, Sizes(2, FIXED_HIDDEN, 3, 2))).__name__ == "Sequential"
    assert models.is_compiled_module(models.instantiate(model_def, Sizes(2, FIXED_HIDDEN, 3, 2), keep_compiled=True))
    run = plan(model=f"{user_file}:compiled")
    assert any("is a torch.compile'd module: it is measured as the module it wraps" in n for n in run.notes)


def test_a_model_with_lazy_layers_is_sized_by_in_dim_before_anything_reads_it(user_file):
    """nn.LazyLinear has no sizes until its first call: the run asked the model for its width and crashed on the
    uninitialized parameter. Its width is asked for; given, its layers are sized once, in eval mode (a BatchNorm's
    running statistics stay as built), identically on every build, and the model keeps the mode it was built in."""
    with pytest.raises(models.ModelError, match=r"layer 0 \(LazyLinear\) is lazy: .*give it as IN_DIM=n"):
        plan(model=f"{user_file}:lazy")
    run = plan(model=f"{user_file}:lazy", in_dim="3")
    assert {(c.sizes.in_dim, c.sizes.out_dim) for c in run.cases} == {(3, 2)}
    model_def, sizes = models.resolve(f"{user_file}:lazy"), Sizes(16, FIXED_HIDDEN, 3, 2)
    (model, x), (again, _) = models.build(model_def, sizes, "cpu", torch.float32), models.build(model_def, sizes, "cpu",
                                                                                              torch.float32)
    assert not models.lazy_layers(model) and model[0].weight.shape == (8, 3) and model.training
    assert torch.equal(model[0].weight, again[0].weight) and torch.equal(model[1].running_mean, torch.zeros(8))
    assert model(x).shape == (16, 2)


@pytest.mark.parametrize("factory, why", [("noisy", "a random op in its forward"),
                                          ("dropout", "Dropout in training mode, as the factory returned the model")])
def test_a_random_model_is_refused_in_one_line_before_the_run(user_file, factory, why):
    """Every case of it ended in error with this message (208 of 208, 13 s), and its precision probe read the noise
    as a model computing below float32 ("2.07% off its float64 copy's": a wrong note)."""
    with pytest.raises(models.ModelError, match=rf"not deterministic: .*\({why}\); no reference can validate it"):
        plan(model=f"{user_file}:{factory}")


def test_a_model_with_nothing_to_train_is_measured_without_train_mode(user_file):
    """requires_grad=False on every parameter (a frozen network): its train cases all ended in error ("`inputs`
    argument to `grad()` cannot be empty"); they are left out with a note, and MODE=train alone is refused."""
    run = plan(model=f"{user_file}:frozen")
    assert run.cases and {c.mode for c in run.cases} == {"jacobian"}
    assert any("has no trainable parameters" in n and "train cases are left out" in n for n in run.notes)
    with pytest.raises(models.ModelError, match=r"no trainable parameters .* MODE=jacobian measures it"):
        plan(model=f"{user_file}:frozen", mode="train")


@pytest.mark.parametrize("factory, width", [("scripted", 3), ("traced", 5)])
def test_a_torchscript_model_tells_its_input_width_by_its_first_linear(user_file, factory, width):
    """Scripted or traced, an nn.Linear becomes a ScriptModule that is no nn.Linear: the run asked for IN_DIM."""
    run = plan(model=f"{user_file}:{factory}")
    assert {(c.sizes.in_dim, c.sizes.out_dim) for c in run.cases} == {(width, 2)}
    assert any(f"in {width} (from TorchScript nn.Linear 0.weight)" in n for n in run.notes)
