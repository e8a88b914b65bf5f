"""jacobench: benchmark suite for per-sample Jacobians in PyTorch (see README.md).

`from bench import autotune` gives the library call, imported on first use so that `import bench` (the CLI, the
report side) stays light and never imports torch. It lives in bench/tuning/autotune.py: a module named like the function
would replace it as an attribute of `bench` once imported.
"""

from __future__ import annotations

from typing import Any

__all__ = ["autotune"]


def __getattr__(name: str) -> Any:
    if name == "autotune":
        from bench.tuning.autotune import autotune

        return autotune
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
