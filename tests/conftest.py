"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SMOKE_THREE, run_bench


@pytest.fixture(scope="session")
def whole_smoke_run(tmp_path_factory) -> Path:
    """results/whole: SMOKE_THREE as one run, once per session (shards and job arrays are checked against it)."""
    root = tmp_path_factory.mktemp("whole")
    proc = run_bench(root, "run", *SMOKE_THREE, "--run", "whole", "--no-report")
    assert proc.returncode == 0, proc.stderr
    return root / "results" / "whole"
