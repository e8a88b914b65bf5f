"""autotune's memory: a pick remembered per model structure and input, in this process and in one JSON file on disk.

Like cuDNN's benchmark mode, but kept across processes. The key is what decides which strategy is valid and fastest,
never the parameter values:

    structure   sha256 of every module's path, class, train/eval flag and the bytecode of its class's forward, and
                every parameter's and buffer's name, shape, dtype and requires_grad
    input       (B, in) of the example input, its dtype, the device and its name (CPU model or GPU name)
    torch, threads, mode, candidates (the strategy names allowed to win)

The file is <folder>/autotune-v1.json (folder: $XDG_CACHE_HOME/jacobench, else ~/.cache/jacobench, or the folder the
caller names):

    {"format": "jacobench-autotune", "version": 1,
     "entries": {"<sha256 of the key>": {"key": {...}, "pick": {...}, "saved": "2026-12-01T10:00:00+00:00"}}}

A file that is not valid JSON or holds another format or version is ignored with one warning per process and
replaced by the next write. Every write holds the file's lock (<file>.lock, filelock), re-reads the file, adds its
entry and replaces it atomically (results.atomic_write_text): processes tuning at once keep every entry, and a reader
(no lock) sees the old file or the new one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import Tensor, nn

from bench.results import atomic_write_text

FORMAT = "jacobench-autotune"
VERSION = 1
FILE_NAME = f"autotune-v{VERSION}.json"
LOCK_TIMEOUT_S = 30.0  # a writer waits this long for another's read-modify-write (milliseconds each), then warns

# Picks of this process, per cache folder (None: cache=False keeps nothing). Entries by key digest.
_MEMORY: dict[Path, dict[str, dict[str, Any]]] = {}
_WARNED: set[Path] = set()  # files already warned about: one warning per file and process


def default_folder() -> Path:
    """$XDG_CACHE_HOME/jacobench, else ~/.cache/jacobench."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jacobench"


def folder_of(cache: bool | str | os.PathLike) -> Path | None:
    """The cache folder of autotune's `cache=` argument: True -> the default folder, False -> None, a path -> it."""
    if cache is True:
        return default_folder()
    if cache is False or cache is None:
        return None
    return Path(cache).expanduser()


def structure(model: nn.Module, portable: bool = False) -> dict[str, list]:
    """What of a model decides its Jacobian strategy: its modules, their code and modes, tensor shapes and dtypes.

    portable=True leaves out what differs when the same model is built elsewhere: the module a class was imported
    from (a model file loaded by path gets another module name) and the dtypes (a run casts its models).
    """
    def cls(m: nn.Module) -> str:
        return type(m).__qualname__ if portable else f"{type(m).__module__}.{type(m).__qualname__}"

    def dtype(t: Tensor) -> list[str]:
        return [] if portable else [str(t.dtype).removeprefix("torch.")]

    modules = [[name, cls(m), m.training, _forward_code(type(m))] for name, m in model.named_modules()]
    params = [[name, list(p.shape), *dtype(p), p.requires_grad] for name, p in model.named_parameters()]
    buffers = [[name, list(b.shape), *dtype(b)] for name, b in model.named_buffers()]
    return {"modules": modules, "parameters": params, "buffers": buffers}


@cache
def _forward_code(cls: type) -> str:
    """A digest of the bytecode of cls.forward: editing a model's forward tunes again."""
    code = getattr(getattr(cls, "forward", None), "__code__", None)
    return hashlib.sha256(code.co_code + repr(code.co_names).encode()).hexdigest()[:16] if code else ""


def describe(model: nn.Module) -> str:
    """Sequential(Linear, Tanh, Linear), 2 parameter tensors: a model as a reader recognizes it."""
    children = [type(c).__name__ for c in model.children()]
    shown = ", ".join(children[:6]) + (", ..." if len(children) > 6 else "")
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}({shown}), {n:,} parameters"


@cache
def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (from /proc/cpuinfo: py-cpuinfo takes about a second)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or device.type


def key(model: nn.Module, x: Tensor, mode: str, candidates: list[str]) -> dict[str, Any]:
    """The cache key of tuning `model` on inputs shaped like `x` (see the module docstring)."""
    shape = json.dumps(structure(model), sort_keys=True)
    return {"structure": hashlib.sha256(shape.encode()).hexdigest(), "model": describe(model),
            "input": list(x.shape), "dtype": str(x.dtype).removeprefix("torch."), "device": str(x.device),
            "device_name": device_name(x.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "mode": mode, "candidates": sorted(candidates)}


def digest(k: dict[str, Any]) -> str:
    """The entry name of a key: every field counts except the readable model description."""
    fields = {name: value for name, value in k.items() if name != "model"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class TuneCache:
    """The picks kept in one folder (in memory and in its file); folder None keeps nothing."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.path = folder / FILE_NAME if folder else None
        self.lock = FileLock(f"{self.path}.lock", timeout=LOCK_TIMEOUT_S) if folder else None

    def get(self, k: dict[str, Any]) -> dict[str, Any] | None:
        """The pick saved under this key (this process first, then the file), or None."""
        if self.folder is None:
            return None
        name = digest(k)
        memory = _MEMORY.setdefault(self.folder, {})
        if name not in memory:
            entry = self._read().get(name)
            if not (isinstance(entry, dict) and isinstance(entry.get("pick"), dict)
                    and isinstance(entry["pick"].get("strategy"), str)):
                return None
            memory[name] = entry["pick"]
        return memory[name]

    def put(self, k: dict[str, Any], pick: dict[str, Any]) -> None:
        """Remember a pick in this process and in the file. A file that cannot be written is warned about once."""
        if self.folder is None:
            return
        name = digest(k)
        _MEMORY.setdefault(self.folder, {})[name] = pick
        entry = {"key": k, "pick": pick, "saved": datetime.datetime.now(datetime.timezone.utc)
                 .isoformat(timespec="seconds")}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self.lock:  # read-modify-write: another process's entry, written meanwhile, is kept
                entries = self._read()
                entries[name] = entry
                text = json.dumps({"format": FORMAT, "version": VERSION, "entries": entries}, indent=1, default=str)
                atomic_write_text(self.path, text + "\n")
        except (OSError, Timeout) as exc:
            self._warn(f"cannot write the autotune cache {self.path}: {exc}; the pick is kept in this process only")

    def _read(self) -> dict[str, Any]:
        """The file's entries; {} when there is no file, and {} with one warning when it is not ours to read."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._ignored(f"not readable JSON ({type(exc).__name__}: {exc})")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return self._ignored(f"not a {FORMAT} file")
        if data.get("version") != VERSION:
            return self._ignored(f"format version {data.get('version')!r}, this jacobench reads version {VERSION}")
        if not isinstance(data.get("entries"), dict):
            return self._ignored("it has no entries table")
        return data["entries"]

    def _ignored(self, why: str) -> dict[str, Any]:
        self._warn(f"ignoring the autotune cache {self.path}: {why}; it will be replaced on the next save")
        return {}

    def _warn(self, message: str) -> None:
        if self.path not in _WARNED:
            _WARNED.add(self.path)
            warnings.warn(f"jacobench: {message}", RuntimeWarning, stacklevel=4)


def forget() -> None:
    """Forget this process's picks and warnings (tests; after editing a model's code in a notebook)."""
    _MEMORY.clear()
    _WARNED.clear()
