"""Models the suite never saw, through MODEL=file.py:factory: coupled in one direction, NaN, squeezing, odd dtypes.

Each runs the real CLI in a scratch folder; every planned case must be in cases.jsonl once, with a status and a
message that says what happened.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import strategies
from bench import results
from bench.cli import main
from bench.schema import case_key
from tests.helpers import ONE_PROCESS, run_bench

pytestmark = pytest.mark.slow  # every test here runs `python -m bench` in another process

MODELS = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class Mixed(nn.Module):
        """y[b] = tanh(Linear(mix(x))[b])."""

        def __init__(self, i, o, mix):
            super().__init__()
            self.lin, self.mix = nn.Linear(i, o), mix

        def forward(self, x):
            return torch.tanh(self.lin(self.mix(x)))


    def reverse_cumsum(i, h, o):
        """Sample 0 changes row 0 only; the last sample changes every row."""
        return Mixed(i, o, lambda x: x.flip(0).cumsum(0).flip(0))


    class SqrtNaN(nn.Module):
        def __init__(self, i, h, o):
            super().__init__()
            self.lin = nn.Linear(i, o)

        def forward(self, x):
            return self.lin(x) * torch.sqrt(1 - x[:, :1])  # NaN where x[:, 0] > 1


    def nan(i, h, o):
        return SqrtNaN(i, h, o)


    class Squeezer(nn.Module):
        def __init__(self, i, h, o):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(i, h), nn.Tanh(), nn.Linear(h, o))

        def forward(self, x):
            return self.net(x).squeeze()


    def squeeze(i, h, o):
        return Squeezer(i, h, o)
    '''
)
EAGER = [n for n in strategies.names("jacobian") if not strategies.REGISTRY[n].compiled]  # compiled: where a grid says
TWO_SHAPES = """
[base]
batch = 4
hidden = 8
in_dim = 3
out_dim = 5
[[also]]
base = { in_dim = 5, out_dim = 3 }
[budget]
target_s = 0.01
"""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user-models")
    (root / "user.py").write_text(MODELS)
    (root / "two.toml").write_text(TWO_SHAPES)
    return root


def summary(root: Path, run_id: str) -> pd.DataFrame:
    return pd.read_csv(root / "results" / run_id / "summary.csv")


def test_one_directional_coupling_only_the_exact_strategy_is_ok(scratch):
    proc = run_bench(scratch, "run", "--grid", "two.toml", "--model", "user.py:reverse_cumsum", "--run", "rev",
                     "--no-report")
    assert proc.returncode == 0, proc.stderr
    s = summary(scratch, "rev")
    assert len(s) == 2 * len(EAGER)
    for _, shape in s.groupby(["in_dim", "out_dim"]):
        status = dict(zip(shape["strategy"], shape["status"], strict=True))
        assert status.pop("jacobian_diagonal") == "ok"  # the one strategy that is right on coupled samples
        assert status.pop("analytic") == "unsupported"
        assert set(status.values()) == {"wrong"}, status
    records = results.read_cases(scratch / "results" / "rev" / "cases.jsonl")
    assert all(r.coupled is True for r in records if r.status != "unsupported")


def test_the_models_own_nan_is_an_error_and_no_case_is_lost(scratch):
    proc = run_bench(scratch, "run", "--grid", "smoke", "--model", "user.py:nan", "--run", "nan", *ONE_PROCESS)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    folder = scratch / "results" / "nan"
    lines = (folder / "cases.jsonl").read_text().splitlines()
    env = json.loads((folder / "env.json").read_text())
    keys = [case_key(json.loads(line)) for line in lines]
    assert len(keys) == len(set(keys)) == env["planned_cases"] == 3 * len(EAGER)
    s = summary(scratch, "nan")
    errors = s[s["status"] == "error"]
    assert len(errors) and len(errors) % len(EAGER) == 0  # every strategy of the shapes with NaN
    assert errors["message"].str.contains(r"model itself returns NaN or inf \(in float64\) for \d+ of \d+ sample").all()
    assert (s["status"] == "ok").any()
    n = env["planned_cases"]
    assert f"{n} cases of {n} planned" in (folder / "report.md").read_text()


def test_a_squeezing_model_gets_messages_that_say_so(scratch):
    proc = run_bench(scratch, "run", "--grid", "smoke", "--model", "user.py:squeeze", "--run", "sq", "--no-report",
                     *ONE_PROCESS)
    assert proc.returncode == 0, proc.stderr
    assert "fails on a one-sample batch" in proc.stdout
    s = summary(scratch, "sq")
    one = s[s["batch"] == 1]
    assert (one["status"] == "error").all()
    assert one["message"].str.contains(r"maps \(1, 3\) to \(2,\), expected \(1, 2\).*squeeze.*one-sample").all()
    out1 = s[(s["out_dim"] == 1) & (s["batch"] == 8)]
    assert out1["message"].str.contains(r"maps \(8, 3\) to \(8,\)").all()
    assert "IndexError" not in " ".join(s["message"].fillna(""))


def test_fidelity_runs_on_a_user_model_run(scratch, capsys):
    folder = scratch / "results" / "rev"
    if not folder.exists():
        pytest.skip("needs the run of test_one_directional_coupling_only_the_exact_strategy_is_ok")
    assert main(["fidelity", str(folder), "--cases", "1", "--repeats", "1"]) == 0
    assert "jacobian_diagonal-cpu-user.reverse_cumsum" in capsys.readouterr().out
    moved = scratch / "results" / "moved"
    moved.mkdir()
    (moved / "cases.jsonl").write_text((folder / "cases.jsonl").read_text())
    env = json.loads((folder / "env.json").read_text())
    assert env["models"]["user.reverse_cumsum"] == f"{scratch / 'user.py'}:reverse_cumsum"
    env["models"]["user.reverse_cumsum"] = "/gone/user.py:reverse_cumsum"
    (moved / "env.json").write_text(json.dumps(env))
    assert main(["fidelity", str(moved)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jacobench: error: MODEL=/gone/user.py:reverse_cumsum: file /gone/user.py not found"]


def test_dtype_and_threads_apply_to_the_whole_run(scratch):
    proc = run_bench(scratch, "run", "--grid", "smoke", "--strategies", "analytic,grad_loop", "--dtype", "float64",
                     "--threads", "1", "--run", "f64", "--no-report", *ONE_PROCESS)
    assert proc.returncode == 0, proc.stderr
    folder = scratch / "results" / "f64"
    env = json.loads((folder / "env.json").read_text())
    assert env["threads"] == 1 and env["settings"]["dtype"] == "float64"
    assert env["fingerprint"]["dtypes"] == ["float64"]
    s = summary(scratch, "f64")
    assert set(s["dtype"]) == {"float64"} and (s["status"] == "ok").any()
