"""autotune: a valid pick (never a sum over outputs, jacobian_diagonal on coupled samples), the cache (hits without
timing, a corrupt file), one clear error when nothing is valid, train mode with a graph, a pick from a measured run.

Small models and budgets; no assertion on a time.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import statistics
import time
import warnings
from pathlib import Path

import pytest
import torch
from run_fixtures import record
from torch import nn

import strategies
from bench import autotune, stats
from bench.harness import timing
from bench.harness.reference import flat_gradient, reference
from bench.harness.runner import RETIME_MARGIN
from bench.results import append_case, append_line, write_json
from bench.schema import Sizes, VerdictRecord, fmt_margin
from bench.spec import models
from bench.tuning import cache as tunecache
from bench.tuning import candidates
from bench.tuning import race as racing
from bench.tuning.autotune import AutotuneError
from bench.tuning.pick import Pick

BUDGET = 0.2


@pytest.fixture(autouse=True)
def fresh_cache_memory():
    tunecache.forget()
    yield
    tunecache.forget()


@pytest.fixture
def timed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every timing autotune does, by name: the single call after validation, and the race."""
    calls: list[str] = []
    one_call, race = candidates.one_call, racing.race

    def counted_one_call(call):
        calls.append("one_call")
        return one_call(call)

    def counted_race(*args, **kwargs):
        calls.append("race")
        return race(*args, **kwargs)

    monkeypatch.setattr(candidates, "one_call", counted_one_call)
    monkeypatch.setattr(racing, "race", counted_race)
    return calls


def mlp(in_dim: int = 3, hidden: int = 8, out_dim: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim)).eval()


def inputs(batch: int = 8, in_dim: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, in_dim, generator=torch.Generator().manual_seed(seed))  # [B, in]


def assert_is_the_jacobian(jac: torch.Tensor, model: nn.Module, x: torch.Tensor) -> None:
    expected = reference(model, x).jacobian  # [B, out, in] float64
    assert tuple(jac.shape) == tuple(expected.shape)
    torch.testing.assert_close(jac.detach().double(), expected, rtol=1e-4, atol=1e-5)


def test_picks_a_valid_strategy_and_never_the_output_sum_at_out_above_one(timed):
    model, x = mlp(), inputs()
    tuned = autotune(model, x, budget_s=BUDGET, cache=False)
    assert tuned.strategy in strategies.REGISTRY and tuned.strategy != "grad_summed"
    assert "J.sum(1)" in tuned.pick.refused["grad_summed"]
    assert tuned.verdict in ("winner", "tie")
    assert set(tuned.tied_with) <= set(tuned.pick.contenders) <= set(tuned.pick.raced)
    assert tuned.strategy in tuned.times and set(tuned.times) <= set(tuned.pick.first)
    assert "analytic" not in tuned.times, "the closed form races only when named, as in a run's verdicts"
    assert all(strategies.REGISTRY[n].quantity == "jacobian" for n in [*tuned.pick.refused, *tuned.times]), \
        "second-order strategies compute something else: never candidates"
    assert_is_the_jacobian(tuned(x), model, x)
    text = tuned.explain()
    assert f"pick: {tuned.strategy}" in text and "grad_summed: returns J.sum(1)" in text
    assert f'strategies.REGISTRY["{tuned.strategy}"](model, x)' in text
    assert "one_call" in timed


