"""The state of the machine while something is timed: other processes' CPU use, stolen time, and drift.

`disturbance` compares two snapshots: from /proc/stat, the CPU time every process used and the time the hypervisor
stole, minus this process's own CPU time (time.process_time, all its threads). What is left was used by other
processes. A fixed calibration call, timed between shapes (`Drift`), tells when the machine as a whole runs slower
than it usually does in this run (thermal throttling, a noisy neighbour on a VM). Linux only; elsewhere nothing is
flagged.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Other processes using more than this share of all CPUs, or the hypervisor stealing more, disturbs a timing.
FOREIGN_LIMIT = 0.25
STEAL_LIMIT = 0.10
# The calibration call this much slower than the median of the run's earlier ones: the machine is slower than usual.
# On a quiet 2-core VM the calibration strays up to ×1.3 from its median between shapes, so 1.5 is a real change.
DRIFT_LIMIT = 1.5
WARMUP_CALIBRATIONS = 3  # the first ones only set the usual speed
_CPUS = os.cpu_count() or 1
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class Snapshot:
    wall: float
    busy: float | None  # CPU seconds used by every process since boot (None: no /proc/stat)
    steal: float | None
    own: float  # CPU seconds used by this process


def snapshot() -> Snapshot:
    busy = steal = None
    try:
        fields = [int(v) for v in _PROC_STAT.read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, stolen = (fields + [0] * 8)[:8]
        busy, steal = (user + nice + system + irq + softirq) / _TICK, stolen / _TICK
    except (OSError, ValueError):
        pass
    return Snapshot(time.perf_counter(), busy, steal, time.process_time())


def disturbance(before: Snapshot, after: Snapshot) -> str:
    """Why the interval between two snapshots was disturbed, or "" when it was quiet."""
    wall = after.wall - before.wall
    if before.busy is None or after.busy is None or wall < 0.05:
        return ""  # too short to tell at the kernel's 10 ms tick, or no /proc/stat
    capacity = wall * _CPUS
    foreign = (after.busy - before.busy - (after.own - before.own)) / capacity
    stolen = (after.steal - before.steal) / capacity
    if foreign > FOREIGN_LIMIT:
        return f"other processes used {foreign:.0%} of the {_CPUS} CPUs"
    if stolen > STEAL_LIMIT:
        return f"the hypervisor stole {stolen:.0%} of the CPU time"
    return ""


def calibration_s(repeats: int = 5) -> float:
    """Quickest of `repeats` runs of a fixed workload (~0.5 ms): small matrix products and tanh into preallocated
    tensors, and a pure-Python loop. Nothing is allocated, so the process's own heap (fragmented by a large case
    before) does not move it; what moves it is how fast the machine runs now."""
    a = torch.linspace(-1, 1, 64 * 64).reshape(64, 64)
    c = torch.empty_like(a)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(40):
            torch.mm(a, a, out=c)
            torch.tanh(c, out=c)
        total = 0
        for i in range(2000):
            total += i
        times.append(time.perf_counter() - start)
    return min(times)


class Drift:
    """Calibration times of this run: the current one against the median of the ones before it."""

    def __init__(self) -> None:
        self.history: list[float] = []

    def check(self) -> str:
        """Time the calibration call now; the reason the machine is slower than usual in this run, or ""."""
        now = calibration_s()
        usual = statistics.median(self.history) if len(self.history) >= WARMUP_CALIBRATIONS else None
        self.history.append(now)
        if usual is None or now <= DRIFT_LIMIT * usual:
            return ""
        return f"the machine ran ×{now / usual:.2f} slower than usual in this run (calibration)"

    def summary(self) -> dict[str, float]:
        if not self.history:
            return {}
        return {"calibrations": len(self.history), "quickest_s": round(min(self.history), 6),
                "median_s": round(statistics.median(self.history), 6), "slowest_s": round(max(self.history), 6)}


def wait_until_quiet(timeout_s: float, window_s: float = 0.5) -> tuple[bool, float]:
    """Poll in windows of `window_s` until one is free of other processes' load; (quiet, seconds waited)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        before = snapshot()
        time.sleep(window_s)
        if not disturbance(before, snapshot()):
            return True, time.perf_counter() - start
    return False, time.perf_counter() - start


class Settler:
    """Waits for other processes' load to pass: at most `per_wait_s` each time, `total_s` in all for the run."""

    def __init__(self, per_wait_s: float, total_s: float):
        self.per_wait_s = per_wait_s
        self.left_s = total_s

    def settle(self) -> bool:
        """Wait until the machine is quiet (within the limits); whether it is."""
        wait = min(self.per_wait_s, self.left_s)
        if wait <= 0:
            return False
        quiet, waited = wait_until_quiet(wait)
        self.left_s -= waited
        return quiet
