"""What machine and software a run measured: written to env.json, shown in reports."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from bench.run import compiling


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
    }
