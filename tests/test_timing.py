"""The timed rounds of a shape (bench/harness/timing.py): how a round is sized."""

import time

import pytest

from bench.harness import machine, timing


class FakeClock:
    """perf_counter for a test: time passes only when a fake call says it took some."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def takes(self, seconds: float):
        def call() -> None:
            self.now += seconds
        return call


@pytest.fixture
def clock(monkeypatch):
    """A fake clock on a machine at one speed with no other process: the timing logic alone, not this machine's
    noise (a busy-wait on loaded CPUs stretches at random)."""
    fake = FakeClock()
    monkeypatch.setattr(time, "perf_counter", fake)
    monkeypatch.setattr(machine, "calibration_now", lambda: 1e-3)
    monkeypatch.setattr(machine, "disturbance", lambda before, after: "")
    return fake


def busy(seconds: float):
    def call() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    return call


def test_rounds_are_sized_by_the_warm_up_not_by_an_inflated_first_estimate(clock):
    # the validation call of a 0.1 ms strategy is timed with the memory measurement around it: ms, not 0.1 ms.
    # Sized by it, every round was one call timed right after another strategy's round. (On the fake clock: a
    # busy-wait of 0.2 ms read 0.7 ms once on loaded CPUs.)
    quick = timing.Entry("quick", clock.takes(1e-4), one_call_s=0.01)
    other = timing.Entry("other", clock.takes(2e-4), one_call_s=0.01)
    assert quick.iterations == 1  # what the estimate alone gives
    timing.time_shape([quick, other], window_s=0.05, calibration=machine.Calibration(),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert 1e-3 > quick.one_call_s >= 1e-4
    assert quick.iterations >= 10 and quick.lead_in >= 10  # 2 ms rounds and lead-ins of ~20 calls
    assert other.iterations >= 5
    assert all(r == pytest.approx(1e-4) for r in quick.rounds)  # each round: its calls' time per call


def test_a_slow_call_is_not_called_again_to_size_its_round():
    calls = []

    def slow() -> None:
        calls.append(1)
        busy(timing.SLOW_FIRST_CALLS * timing.MIN_ROUND_S)()

    entry = timing.Entry("slow", slow, one_call_s=0.001)
    timing._warm_up([entry], order=__import__("random").Random(0))
    assert len(calls) == 1 and entry.iterations == 1 and entry.lead_in >= 1


def test_a_slow_episode_longer_than_a_shapes_share_is_waited_out_not_kept(monkeypatch):
    # three quick calibrations set the usual speed, then the machine runs ×2 slower for four checks: the shape sets
    # aside its share of blocks (three), then waits for the usual speed instead of keeping the fourth slow block
    speeds = iter([1.0] * 3 + [2.0] * 4 + [1.0] * 1000)
    monkeypatch.setattr(machine, "calibration_s", lambda repeats: next(speeds))
    monkeypatch.setattr(timing, "BLOCK_S", 0.01)
    monkeypatch.setattr(timing, "PRECISION", 0.0)  # timed for the whole window, not until precise
    entry = timing.Entry("quick", busy(1e-4), one_call_s=1e-4)
    result = timing.time_shape([entry], window_s=0.3, calibration=machine.Calibration(),
                               settler=machine.Settler(0.0, 10.0), guard_s=60)
    assert result.episode_waits == 1 and result.blocks_set_aside == 4
    assert result.unstable == "" and len(entry.rounds) >= timing.MIN_ROUNDS


def test_a_slow_episode_is_kept_and_named_when_waiting_is_spent(monkeypatch):
    speeds = iter([1.0] * 3 + [2.0] * 1000)
    monkeypatch.setattr(machine, "calibration_s", lambda repeats: next(speeds))
    monkeypatch.setattr(timing, "BLOCK_S", 0.01)
    monkeypatch.setattr(timing, "PRECISION", 0.0)
    entry = timing.Entry("quick", busy(1e-4), one_call_s=1e-4)
    result = timing.time_shape([entry], window_s=0.1, calibration=machine.Calibration(),
                               settler=machine.Settler(0.0, 0.0), guard_s=60)  # no waiting budget left
    assert result.unstable.startswith(machine.SLOW_MACHINE) and entry.rounds


def test_a_strategy_found_no_contender_keeps_only_rounds_timed_on_its_own_after_the_decision(clock):
    # a call that runs slow right after another strategy's call (the caches, the allocator, OpenMP threads) and quick
    # after itself: the number kept is the one a loop of that call measures, not the rounds that raced the others
    last = []

    def neighbour_sensitive() -> None:
        clock.takes(1e-3 if last[-1:] == ["slow"] else 3e-3)()
        last.append("slow")

    def fast_call() -> None:
        clock.takes(2e-4)()
        last.append("fast")

    fast = timing.Entry("fast", fast_call, one_call_s=2e-4)
    slow = timing.Entry("slow", neighbour_sensitive, one_call_s=1e-3)
    timing.time_shape([fast, slow], window_s=0.1, calibration=machine.Calibration(),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert not slow.contender and slow.raced >= timing.MIN_ROUNDS_TO_DROP
    assert len(slow.rounds) >= timing.MIN_ROUNDS and max(slow.rounds) == pytest.approx(1e-3)  # back to back
    assert " on its own in " in timing.note(slow) and len(set(slow.round_sweeps)) == len(slow.rounds)


def test_a_quick_strategy_timed_on_its_own_is_timed_over_more_than_one_moment(clock):
    # seven rounds of a 0.2 ms call are 15 ms, one moment of the machine: a short slow episode moves all of them
    fast = timing.Entry("fast", clock.takes(5e-5), one_call_s=5e-5)
    slow = timing.Entry("slow", clock.takes(3e-4), one_call_s=3e-4)
    timing.time_shape([fast, slow], window_s=1.0, calibration=machine.Calibration(),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert not slow.contender
    assert sum(slow.rounds) * slow.iterations >= timing.SOLO_S and len(slow.rounds) > timing.MIN_ROUNDS


def test_a_strategy_timed_on_its_own_is_timed_in_stretches_between_the_contenders_blocks(clock):
    # a 45 ms call timed in one stretch is one moment of the machine (linearize_batched read x1.5-1.9 a fresh process
    # so): one round a turn, a turn after each block of the contenders, until it has its rounds
    fast = timing.Entry("fast", clock.takes(1e-4), one_call_s=1e-4)
    slow = timing.Entry("slow", clock.takes(45e-3), one_call_s=45e-3)
    timing.time_shape([fast, slow], window_s=2.0, calibration=machine.Calibration(),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert not slow.contender and len(slow.rounds) >= timing.MIN_ROUNDS and slow.stretches == len(slow.rounds)
    between = [s for s in fast.round_sweeps if slow.round_sweeps[0] < s < slow.round_sweeps[-1]]
    assert len(between) >= len(slow.rounds)  # the contenders' rounds ran between its stretches
    assert f"on its own in {slow.stretches} stretches, after" in timing.note(slow)


def test_a_quick_strategy_timed_on_its_own_is_timed_in_short_stretches(clock):
    fast = timing.Entry("fast", clock.takes(5e-5), one_call_s=5e-5)
    slow = timing.Entry("slow", clock.takes(3e-4), one_call_s=3e-4)
    timing.time_shape([fast, slow], window_s=1.0, calibration=machine.Calibration(),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert not slow.contender and slow.stretches >= timing.SOLO_S / timing.STRETCH_S - 1


def test_a_strategy_timed_on_its_own_sets_aside_a_stretch_the_machine_ran_slow_in(clock, monkeypatch):
    # a 45 ms call timed on its own: the machine slows down x1.7 after its first rounds, for two calibrations. The
    # calibration before its rounds found the usual speed; the rounds of that stretch are timed again, not kept
    speed = [1.0]
    monkeypatch.setattr(machine, "calibration_now", lambda: 1e-3 * speed[0])

    def slow_call() -> None:
        clock.takes(45e-3 * speed[0])()

    solo_checks = []
    real_check = machine.Calibration.check

    def check(self) -> str:  # slow at the second and third calibration of the solo: after its first stretch
        if slow.raced is not None:
            solo_checks.append(1)
        speed[0] = 1.7 if len(solo_checks) in (2, 3) else 1.0
        return real_check(self)

    monkeypatch.setattr(machine.Calibration, "check", check)
    fast = timing.Entry("fast", clock.takes(1e-4), one_call_s=1e-4)
    slow = timing.Entry("slow", slow_call, one_call_s=45e-3)
    timing.time_shape([fast, slow], window_s=0.2, calibration=machine.Calibration(run_usual_s=1e-3),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert not slow.contender and len(solo_checks) >= 4 and slow.set_aside > 0
    assert max(slow.rounds) == pytest.approx(45e-3) and len(slow.rounds) >= timing.MIN_ROUNDS_TO_DROP
    assert slow.unstable == "" and "set aside" in timing.note(slow)


def test_a_strategy_timed_on_its_own_keeps_and_names_a_slow_stretch_once_it_set_aside_its_share(clock, monkeypatch):
    speed = [1.0]
    monkeypatch.setattr(machine, "calibration_now", lambda: 1e-3 * speed[0])
    real_check = machine.Calibration.check

    def check(self) -> str:  # slow from the solo's first calibration on
        speed[0] = 1.7 if slow.raced is not None else 1.0
        return real_check(self)

    monkeypatch.setattr(machine.Calibration, "check", check)
    fast = timing.Entry("fast", clock.takes(1e-4), one_call_s=1e-4)
    slow = timing.Entry("slow", clock.takes(45e-3), one_call_s=45e-3)
    timing.time_shape([fast, slow], window_s=0.2, calibration=machine.Calibration(run_usual_s=1e-3),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert not slow.contender and slow.rounds and slow.unstable.startswith(machine.SLOW_MACHINE)


def test_a_strategy_timed_on_its_own_waits_out_a_slow_episode_once_it_set_aside_its_share(clock, monkeypatch):
    # the machine slow for the solo's first seven calibrations (two a turn): three turns set aside, then the episode
    # waited out (as a shape's blocks do) rather than kept: the rounds kept are timed at the usual speed
    speed = [1.0]
    monkeypatch.setattr(machine, "calibration_now", lambda: 1e-3 * speed[0])
    monkeypatch.setattr(time, "sleep", lambda seconds: clock.takes(seconds)())
    solo_checks = []
    real_check = machine.Calibration.check

    def check(self) -> str:
        if slow.raced is not None:
            solo_checks.append(1)
        speed[0] = 1.7 if 1 <= len(solo_checks) <= 7 else 1.0
        return real_check(self)

    monkeypatch.setattr(machine.Calibration, "check", check)
    fast = timing.Entry("fast", clock.takes(1e-4), one_call_s=1e-4)
    slow = timing.Entry("slow", clock.takes(45e-3), one_call_s=45e-3)
    result = timing.time_shape([fast, slow], window_s=0.2, calibration=machine.Calibration(run_usual_s=1e-3),
                               settler=machine.Settler(0.0, 10.0), guard_s=60)
    assert not slow.contender and result.episode_waits == 1 and slow.unstable == ""
    assert slow.rounds and max(slow.rounds) == pytest.approx(45e-3)


def test_a_long_call_far_slower_than_the_fastest_keeps_the_rounds_that_decided_it(clock):
    # a 0.3 s call against a 0.1 ms one: its raced rounds were not selected by noise and its neighbours' lingering
    # state costs it nothing measurable; timing three more on their own would only cost a second
    fast = timing.Entry("fast", clock.takes(1e-4), one_call_s=1e-4)
    slow = timing.Entry("slow", clock.takes(0.3), one_call_s=0.3)
    timing.time_shape([fast, slow], window_s=0.1, calibration=machine.Calibration(),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert not slow.contender and slow.race_kept
    assert len(slow.rounds) == slow.raced == timing.MIN_ROUNDS_TO_DROP  # nothing more: three 0.3 s rounds suffice
    assert timing.note(slow).startswith("3 rounds beside the others, the ones that decided it")


def test_a_long_call_near_the_margin_is_timed_again_on_its_own(clock):
    # 60 ms against 30 ms: dropped, but near enough that noise may have picked its slow rounds
    fast = timing.Entry("fast", clock.takes(0.03), one_call_s=0.03)
    slow = timing.Entry("slow", clock.takes(0.06), one_call_s=0.06)
    timing.time_shape([fast, slow], window_s=0.5, calibration=machine.Calibration(),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert not slow.contender and not slow.race_kept and slow.raced >= timing.MIN_ROUNDS_TO_DROP
    assert " on its own in " in timing.note(slow) and ", after " in timing.note(slow)


def test_a_kept_deciding_round_needs_the_usual_speed_on_both_sides(clock, monkeypatch):
    # the calibration after the last deciding block finds the machine slow: that 0.3 s round may have run in the
    # episode (its block was calibrated before it only), so it is not kept and a round on its own replaces it
    speed = [1.0]
    monkeypatch.setattr(machine, "calibration_now", lambda: 1e-3 * speed[0])
    solo_checks = []
    real_check = machine.Calibration.check

    def check(self) -> str:
        if slow.raced is not None:
            solo_checks.append(1)
        speed[0] = 1.7 if len(solo_checks) == 1 else 1.0
        return real_check(self)

    monkeypatch.setattr(machine.Calibration, "check", check)
    fast = timing.Entry("fast", clock.takes(1e-4), one_call_s=1e-4)
    slow = timing.Entry("slow", clock.takes(0.3), one_call_s=0.3)
    timing.time_shape([fast, slow], window_s=0.1, calibration=machine.Calibration(run_usual_s=1e-3),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert not slow.contender and slow.race_kept and slow.raced == timing.MIN_ROUNDS_TO_DROP
    assert len(slow.rounds) == timing.MIN_ROUNDS_TO_DROP and slow.set_aside == 1  # timed in the slow stretch
    assert slow.race_kept == 2 and "3 rounds, 2 of them beside the others (they decided it), 1 on its own" in \
        timing.note(slow)
    assert len(set(slow.round_sweeps)) == len(slow.rounds)


def test_the_note_of_a_strategy_that_kept_no_round_does_not_claim_kept_deciding_rounds():
    e = timing.Entry("slow", lambda: None, one_call_s=0.3)
    e.contender, e.raced = False, 3
    assert timing.note(e).startswith("0 rounds on its own, after 3 beside the others decided it")


def test_a_strategy_known_to_be_far_behind_is_timed_on_its_own_from_the_start(clock):
    # a second process timing a disturbed shape whole does not race again what the first found x3 slower or more
    fast = timing.Entry("fast", clock.takes(1e-4), one_call_s=1e-4)
    far = timing.Entry("far", clock.takes(45e-3), one_call_s=45e-3, contender=False)
    timing.time_shape([fast, far], window_s=2.0, calibration=machine.Calibration(),
                      settler=machine.Settler(0.0, 0.0), guard_s=60)
    assert far.raced == 0 and not far.contender and len(far.rounds) >= timing.MIN_ROUNDS
    assert fast.contender and fast.screened == 0 and len(fast.rounds) >= timing.MIN_ROUNDS  # no rounds beside it
    assert "not raced again" in timing.note(far)