def test_the_race_is_a_runs_timing_and_its_verdict_holds_for_the_rounds(monkeypatch):
    """The candidates within RETIME_MARGIN of the fastest single call are raced; the pick is the contender with the
    lowest median, each other contender's ratio interval is widened by the between-process sd one process cannot
    see, and the verdict is the tie rule on those intervals."""
    single_calls = iter([1e-4, 1.2e-4, 1e-2])  # in the order of strategies=: the last one over ×2.5 the fastest
    monkeypatch.setattr(candidates, "one_call", lambda call: next(single_calls))
    model, x = mlp(), inputs()
    tuned = autotune(model, x, strategies=["vmap_jacrev", "jacobian_sum", "jacobian_diagonal"], budget_s=BUDGET,
                     cache=False)
    pick = tuned.pick
    assert pick.raced == ["vmap_jacrev", "jacobian_sum"] and set(pick.contenders) <= set(pick.raced)
    assert all(pick.kept[n] >= timing.MIN_ROUNDS_TO_DROP for n in pick.raced)
    assert tuned.strategy == min(pick.contenders, key=pick.times.__getitem__)
    assert set(pick.ratios) == set(pick.contenders) - {tuned.strategy}
    sd = racing.BETWEEN_PROCESS_SD_RATIO["eager"]
    for ratio, low, high in pick.ratios.values():
        assert low < ratio < high and math.log(high / low) >= 2 * stats.Z * sd * 0.999  # never narrower than that
    tied = sorted((n for n, (_, low, _) in pick.ratios.items() if low <= stats.TIE_MARGIN), key=pick.ratios.get)
    assert tuned.tied_with == tied and tuned.verdict == ("tie" if tied else "winner")
    assert tuned.times["jacobian_diagonal"] == 1e-2 and "jacobian_diagonal" not in pick.kept
    text = tuned.explain()
    assert f"not raced (over {fmt_margin(RETIME_MARGIN)} the fastest single call): jacobian_diagonal" in text
    assert "rests on this one process" in text
    assert_is_the_jacobian(tuned(x), model, x)


def entry(name: str, ratio: float, contender: bool = True, rounds: int = 30) -> timing.Entry:
    """A raced candidate whose rounds are `ratio` times a common series with 1% noise, paired by sweep."""
    base = [1e-3 * (1 + 0.01 * math.sin(7 * r)) for r in range(rounds)]
    e = timing.Entry(name, lambda: None, 1e-3 * ratio)
    e.rounds, e.round_sweeps, e.contender = [t * ratio for t in base], list(range(rounds)), contender
    return e


def test_a_gap_one_process_cannot_tell_from_process_noise_is_a_tie_and_a_large_one_wins():
    """12% in every round of one process is within what a second process may see (sd 6.8% per ratio): a tie. 40% is
    not. A screened-out candidate (no contender) is never in the verdict."""
    close = racing.decide([entry("vmap_jacrev", 1.0), entry("jacobian_sum", 1.12), entry("grad_loop", 3.0, False)])
    assert (close.best, close.verdict, close.tied_with) == ("vmap_jacrev", "tie", ["jacobian_sum"])
    assert set(close.ratios) == {"jacobian_sum"} and close.ratios["jacobian_sum"][0] == pytest.approx(1.12)
    clear = racing.decide([entry("jacobian_sum", 1.4), entry("vmap_jacrev", 1.0)])
    assert (clear.best, clear.verdict, clear.tied_with) == ("vmap_jacrev", "winner", [])
    assert clear.ratios["jacobian_sum"][1] > stats.TIE_MARGIN


def test_the_pick_follows_the_race_not_the_first_calls(monkeypatch):
    """The single calls said jacobian_sum; the race's rounds say vmap_jacrev, 40% faster: the pick is vmap_jacrev,
    with the race's medians and rounds."""
    def time_shape(entries, window_s, *args, **kwargs):
        for e in entries:
            e.rounds, e.round_sweeps = entry(e.name, ratios[e.name]).rounds, list(range(30))
        return timing.ShapeTiming(entries, sweeps=30, blocks=3)

    ratios = {"jacobian_sum": 1.4, "vmap_jacrev": 1.0}
    monkeypatch.setattr(timing, "time_shape", time_shape)
    pick = Pick(strategy="jacobian_sum", verdict="winner", times={"jacobian_sum": 1e-4, "vmap_jacrev": 2e-4})
    racing.raced(pick, [timing.Entry(n, lambda: None, pick.times[n]) for n in ratios], 1.0)
    assert (pick.strategy, pick.verdict, pick.tied_with) == ("vmap_jacrev", "winner", [])
    assert pick.times == {n: pytest.approx(statistics.median(entry(n, r).rounds)) for n, r in ratios.items()}
    assert pick.kept == {"jacobian_sum": 30, "vmap_jacrev": 30} and pick.rounds == 30
    assert pick.contenders == ["vmap_jacrev", "jacobian_sum"] and pick.ratios["jacobian_sum"][0] == pytest.approx(1.4)


