"""Whole training steps of fastbp and its peers, per cell of the matrix (BENCHMARKS.md).

fastbp's compiled epoch loop runs bench.STEPS_PER_CALL steps per call; so that the times of a group compare
directly, every peer's timed call also runs that many steps. Divide by it for the time per step.
"""

import pytest
from conftest import cells

from fastbp import bench

CONTENDERS = ["fastbp", "numpy", "torch", "jax"]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize(("shape", "dtype"), cells())
def test_training_step(benchmark, shape, dtype, contender):
    if contender in ("torch", "jax"):
        pytest.importorskip(contender, reason=f"{contender} is not installed")
    sizes, batch = bench.SHAPES[shape]
    step, steps_per_call = bench.CONTENDERS[contender](sizes, batch, dtype)
    repeat = bench.STEPS_PER_CALL // steps_per_call

    def steps():
        for _ in range(repeat):
            step()

    benchmark.group = f"{bench.STEPS_PER_CALL} steps|{shape}-{dtype}"
    benchmark.extra_info.update(steps=bench.STEPS_PER_CALL, flops_per_step=bench.flops_per_step(sizes, batch))
    steps()  # warm-up (compilation, caches)
    benchmark(steps)
