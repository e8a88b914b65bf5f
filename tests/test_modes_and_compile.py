"""Training through the Jacobian (MODE=train) and compiled strategies: validated like the rest, compile time apart,
a recompile while timing is an error, a strategy whose J is right but whose graph is wrong is caught in train mode."""

from __future__ import annotations

import json
import textwrap
import warnings

import pandas as pd
import pytest
import torch

from bench.harness import compiling, outcome
from bench.report.plots import pareto_front
from bench.spec import grid
from bench.spec.grid import GridError
from bench.spec.plan import plan_run
from bench.spec.settings import Settings
from strategies import REGISTRY
from tests.helpers import ONE_PROCESS, run_bench

HALF_GRAPH = textwrap.dedent(
    '''
    """J with the right value but half its gradient: only training through it can tell."""
    import torch

    import strategies
    from strategies import Strategy


    def _half(model, x, create_graph=False):
        jac = strategies.REGISTRY["grad_loop"](model, x, create_graph=create_graph)
        return jac.detach() + 0.5 * (jac - jac.detach()) if create_graph else jac


    half = Strategy(name="half_graph", fn=_half, independent_samples=True, differentiable=True, summary="half graph")
    '''
)
GRID = """
modes = ["jacobian", "train"]
[base]
batch = 8
hidden = 16
in_dim = 3
out_dim = 2
[budget]
target_s = 0.02
"""


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    site = root / "site"
    site.mkdir()
    (site / "half.py").write_text(HALF_GRAPH)
    (site / "half-0.1.dist-info").mkdir()
    (site / "half-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: half\nVersion: 0.1\n")
    (site / "half-0.1.dist-info" / "entry_points.txt").write_text("[jacobench.strategies]\nhalf_graph = half:half\n")
    (root / "g.toml").write_text(GRID)
    proc = run_bench(root, "run", "--grid", "g.toml", "--run", "t", "--strategies",
                     "grad_summed,grad_batched,vmap_jacrev,linearize_batched,analytic,half_graph", *ONE_PROCESS,
                     site=site)
    assert proc.returncode == 0, proc.stderr
    return root / "results" / "t"


@pytest.mark.slow
def test_train_mode_validates_the_parameter_gradient(train_run):
    s = pd.read_csv(train_run / "summary.csv")
    status = {(r.strategy, r.mode): r.status for r in s.itertuples()}
    assert status[("half_graph", "jacobian")] == "ok"  # its J is right...
    assert status[("half_graph", "train")] == "wrong"  # ...its graph is not
    assert "parameter gradient of the penalty" in s[(s.strategy == "half_graph") & (s["mode"] == "train")].iloc[0][
        "message"]
    for name in ("grad_batched", "vmap_jacrev", "analytic", "grad_summed"):
        assert status[(name, "train")] == "ok", name
    assert status[("linearize_batched", "train")] == "unsupported"
    assert status[("linearize_batched", "jacobian")] == "ok"


@pytest.mark.slow
def test_train_mode_is_its_own_setting_in_every_file(train_run):
    s = pd.read_csv(train_run / "summary.csv")
    assert set(s["mode"]) == {"jacobian", "train"}
    records = [json.loads(line) for line in (train_run / "cases.jsonl").read_text().splitlines()]
    assert all(r["case_id"].endswith("-train") == (r["mode"] == "train") for r in records)
    playoffs = [json.loads(line) for line in (train_run / "verdicts.jsonl").read_text().splitlines()]
    assert {p["mode"] for p in playoffs} == {"jacobian", "train"}
    report = (train_run / "report.md").read_text()
    assert "· train (J with its graph" in report and "## Training through the Jacobian" in report
    training = pd.read_csv(train_run / "tables" / "training.csv")
    assert len(training) == 1 and training["fastest to train through J"].iloc[0] != "none valid"


def test_grid_modes_and_compiled_blocks(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GRID.replace("modes = [", "compiled = true\nmodes = ["))
    cases = grid.expand(grid.load_grid(str(path)))
    assert [(c.mode, c.compiled) for c in cases] == [("jacobian", True), ("train", True)]
    assert cases[1].shape_id == "mlp-B8-H16-in3-out2-train"
    assert [c.mode for c in grid.expand(grid.load_grid(str(path)), modes=("train",))] == ["train"]
    path.write_text(GRID.replace('"train"', '"training"'))
    with pytest.raises(GridError, match="modes: unknown value 'training'"):
        grid.load_grid(str(path))
    path.write_text("compiled = 1\n" + GRID)
    with pytest.raises(GridError, match="compiled: must be true or false"):
        grid.load_grid(str(path))


def test_compiled_strategies_run_only_where_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_text(GRID.replace('modes = ["jacobian", "train"]', "").replace(
        "[budget]", "[[also]]\ncompiled = true\nbase = { batch = 16 }\n[budget]"))
    plan = plan_run(Settings(grid="g.toml"))
    small, large = plan.cases
    assert not any(REGISTRY[n].compiled for n in plan.strategies_for(small))
    assert {"vmap_jacrev_compiled", "vmap_jacrev"} <= set(plan.strategies_for(large))
    named = plan_run(Settings(grid="g.toml", strategies="vmap_jacrev_compiled"))
    assert named.strategies_for(small) == ["vmap_jacrev_compiled"]  # named in STRATEGIES=: everywhere


