"""The timed rounds of a shape (bench/harness/timing.py): how a round is sized."""

import time

from bench.harness import machine, timing


def busy(seconds: float):
    def call() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    return call


def test_rounds_are_sized_by_the_warm_up_not_by_an_inflated_first_estimate():
    # the validation call of a 0.1 ms strategy is timed with the memory measurement around it: ms, not 0.1 ms.
    # Sized by it, every round was one call timed right after another strategy's round.
    quick = timing.Entry("quick", busy(1e-4), one_call_s=0.01)
    other = timing.Entry("other", busy(2e-4), one_call_s=0.01)
    assert quick.iterations == 1  # what the estimate alone gives
    timing.time_shape([quick, other], window_s=0.05, calibration=machine.Calibration(),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert 1e-3 > quick.one_call_s >= 1e-4
    assert quick.iterations >= 10 and quick.lead_in >= 10  # 2 ms rounds and lead-ins of ~20 calls
    assert other.iterations >= 5
    assert all(r >= 1e-4 for r in quick.rounds)


def test_a_slow_call_is_not_called_again_to_size_its_round():
    calls = []

    def slow() -> None:
        calls.append(1)
        busy(timing.SLOW_FIRST_CALLS * timing.MIN_ROUND_S)()

    entry = timing.Entry("slow", slow, one_call_s=0.001)
    timing._warm_up([entry], order=__import__("random").Random(0))
    assert len(calls) == 1 and entry.iterations == 1 and entry.lead_in >= 1
