"""The benchmark suite: one pytest-benchmark test per strategy × device × case.

Parametrized by the run's plugin (bench/run/plugin.py); ids read ``vmap_jacrev-cpu-mlp-B64-H256-in16-out16``.
Run it through ``make bench`` / ``python -m bench run``, or ``pytest bench/run/suite.py --grid smoke``.
"""


def test_jacobian(benchmark, jacobench, strategy, device, case):
    jacobench.measure_case(benchmark, strategy, device, case)