@pytest.mark.slow
def test_a_compiled_case_times_its_compiling_apart(tmp_path):
    (tmp_path / "g.toml").write_text(GRID.replace('modes = ["jacobian", "train"]', ""))
    proc = run_bench(tmp_path, "run", "--grid", "g.toml", "--run", "c", "--no-report", "--strategies",
                     "vmap_jacrev,vmap_jacrev_compiled,analytic", *ONE_PROCESS)
    assert proc.returncode == 0, proc.stderr
    s = pd.read_csv(tmp_path / "results" / "c" / "summary.csv").set_index("strategy")
    assert (s["status"] == "ok").all()
    assert s.loc["vmap_jacrev_compiled", "compiled"] and s.loc["vmap_jacrev_compiled", "setup_s"] > 0
    assert s.loc["vmap_jacrev_compiled", "setup_s"] > 10 * s.loc["vmap_jacrev_compiled", "time_median_s"]
    assert pd.isna(s.loc["vmap_jacrev", "setup_s"])
    env = json.loads((tmp_path / "results" / "c" / "env.json").read_text())
    assert set(env["inductor_cache"]) == {"dir", "warm"}


@pytest.mark.slow
def test_a_recompile_while_timing_is_an_error():
    fn = torch.compile(lambda t: torch.tanh(t) * 2, dynamic=False)
    compiling.reset()
    fn(torch.ones(3))
    with compiling.no_recompile():
        fn(torch.ones(3))  # cached: fine
    with pytest.raises(compiling.Recompiled, match="recompiled while timing"), compiling.no_recompile():
        fn(torch.ones(5))
    compiling.reset()


@pytest.mark.slow
def test_a_graph_break_is_named_in_the_case():
    """A compiled strategy on a model with data-dependent control flow runs partly eagerly: the graph break's reason
    is one of the first call's warnings (the case's record, the report's 'warned:' line), not log lines in the run's
    output."""
    def branchy(t):
        return torch.tanh(t) if t.sum().item() > 0 else torch.relu(t)

    compiling.reset()
    with compiling.graph_breaks() as breaks:
        torch.compile(branchy, dynamic=False)(torch.ones(3))
    assert breaks and all(b.startswith(compiling.GRAPH_BREAK) for b in breaks)
    assert any("item()" in b for b in breaks)
    with compiling.graph_breaks(enabled=False) as none:
        torch.compile(branchy, dynamic=False)(torch.ones(4))
    assert none == []
    compiling.reset()


def test_warnings_of_a_case_are_kept_without_deprecation_noise():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("There is a performance drop because we have not yet implemented the batching rule for x",
                      UserWarning, stacklevel=1)
        warnings.warn("old API", FutureWarning, stacklevel=1)
        warnings.warn("There is a performance drop because we have not yet implemented the batching rule for x",
                      UserWarning, stacklevel=1)
    assert outcome.case_warnings(caught) == [
        "There is a performance drop because we have not yet implemented the batching rule for x"]


def test_pareto_front():
    points = pd.DataFrame({"strategy": list("abcd"), "time_median_s": [1.0, 2.0, 3.0, 4.0],
                           "peak_memory_bytes": [50, 60, 10, 5]})
    assert pareto_front(points)["strategy"].tolist() == ["a", "c", "d"]  # b is slower and heavier than a


def test_compiled_setting_overrides_the_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_text("compiled = true\n" + GRID)
    case = plan_run(Settings(grid="g.toml")).cases[0]
    assert any(REGISTRY[n].compiled for n in plan_run(Settings(grid="g.toml")).strategies_for(case))
    assert not any(REGISTRY[n].compiled for n in plan_run(Settings(grid="g.toml", compiled="0")).strategies_for(case))
    (tmp_path / "g.toml").write_text(GRID)
    assert any(REGISTRY[n].compiled for n in plan_run(Settings(grid="g.toml", compiled="1")).strategies_for(case))


@pytest.mark.parametrize("compiled,calls", [(False, 2), (True, 1)])
def test_a_timeout_is_tried_again_only_under_a_short_limit(tmp_path, monkeypatch, compiled, calls):
    """A call past the 2 s time budget is tried once more (a slow moment of the machine lasts seconds); a compile
    past the 300 s compile budget is not (a user's attention model ran past it twice: 611 s of an 800 s run)."""
    from types import SimpleNamespace

    from bench.harness import measure, runner

    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_text(GRID)
    plan = plan_run(Settings(grid="g.toml"))
    assert (plan.grid.budget.compile_s >= runner.RETRY_BELOW_S) and plan.time_budget_s < runner.RETRY_BELOW_S
    tried = []

    def past_its_limit(model, x):
        tried.append(True)
        raise measure.CaseTimeout("one call", 0.0)

    shape_runner = runner.ShapeRunner(plan, measure.Phases())
    strategy = REGISTRY["vmap_jacrev_compiled" if compiled else "vmap_jacrev"]
    with pytest.raises(measure.CaseTimeout):
        shape_runner._first_call(strategy, past_its_limit, SimpleNamespace(model=None, x=None, device="cpu"))
    assert len(tried) == calls
