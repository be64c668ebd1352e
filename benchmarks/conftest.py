"""pytest-benchmark suite: run with ``pytest benchmarks/ --benchmark-only`` (the normal test command does not).

Groups are named ``kernel|shape-dtype`` so that contenders of one cell are compared side by side.
"""

import numpy as np
import pytest

from fastbp.bench import MATRIX, shape_of


def cells(plain_only=False):
    """The (shape, dtype) cells of the matrix; ``plain_only``: without the shapes with layer options (D), whose
    plain layers are M's (a kernel timed there would repeat M under D's name)."""
    return [
        pytest.param(shape, dtype, id=f"{shape}-{dtype}")
        for shape, dtype in MATRIX
        if not (plain_only and shape_of(shape)[2])
    ]


def batch_data(shape, dtype, steps=1):
    """(sizes, batch, X, y) of a shape of the matrix (its layer options, if any, are the caller's to apply)."""
    sizes, batch, _ = shape_of(shape)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch * steps, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch * steps)
    return sizes, batch, X, y
