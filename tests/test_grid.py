"""Grid presets: every shipped preset loads, expansion is right, and each kind of bad file names file and key."""

from __future__ import annotations

import pytest

from bench.spec import grid
from bench.spec.grid import GridError

BASE = "[base]\nbatch = 8\nhidden = 16\nin_dim = 3\nout_dim = 2\n"


def write(tmp_path, text: str):
    path = tmp_path / "g.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", ["smoke", "quick", "default", "full", "seed", "zoo"])
def test_presets_load_and_expand(name):
    g = grid.load_grid(name)
    cases = grid.expand(g)
    assert cases, name
    assert len({(c.model, c.dtype, c.sizes, c.mode) for c in cases}) == len(cases)
    first = [c for c in cases if (c.model, c.dtype, c.mode) == (cases[0].model, cases[0].dtype, cases[0].mode)]
    assert [c.size for c in first] == sorted(c.size for c in first)  # smallest first: a timeout skips larger ones


def test_default_covers_the_promised_axes():
    cases = grid.expand(grid.load_grid("default"))
    mlp = [c for c in cases if c.model == "mlp" and c.dtype == "float32"]
    assert {c.sizes.batch for c in mlp if "batch" in c.sweeps} >= {1, 4096}
    assert {c.sizes.in_dim for c in mlp if "in_dim" in c.sweeps} >= {1, 256}
    assert {c.sizes.out_dim for c in mlp if "out_dim" in c.sweeps} >= {1, 256}
    assert len([c for c in mlp if "plane" in c.sweeps]) == 25
    assert {c.model for c in cases} == {"mlp", "deep_mlp", "mlp_batchnorm"}
    assert {c.dtype for c in cases} == {"float32", "float64"}


def test_expand_tags_sweeps_and_ids(tmp_path):
    text = BASE + "[sweep]\nbatch = [1, 8, 64]\n[plane]\nin_dim = [1, 3]\nout_dim = [2, 4]\n"
    g = grid.load_grid(write(tmp_path, text))
    cases = {c.shape_id: c for c in grid.expand(g)}
    assert cases["mlp-B8-H16-in3-out2"].sweeps == ("base", "batch", "plane")
    assert cases["mlp-B64-H16-in3-out2"].sweeps == ("batch",)
    assert cases["mlp-B8-H16-in1-out4"].sweeps == ("plane",)
    assert len(cases) == 2 + 4


def test_also_blocks_inherit_base_and_models_override(tmp_path):
    text = BASE + '[[also]]\nmodels = ["deep_mlp"]\ndtypes = ["float64"]\nbase = { batch = 2 }\n'
    g = grid.load_grid(write(tmp_path, text))
    cases = grid.expand(g)
    assert {c.shape_id for c in cases} == {"mlp-B8-H16-in3-out2", "deep_mlp-B2-H16-in3-out2-float64"}
    assert {c.model for c in grid.expand(g, ("mine",))} == {"mine"}


@pytest.mark.parametrize(
    "text,key",
    [
        ("colour = 1\n" + BASE, "colour"),
        (BASE + "[sweep]\nbatch = []\n", "sweep.batch"),
        (BASE + "[sweep]\nbatch = [0, 4]\n", "sweep.batch"),
        (BASE + "[sweep]\nhidden = [-3]\n", "sweep.hidden"),
        (BASE + "[sweep]\nin_dim = [1.5]\n", "sweep.in_dim"),
        (BASE + "[sweep]\nwidth = [2]\n", "sweep.width"),
        (BASE + "[sweep]\nbatch = 4\n", "sweep.batch"),
        (BASE.replace("batch = 8", "batch = true"), "base.batch"),
        (BASE + "colour = 1\n", "base.colour"),
        (BASE.replace("batch = 8\n", ""), "base"),  # hidden, in, out may be left out (fixed sizes), not batch
        ("models = ['mlp']\n", "base"),
        ("models = []\n" + BASE, "models"),
        ("dtypes = ['float8']\n" + BASE, "dtypes"),
        (BASE + "[plane]\nin_dim = [1]\n", "plane"),
        (BASE + "[budget]\ntime_s = 0\n", "budget.time_s"),
        (BASE + "[budget]\npatience = 3\n", "budget.patience"),
        (BASE + "[[also]]\nsweep = { batch = [0] }\n", "also[1].sweep.batch"),
        (BASE + "[[also]]\nbudget = { time_s = 1 }\n", "also[1].budget"),
    ],
)
def test_bad_grid_names_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(GridError) as info:
        grid.load_grid(path)
    message = str(info.value)
    assert path in message and f": {key}:" in message


def test_not_toml_and_unknown_names(tmp_path):
    with pytest.raises(GridError, match="not valid TOML"):
        grid.load_grid(write(tmp_path, "[base\nbatch = "))
    with pytest.raises(GridError, match="unknown grid 'nope'.*smoke"):
        grid.load_grid("nope")
    with pytest.raises(GridError, match="not found"):
        grid.load_grid(str(tmp_path / "missing.toml"))


def test_threads_and_published_results(tmp_path):
    published = ('[[published]]\nsource = "a tutorial"\nconditions = "1 thread"\nmodel = "mlp"\ndtype = "float32"\n'
                 'batch = 8\nhidden = 16\nin_dim = 3\nout_dim = 2\nslower = "vmap_jacrev"\nfaster = "vmap_jacfwd"\n'
                 'ratio = 9\n')
    g = grid.load_grid(write(tmp_path, "threads = 1\n" + BASE + published))
    assert g.threads == 1 and g.published[0]["ratio"] == 9.0 and g.as_dict()["published"][0]["slower"] == "vmap_jacrev"
    with pytest.raises(GridError, match=r"published\[1\]\.ratio: missing or not a float"):
        grid.load_grid(write(tmp_path, BASE + published.replace("ratio = 9\n", "")))
    with pytest.raises(GridError, match="threads: must be a positive integer"):
        grid.load_grid(write(tmp_path, "threads = 0\n" + BASE))
    assert grid.load_grid("published").threads == 1 and len(grid.load_grid("published").published) == 2