def test_at_out_one_the_output_sum_is_the_jacobian():
    model, x = mlp(out_dim=1), inputs()
    tuned = autotune(model, x, strategies=["grad_summed"], budget_s=BUDGET, cache=False)
    assert tuned.strategy == "grad_summed" and not tuned.pick.refused
    assert_is_the_jacobian(tuned(x), model, x)  # J.sum(1) as (B, 1, in)


def batchnorm_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2)).train()


def test_a_batch_coupled_model_gets_jacobian_diagonal_and_keeps_its_statistics():
    model, x = batchnorm_model(), inputs()
    running = model[1].running_mean.clone()
    tuned = autotune(model, x, budget_s=BUDGET, cache=False)
    assert tuned.strategy == "jacobian_diagonal"
    assert "couples them" in tuned.pick.refused["vmap_jacrev"]
    assert torch.equal(model[1].running_mean, running), "tuning must not move BatchNorm's running statistics"
    assert_is_the_jacobian(tuned(x), model, x)


def test_a_batch_coupled_model_without_jacobian_diagonal_is_a_clear_error():
    names = [n for n in strategies.names("jacobian") if n not in ("jacobian_diagonal", "analytic")
             and not strategies.REGISTRY[n].compiled]
    with pytest.raises(AutotuneError) as caught:
        autotune(batchnorm_model(), inputs(), strategies=names, budget_s=BUDGET, cache=False)
    message = str(caught.value)
    assert message.startswith("no strategy gives a valid Jacobian")
    assert "couples them" in message and "jacobian_diagonal" in message


def test_a_second_call_with_the_same_structure_and_shape_hits_the_cache_without_timing(tmp_path, timed):
    x = inputs()
    first = autotune(mlp(seed=0), x, budget_s=BUDGET, cache=tmp_path)
    assert first.pick.source == "tuned" and timed
    timed.clear()
    again = autotune(mlp(seed=5), inputs(seed=9), budget_s=BUDGET, cache=tmp_path)  # other values, same structure
    assert again.pick.source == "cache" and not timed
    assert (again.strategy, again.verdict, again.times) == (first.strategy, first.verdict, first.times)
    tunecache.forget()  # a new process: the file alone
    from_disk = autotune(mlp(seed=7), x, budget_s=BUDGET, cache=tmp_path)
    assert from_disk.pick.source == "cache" and not timed
    assert "from the cache" in from_disk.explain() and str(tmp_path) in from_disk.explain()


def test_another_shape_or_structure_tunes_again(tmp_path, timed):
    model = mlp()
    tuned = autotune(model, inputs(batch=8), budget_s=BUDGET, cache=tmp_path)
    timed.clear()
    jac = tuned(inputs(batch=5))  # a new batch size: tuned once for it, then remembered
    assert timed and tuned.pick.source == "tuned"
    assert_is_the_jacobian(jac, model, inputs(batch=5))
    timed.clear()
    tuned(inputs(batch=5))
    tuned(inputs(batch=8))
    assert not timed
    autotune(mlp(hidden=9), inputs(batch=8), budget_s=BUDGET, cache=tmp_path)  # another parameter shape
    assert timed
    entries = json.loads((tmp_path / tunecache.FILE_NAME).read_text())["entries"]
    assert len(entries) == 3
    assert {tuple(e["key"]["input"]) for e in entries.values()} == {(8, 3), (5, 3)}


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "jacobench-autotune", "version": 99,
                                                                "entries": {}}), json.dumps([1, 2])])
