"""Whole training steps of fastbp and its peers, per cell of the matrix (docs/benchmarks.md).

Every contender's timed call runs bench.STEPS_PER_CALL steps, over the same mini-batches, so that the times of a
group compare directly. Divide by it for the time per step.
"""

import pytest

from fastbp import bench

CONTENDERS = ["fastbp", "numpy", "torch", "jax"]


def _cells():
    """(shape, dtype, contender) of every cell of the matrix; a shape with layer options (D) has the contenders of
    ``fastbp bench`` there: fastbp, its plain network, and torch and JAX with the same options."""
    params = []
    for shape, dtype in bench.MATRIX:
        names = bench.DEEP_CONTENDERS if bench.shape_of(shape)[2] else CONTENDERS
        params += [pytest.param(shape, dtype, name, id=f"{shape}-{dtype}-{name}") for name in names]
    return params


@pytest.mark.parametrize(("shape", "dtype", "contender"), _cells())
def test_training_step(benchmark, shape, dtype, contender):
    if contender in ("torch", "jax"):
        pytest.importorskip(contender, reason=f"{contender} is not installed")
    sizes, batch, options = bench.shape_of(shape)
    with_options = {"options": options} if options else {}
    # each call: the STEPS_PER_CALL batches
    steps, _ = bench.CONTENDERS[contender](sizes, batch, dtype, **with_options)
    benchmark.group = f"{bench.STEPS_PER_CALL} steps|{shape}-{dtype}"
    benchmark.extra_info.update(steps=bench.STEPS_PER_CALL, flops_per_step=bench.flops_per_step(sizes, batch))
    steps()  # warm-up (compilation, caches)
    benchmark(steps)
