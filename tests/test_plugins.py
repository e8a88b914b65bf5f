"""Third-party strategies arrive through the `jacobench.strategies` entry-point group."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch

import strategies

PLUGIN = textwrap.dedent(
    '''
    """A tiny third-party strategy: forward mode through torch.func.jacfwd on the whole batch sum."""
    import torch
    from strategies import Strategy

    def _batch_jacfwd(model, x):
        """jacfwd of model(x).sum(0)."""
        return torch.func.jacfwd(lambda t: model(t).sum(0))(x.detach()).transpose(0, 1)

    strategy = Strategy(name="batch_jacfwd", fn=_batch_jacfwd, independent_samples=True, summary="jacfwd of sum")
    '''
)


def install_plugin(site: Path, entry: str = "toy_jacfwd = toy_plugin:strategy") -> None:
    (site / "toy_plugin.py").write_text(PLUGIN)
    dist = site / "toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[jacobench.strategies]\n{entry}\n")


def registry_in_subprocess(site: Path) -> list[str]:
    code = "import strategies; print(','.join(strategies.REGISTRY))"
    env_path = f"{site}{':' + sys.path[0] if sys.path[0] else ''}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": env_path, "PATH": ""}, cwd=Path(__file__).parents[1])
    return out.stdout.strip().split(",")


@pytest.mark.slow
def test_installed_plugin_is_discovered(tmp_path):
    install_plugin(tmp_path)
    names = registry_in_subprocess(tmp_path)
    assert "toy_jacfwd" in names and "vmap_jacrev" in names
    assert names.index("toy_jacfwd") > names.index("vmap_jacrev")  # plugins after the built-in strategies


@pytest.mark.slow
def test_plugin_clashing_with_builtin_is_skipped(tmp_path):
    install_plugin(tmp_path, entry="analytic = toy_plugin:strategy")
    names = registry_in_subprocess(tmp_path)
    assert names.count("analytic") == 1


@pytest.fixture
def restore_registry():
    saved = dict(strategies.REGISTRY)
    yield
    strategies.REGISTRY.clear()
    strategies.REGISTRY.update(saved)


def test_entry_point_strategy_computes_jacobian(tmp_path, monkeypatch, restore_registry):
    install_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = metadata.EntryPoint(name="toy_jacfwd", value="toy_plugin:strategy", group=strategies.ENTRY_POINT_GROUP)
    bad = metadata.EntryPoint(name="broken", value="no_such_module:thing", group=strategies.ENTRY_POINT_GROUP)
    with pytest.warns(UserWarning, match="broken"):
        added = strategies.load_entry_points([ep, bad])
    assert added == ["toy_jacfwd"]
    toy = strategies.REGISTRY["toy_jacfwd"]
    assert toy.name == "toy_jacfwd"
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(toy(model, x), strategies.REGISTRY["analytic"](model, x))
