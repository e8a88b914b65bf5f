"""The progress line's ETA (bench/run/plugin.Progress): from the plan's cost model, rescaled by how fast the run goes
against it, with the forecast as a prior, so the first case (which carries the worker's start) does not blow it up."""

from __future__ import annotations

import pytest

from bench.run import plugin
from bench.schema import CaseRecord


def _record(n: int) -> CaseRecord:
    return CaseRecord(strategy="grad_loop", model="mlp", device="cpu", dtype="float32", batch=1, hidden=8, in_dim=2,
                      out_dim=2, status="ok", case_id=f"c{n}")


def _progress(monkeypatch, clock: list[float]) -> plugin.Progress:
    monkeypatch.setattr(plugin.time, "perf_counter", lambda: clock[0])
    return plugin.Progress(total=100, started=0.0, expected={f"c{n}": 1.0 for n in range(100)},
                           expected_total_s=110.0)


def test_the_first_case_does_not_blow_the_eta_up(monkeypatch):
    """The first case finished 10 s in (a worker's start and a shape's preparation) against 1 s predicted: the ETA
    stays near the forecast's remaining 109 s, not ×10 of it."""
    clock = [10.0]
    progress = _progress(monkeypatch, clock)
    progress.done = 1
    eta = progress.eta_s(_record(0))
    assert 109 <= eta <= 1.5 * 109


def test_the_eta_follows_a_run_slower_than_its_forecast(monkeypatch):
    """Every case takes twice its prediction: half-way, the ETA is about twice the forecast's remaining seconds."""
    clock = [0.0]
    progress = _progress(monkeypatch, clock)
    for n in range(50):
        clock[0] += 2.0
        progress.done += 1
        eta = progress.eta_s(_record(n))
    assert eta == pytest.approx(2 * 60.0, rel=0.2)


def test_without_a_forecast_the_mean_time_per_case(monkeypatch):
    clock = [30.0]
    monkeypatch.setattr(plugin.time, "perf_counter", lambda: clock[0])
    progress = plugin.Progress(total=4, done=3, started=0.0)
    assert progress.eta_s(_record(0)) == pytest.approx(10.0)
