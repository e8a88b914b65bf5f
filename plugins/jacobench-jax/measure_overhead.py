"""What the peer's wrapper adds to JAX's own call: the jitted program alone (JAX arrays in, block_until_ready) against
the program with its result handed to torch (DLPack), and against the whole strategy call (cache checks: the model's
modules and weights unchanged, the input unchanged; then the program and the conversion), at a few shapes.

    python plugins/jacobench-jax/measure_overhead.py [STRATEGY ...]

One process, rounds interleaved in a shuffled order, the median per call of each; run it under the machine's lock
(flock /tmp/jacobench-cpu.lock ...) on a shared machine.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable

import torch

import strategies
from bench.schema import Sizes
from bench.spec import models

SHAPES = [("mlp", Sizes(16, 64, 16, 16)), ("mlp", Sizes(512, 64, 16, 16)), ("mlp", Sizes(4096, 64, 16, 16)),
          ("pinn", Sizes(16, 64, 2, 1)), ("pinn", Sizes(4096, 64, 2, 1))]
ROUNDS = 21
ROUND_S = 0.02


def medians(calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median seconds per call of each, from interleaved rounds of at least ROUND_S."""
    counts = {}
    for name, call in calls.items():
        call()
        start = time.perf_counter()
        call()
        counts[name] = max(1, int(ROUND_S / max(time.perf_counter() - start, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS):
        for name in random.sample(list(calls), len(calls)):
            start = time.perf_counter()
            for _ in range(counts[name]):
                calls[name]()
            times[name].append((time.perf_counter() - start) / counts[name])
    return {name: statistics.median(t) for name, t in times.items()}


def three_ways(strategy: strategies.Strategy, preset: str, sizes: Sizes) -> dict[str, float]:
    from jacobench_jax import backend, peers

    model, x = models.build(models.resolve(preset), sizes, "cpu", torch.float32)
    strategy.fn(model, x)  # compiles
    program, params, x_jax = peers.prepared(model, x, strategy.name, getattr(peers, strategy.name.removeprefix(
        "jax_")))
    return medians({
        "jitted program alone": lambda: program(params, x_jax).block_until_ready(),
        "+ result to torch": lambda: backend.to_torch(program(params, x_jax), x.device),
        "whole strategy call": lambda: strategy.fn(model, x)})


def main(names: list[str]) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| strategy | model | B | H | in | out | jitted program alone | + result to torch | whole call |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        strategy = strategies.REGISTRY[name]
        for preset, sizes in SHAPES:
            if strategy.quantity != "jacobian" and sizes.out_dim != 1:
                continue
            t = three_ways(strategy, preset, sizes)
            alone = t["jitted program alone"]
            cells = [f"{v * 1e6:.1f} µs" + ("" if k == "jitted program alone" else f" (×{v / alone:.3f})")
                     for k, v in t.items()]
            print(f"| {name} | {preset} | {' | '.join(map(str, sizes))} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["jax_vmap_jacrev", "jax_sum_jacrev", "jax_folx_laplacian"])