def test_a_corrupt_or_foreign_cache_file_is_ignored_with_one_warning(tmp_path, content):
    path = tmp_path / tunecache.FILE_NAME
    path.write_text(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned = autotune(mlp(), inputs(), budget_s=BUDGET, cache=tmp_path)
        autotune(mlp(), inputs(batch=4), budget_s=BUDGET, cache=tmp_path)
    ours = [w for w in caught if "autotune cache" in str(w.message)]
    assert len(ours) == 1 and "ignoring" in str(ours[0].message)
    assert tuned.strategy in strategies.REGISTRY
    data = json.loads(path.read_text())  # replaced by a valid file holding both picks
    assert data["format"] == tunecache.FORMAT and data["version"] == tunecache.VERSION and len(data["entries"]) == 2
    assert not list(tmp_path.glob(".*.tmp")), "writes are atomic"


def test_an_unusable_entry_in_a_valid_cache_file_is_tuned_again(tmp_path, timed):
    model, x = mlp(), inputs()
    autotune(model, x, budget_s=BUDGET, cache=tmp_path)
    path = tmp_path / tunecache.FILE_NAME
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    entry["pick"]["times"] = "not a table"  # edited by hand, or written by a version that went wrong
    path.write_text(json.dumps(data))
    tunecache.forget()
    timed.clear()
    tuned = autotune(model, x, budget_s=BUDGET, cache=tmp_path)
    assert tuned.pick.source == "tuned" and timed
    assert isinstance(json.loads(path.read_text())["entries"].popitem()[1]["pick"]["times"], dict)


WRITERS = 8


def _put_own_entry(folder: Path, index: int, barrier) -> None:
    """One process saving its own pick, all at once with the others; each write takes 50 ms, so that without the
    lock every writer reads the file before any has written it."""
    write = tunecache.atomic_write_text

    def slow_write(path, text):
        time.sleep(0.05)
        write(path, text)

    tunecache.atomic_write_text = slow_write
    barrier.wait()
    tunecache.TuneCache(folder).put({"structure": f"model-{index}"}, {"strategy": "vmap_jacrev", "verdict": "winner"})


def test_processes_tuning_at_once_keep_every_entry(tmp_path):
    context = multiprocessing.get_context("fork")  # the test's modules already imported: 8 processes in milliseconds
    barrier = context.Barrier(WRITERS)
    procs = [context.Process(target=_put_own_entry, args=(tmp_path, i, barrier)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    entries = json.loads((tmp_path / tunecache.FILE_NAME).read_text())["entries"]
    assert sorted(e["key"]["structure"] for e in entries.values()) == sorted(f"model-{i}" for i in range(WRITERS))
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_default_cache_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tunecache.folder_of(True) == tmp_path / "jacobench"
    assert tunecache.folder_of(False) is None and tunecache.folder_of(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tunecache.folder_of(True) == Path.home() / ".cache" / "jacobench"


class WrongInFloat32(torch.autograd.Function):
    """tanh whose backward is right in float64 (the reference) and doubled in float32; no forward mode, no vmap."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y) * (2 if grad.dtype == torch.float32 else 1)


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)  # in > out: the reference goes in reverse mode

    def forward(self, x):
        return self.b(WrongInFloat32.apply(self.a(x)))


def test_a_model_that_fails_on_every_strategy_is_one_error_naming_the_reasons():
    torch.manual_seed(0)
    with pytest.raises(AutotuneError) as caught:
        autotune(Broken(), inputs(in_dim=4), budget_s=BUDGET, cache=False)
    message = str(caught.value)
    assert message.startswith("no strategy gives a valid Jacobian of this model on example_x (B=8, in=4, out=2")
    assert "wrong: max abs error" in message and "error: " in message
    for name in strategies.names("jacobian"):
        if name != "analytic" and not strategies.REGISTRY[name].compiled:
            assert name in message, name
    assert "hessian" not in message, "second-order strategies are never candidates"


def test_train_mode_returns_j_with_its_graph():
    model, x = mlp(), inputs()
    tuned = autotune(model, x, mode="train", budget_s=BUDGET, cache=False)
    assert strategies.REGISTRY[tuned.strategy].differentiable
    assert "cannot train through" in tuned.pick.refused["linearize_batched"]
    jac = tuned(x)
    assert jac.requires_grad and jac.grad_fn is not None
    got = flat_gradient(jac.square().sum(), list(model.parameters()))  # the Jacobian penalty, trained through
    expected = reference(model, x, train=True).penalty_gradient
    torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=1e-5)
    assert "create_graph=True" in tuned.explain()


def measured_run(root: Path, shape: dict[str, int]) -> Path:
    """A run that measured the mlp preset at one shape, with a playoff: vmap_jacrev ties with jacobian_sum."""
    run = root / "measured"
    run.mkdir(parents=True)
    for name in ("grad_summed", "grad_batched", "jacobian_sum", "vmap_jacrev", "jvp_loop"):
        append_case(run / "cases.jsonl", record(name, "cpu", shape, ["base"]))
    verdict = VerdictRecord(model="mlp", device="cpu", dtype="float32", **shape, best="vmap_jacrev", verdict="tie",
                            tied_with=["jacobian_sum"], runner_up="jacobian_sum", runner_up_ratio=[1.01, 0.98, 1.04],
                            contenders=["vmap_jacrev", "jacobian_sum"], rounds=9)
    append_line(run / "playoffs.jsonl", verdict.as_dict())
    write_json(run / "env.json", {"run_id": "measured", "torch": "2.14.1", "threads": 2, "models": {"mlp": "mlp"},
                                  "devices": {"cpu": "Some CPU"}})
    return run


def test_results_pick_from_a_measured_run_without_timing(tmp_path, timed):
    shape = {"batch": 8, "hidden": 16, "in_dim": 3, "out_dim": 4}
    run = measured_run(tmp_path, shape)
    model = models.instantiate(models.PRESETS["mlp"], Sizes(**shape))  # the run's model, other values
    x = inputs()
    tuned = autotune(model, x, results=run, cache=tmp_path / "cache")
    assert not timed
    assert (tuned.strategy, tuned.verdict, tuned.tied_with) == ("vmap_jacrev", "tie", ["jacobian_sum"])
    assert tuned.pick.source == "results" and "grad_summed" not in tuned.times
    text = tuned.explain()
    assert f"from the run {run}" in text and "mlp H=16" in text and "Some CPU" in text and "nothing timed" in text
    assert_is_the_jacobian(tuned(x), model, x)
    assert not (tmp_path / "cache").exists(), "a pick read from a run is not a measurement of this machine"


def test_results_of_another_model_tune_here(tmp_path, timed):
    run = measured_run(tmp_path, {"batch": 8, "hidden": 16, "in_dim": 3, "out_dim": 4})
    tuned = autotune(mlp(hidden=5), inputs(), results=run, budget_s=BUDGET, cache=False)
    assert tuned.pick.source == "tuned" and timed
    assert "other models (mlp H=16" in tuned.explain()
    tuned = autotune(mlp(hidden=16), inputs(batch=6), results=run, budget_s=BUDGET, cache=False)
    assert "did not measure B=6" in tuned.explain()


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "hessian"}, "mode must be one of jacobian, train"),
    ({"strategies": ["nope"]}, "unknown strategy nope"),
    ({"strategies": ["vmap_jacrev", "hessian_sum"]}, "hessian_sum computes hessian, not a jacobian"),
    ({"budget_s": 0}, "budget_s must be a positive number"),
])
def test_bad_arguments_are_one_clear_error(kwargs, match):
    with pytest.raises(AutotuneError, match=match):
        autotune(mlp(), inputs(), cache=False, **kwargs)


def test_an_input_that_is_not_a_batch_or_a_model_that_is_not_a_module_is_refused():
    with pytest.raises(AutotuneError, match=r"a \(B, in\) tensor"):
        autotune(mlp(), torch.ones(3), cache=False)
    with pytest.raises(AutotuneError, match="must be a torch.nn.Module, not builtin_function_or_method"):
        autotune(torch.tanh, inputs(), cache=False)
    with pytest.raises(AutotuneError, match=r"returned \(8, 3, 1\)"):
        autotune(nn.Unflatten(1, (3, 1)), inputs(), cache=False)
