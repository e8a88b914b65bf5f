"""The benchmark suite: one pytest-benchmark test per strategy × device × case.

Parametrized by conftest.py from the run's grid (ids read ``vmap_jacrev-cpu-mlp-B64-H256-in16-out16``).
Run it through ``make bench`` / ``python -m bench run``, or ``pytest bench/suite.py --grid smoke``.
"""

import pytest

from bench import results


def test_jacobian(benchmark, jacobench, strategy, device, case):
    record = jacobench.runner.run_case(benchmark, strategy, case, device)
    if record["status"] == "ok":
        benchmark.extra_info.update({k: v for k, v in record.items() if k not in ("summary", "cost")})
    results.append_case(jacobench.run.cases_path, record)  # flushed now: a kill -9 later loses nothing
    jacobench.progress.case_done(record)
    if record["status"] != "ok":
        pytest.skip(f"{record['status']}: {record['message']}")
