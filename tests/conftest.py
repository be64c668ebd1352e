"""Shared fixtures and the ONE table of numerical tolerances, each with its reason."""

import numpy as np
import pytest

#: Compiled kernels vs the NumPy reference, same dtype, relative error ||a - b|| / ||b||. The two paths do the
#: same arithmetic in a different order (BLAS blocking of two different OpenBLAS builds, fused epilogues,
#: float64 accumulation of the loss), so they differ by a few units in the last place, amplified by depth.
RTOL = {"float32": 1e-5, "float64": 1e-12}

#: Reference vs central finite differences in float64 (step FD_STEP): truncation error O(h^2) ~ 1e-12 and
#: rounding error O(eps / h) ~ 1e-10 relative, so 1e-6 leaves ample room while any wrong derivative term
#: (an error of order 1) fails by many orders of magnitude.
FD_RTOL = 1e-6
FD_STEP = 1e-6

#: Hand-worked examples use numbers exactly representable in binary, so the arithmetic is exact in float64;
#: only transcendental functions (exp) bring rounding, bounded by a few ulps.
HAND_RTOL = 1e-14

HIDDEN = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")

#: Every output activation x loss pair: the canonical ones and the general BP1 form.
PAIRS = (
    ("softmax", "cross_entropy"),
    ("sigmoid", "binary_cross_entropy"),
    ("identity", "squared_error"),
    ("sigmoid", "squared_error"),
    ("tanh", "squared_error"),
    ("relu", "squared_error"),
    ("leaky_relu", "squared_error"),
    ("softmax", "squared_error"),
)

DTYPES = ("float32", "float64")


def rel_err(a, b):
    """||a - b|| / ||b|| in float64 (0 when both are 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(b)
    diff = np.linalg.norm(a - b)
    return diff / denom if denom > 0 else diff


def make_batch(net, n, rng, labels=True):
    """A random batch (X, Y) that suits the network's output: class labels (or one-hot) for softmax,
    values in (0, 1) for sigmoid, standard normal otherwise."""
    X = rng.standard_normal((n, net.n_in))
    if net.output == "softmax":
        y = rng.integers(0, net.n_out, n)
        return X, (y if labels else np.eye(net.n_out)[y])
    if net.output == "sigmoid":
        return X, rng.random((n, net.n_out))
    return X, rng.standard_normal((n, net.n_out))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
