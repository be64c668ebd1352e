"""Whole training steps of fastbp and its peers, per cell of the matrix (docs/benchmarks.md).

Every contender's timed call runs bench.STEPS_PER_CALL steps, over the same mini-batches, so that the times of a
group compare directly. Divide by it for the time per step.
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
    steps, _ = bench.CONTENDERS[contender](sizes, batch, dtype)  # each call: the STEPS_PER_CALL batches
    benchmark.group = f"{bench.STEPS_PER_CALL} steps|{shape}-{dtype}"
    benchmark.extra_info.update(steps=bench.STEPS_PER_CALL, flops_per_step=bench.flops_per_step(sizes, batch))
    steps()  # warm-up (compilation, caches)
    benchmark(steps)
