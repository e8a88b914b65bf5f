"""JAX started lazily, on the first call of a peer, with the run's threads; tensors between torch and JAX.

Nothing here runs at import: the benchmark's worker process imports every strategy and then forks one child per
shape, and a backend started before the fork would be unusable in the children (and its threads unsafe to fork).
The first call in a process starts the backend:

- threads: XLA's CPU client sizes its intra-op pool from the environment variable PJRT_NPROC (else NPROC, else one
  thread per schedulable core: xla/pjrt/cpu/cpu_client.cc, DefaultThreadPoolSize). It is set to
  torch.get_num_threads() of the calling process (the run's THREADS) before the backend starts; with one thread
  XLA_FLAGS also gets --xla_cpu_multi_thread_eigen=false, so no Eigen pool is used either. The pool cannot change
  once started: a later call under another thread count is `Unsupported`, with the reason, never timed under a
  pool of the wrong size.
- float64: a float64 input turns on jax_enable_x64 (JAX computes in float32 otherwise, silently). It changes JAX's
  default dtype for arrays made without one; the translated model makes none, so float32 cases stay float32.
- the input: converted once per tensor and version (`as_jax`), so a timed call starts from a JAX array, as the
  torch strategies start from a torch tensor.
- the result: `to_torch` waits for it (block_until_ready) and wraps the same buffer as a torch tensor through
  DLPack (no copy on CPU): the conversion is inside the timed call.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from strategies import Unsupported

THREADS_VARIABLE = "PJRT_NPROC"  # read by XLA's CPU client when it starts (NPROC is its fallback)
SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PLATFORM = {"cpu": "cpu", "cuda": "gpu"}  # torch device type -> JAX platform


@dataclass(frozen=True)
class Started:
    """What the backend was started with in this process."""

    jax: ModuleType
    threads: int  # XLA's CPU intra-op pool (PJRT_NPROC)


_STARTED: Started | None = None


def started() -> Started | None:
    """The backend of this process, or None before the first peer call."""
    return _STARTED


def start() -> Started:
    """Import jax and start its backend with XLA's CPU pool sized to torch's threads, once per process."""
    global _STARTED
    threads = torch.get_num_threads()
    if _STARTED is None:
        jax = import_jax()
        os.environ[THREADS_VARIABLE] = str(threads)
        if threads == 1 and SINGLE_THREAD_FLAG not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_FLAG}".strip()
        jax.devices()  # starts the backend: PJRT_NPROC and XLA_FLAGS are read now, and only now
        _STARTED = Started(jax, threads)
    elif _STARTED.threads != threads:
        raise Unsupported(f"XLA's CPU pool was started with {_STARTED.threads} threads in this process; this call "
                          f"runs under {threads} torch threads (a pool cannot be resized: one thread count per "
                          "process)")
    return _STARTED


def import_jax() -> ModuleType:
    """jax, or Unsupported saying how to install it."""
    try:
        import jax
    except ImportError as exc:
        raise Unsupported(f"JAX cannot be imported ({exc}): pip install -e '.[jax]' -e plugins/jacobench-jax") \
            from None
    return jax


def device_for(jax: ModuleType, x: Tensor) -> Any:
    """The JAX device of x's torch device (the first one of its platform), or Unsupported."""
    platform = PLATFORM.get(x.device.type)
    try:
        devices = jax.devices(platform) if platform else []
    except RuntimeError:
        devices = []
    if not devices:
        raise Unsupported(f"JAX has no {x.device.type} backend here (jax {jax.__version__}: "
                          f"{', '.join(sorted({d.platform for d in jax.devices()}))})")
    return devices[x.device.index or 0] if x.device.index is not None else devices[0]


def check_dtype(jax: ModuleType, dtype: torch.dtype) -> None:
    """float64 turns x64 on; a dtype JAX cannot take is Unsupported."""
    if dtype not in DTYPES:
        raise Unsupported(f"{dtype} is not a floating dtype the JAX peers take ({', '.join(map(str, DTYPES))})")
    if dtype == torch.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def to_jax(jax: ModuleType, t: Tensor, device: Any) -> Any:
    """A JAX array holding a copy of t (the JAX array must not change when the tensor does)."""
    host = t.detach().to("cpu", copy=True).contiguous()
    if host.dtype == torch.bfloat16:  # numpy has no bfloat16: through DLPack
        return jax.device_put(jax.dlpack.from_dlpack(host), device)
    return jax.device_put(host.numpy(), device)


def to_torch(out: Any, device: torch.device) -> Tensor:
    """The result as a torch tensor, once it is computed (block_until_ready); the same buffer on CPU (DLPack)."""
    out.block_until_ready()
    result = torch.from_dlpack(out)
    return result if result.device == device else result.to(device)


class InputCache:
    """The JAX copy of the last input tensor, reused while it is the same tensor, unchanged (same version and
    storage): a timed call starts from a JAX array, converted once per shape."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._tensor: weakref.ref | None = None
        self._array: Any = None

    def get(self, jax: ModuleType, x: Tensor, device: Any) -> Any:
        key = (x._version, x.data_ptr(), x.dtype, tuple(x.shape), str(device))
        if self._tensor is None or self._tensor() is not x or self._key != key:
            self._array = to_jax(jax, x, device)  # [B, in]
            self._tensor, self._key = weakref.ref(x), key
        return self._array
