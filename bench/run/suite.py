"""The benchmark suite: one pytest-benchmark test per device and shape, its strategies timed together, interleaved.

Parametrized by the run's plugin (bench/run/plugin.py); ids read ``cpu-mlp-B64-H256-in16-out16``; benchmark.json keeps
one entry per case (``test_shape[vmap_jacrev-cpu-mlp-B64-H256-in16-out16]``) beside each shape's forward pass.
Run it through ``make bench`` / ``python -m bench run``, or ``pytest bench/run/suite.py --grid smoke``.
"""


def test_shape(benchmark, jacobench, device, case, names):
    jacobench.measure_shape(benchmark, device, case, names)
