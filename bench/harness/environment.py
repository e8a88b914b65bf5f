"""What machine and software a run measured: written to env.json, shown in reports.

Besides versions and devices, the facts pyperf records where the OS exposes them (Linux): the CPU frequency governor
and frequencies, isolated CPUs (isolcpus, nohz_full), and, while the run lasts (`Load`), the CPU time the hypervisor
stole and other processes used. A fact the OS does not expose is None: unknown, not zero.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench.harness import compiling


def cpu_model() -> str:
    try:
        import cpuinfo  # py-cpuinfo; slow-ish (~1 s), called once per run

        return cpuinfo.get_cpu_info().get("brand_raw") or platform.processor() or "unknown CPU"
    except Exception:
        return platform.processor() or "unknown CPU"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def collect(devices: list[str]) -> dict[str, Any]:
    cpu = cpu_model()
    names = {"cpu": cpu}
    for d in devices:
        if d.startswith("cuda"):
            names[d] = torch.cuda.get_device_name(torch.device(d))
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "devices": names,
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "inductor_cache": compiling.inductor_cache(),
        "git_commit": git_commit(),
        "cpu_facts": cpu_facts(),
        "plugins": plugins(),
        "allocator": allocator(),
    }


def allocator() -> dict[str, str]:
    """glibc malloc's thresholds the processes that time run with (bench/harness/fresh.py: ALLOCATOR_ENV, or the
    user's own values of those variables)."""
    from bench.harness import fresh

    env = fresh.timing_env()
    return {k: env[k] for k in fresh.ALLOCATOR_ENV}


def plugins() -> dict[str, str]:
    """The versions of the installed strategy plugins (entry points of strategies.ENTRY_POINT_GROUP) and of the
    frameworks the peers run on (jax, jaxlib, folx): a peer's number means that version."""
    import strategies

    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower() in PEER_PACKAGES or any(ep.group == strategies.ENTRY_POINT_GROUP for ep in dist.entry_points):
            found[name] = dist.version
    return dict(sorted(found.items()))


PEER_PACKAGES = ("jax", "jaxlib", "folx")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_facts() -> dict[str, Any]:
    """Governor and frequencies of each CPU (cpufreq; None on a VM that hides it), the frequency /proc/cpuinfo
    reports, the isolated CPUs, and the load average when the run started."""
    cpus = sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*"), key=lambda p: int(p.name[3:]))
    governors = {c.name: _read(f"{c}/cpufreq/scaling_governor") for c in cpus}
    freqs = {c.name: _read(f"{c}/cpufreq/scaling_cur_freq") for c in cpus}
    mhz = [line.split(":")[1].strip() for line in (_read("/proc/cpuinfo") or "").splitlines()
           if line.startswith("cpu MHz")]
    return {
        "governor": sorted({g for g in governors.values() if g}) or None,
        "cur_freq_khz": {k: int(v) for k, v in freqs.items() if v and v.isdigit()} or None,
        "cpuinfo_mhz": sorted(set(mhz)) or None,
        "isolated": _read("/sys/devices/system/cpu/isolated"),
        "nohz_full": _read("/sys/devices/system/cpu/nohz_full"),
        "loadavg_start": _read("/proc/loadavg"),
    }


class Load:
    """What else used the machine while a run lasted: from /proc/stat at the start and the end, the share of all
    CPUs' time the hypervisor stole and the share other processes used (all CPU time, minus this process's and its
    finished children's: the worker processes)."""

    def __init__(self) -> None:
        from bench.harness import machine

        self.before = machine.snapshot()
        self.own_before = _own_cpu_s()

    def during(self) -> dict[str, Any]:
        from bench.harness import machine

        after = machine.snapshot()
        wall = after.wall - self.before.wall
        if after.busy is None or self.before.busy is None or wall <= 0:
            return {"steal_share": None, "foreign_share": None, "loadavg_end": _read("/proc/loadavg")}
        capacity = wall * (os.cpu_count() or 1)
        own = _own_cpu_s() - self.own_before
        return {"steal_share": round((after.steal - self.before.steal) / capacity, 4),
                "foreign_share": round(max(0.0, after.busy - self.before.busy - own) / capacity, 4),
                "loadavg_end": _read("/proc/loadavg")}


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
