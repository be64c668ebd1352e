"""The direct BLAS binding against NumPy's matmul."""

import itertools

import numpy as np
import pytest
from conftest import RTOL, rel_err

from fastbp.kernels.gemm import BLAS_GEMM, _gemm


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("trans_a", "trans_b"), list(itertools.product([0, 1], repeat=2)))
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (5, 3, 7), (1, 13, 2), (64, 17, 129)])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)])
def test_gemm_matches_numpy(dtype, trans_a, trans_b, m, n, k, alpha, beta, rng):
    A = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    B = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    C = rng.standard_normal((m, n)).astype(dtype)
    expected = alpha * ((A.T if trans_a else A) @ (B.T if trans_b else B)) + beta * C
    _gemm(BLAS_GEMM[C.dtype], trans_a, trans_b, alpha, A, B, beta, C)
    assert rel_err(C, expected) <= RTOL[dtype]


def test_gemm_with_beta_zero_ignores_nan_in_the_output(rng):
    A, B = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    C = np.full((4, 2), np.nan)
    _gemm(BLAS_GEMM[C.dtype], 0, 0, 1.0, A, B, 0.0, C)
    np.testing.assert_allclose(C, A @ B, rtol=RTOL["float64"])


def test_gemm_with_empty_inner_dimension(rng):
    C = np.ones((2, 3))
    _gemm(BLAS_GEMM[C.dtype], 0, 0, 1.0, np.zeros((2, 0)), np.zeros((0, 3)), 0.5, C)
    np.testing.assert_array_equal(C, 0.5)
    _gemm(BLAS_GEMM[C.dtype], 0, 0, 1.0, np.zeros((2, 0)), np.zeros((0, 3)), 0.0, C)
    np.testing.assert_array_equal(C, 0.0)


def test_gemm_writes_views_of_a_flat_buffer_in_place(rng):
    # The kernels call GEMM on reshaped slices of params/workspace: the result must land in the parent buffer.
    buf = np.zeros(20)
    C = buf[5:11].reshape(2, 3)
    A, B = rng.standard_normal((2, 4)), rng.standard_normal((4, 3))
    _gemm(BLAS_GEMM[C.dtype], 0, 0, 1.0, A, B, 0.0, C)
    np.testing.assert_allclose(buf[5:11].reshape(2, 3), A @ B, rtol=RTOL["float64"])
    assert not buf[:5].any() and not buf[11:].any()


def test_the_newest_openblas_of_the_wheels_is_chosen_with_its_batch_gemm():
    # NumPy's and SciPy's wheels ship OpenBLAS builds whose symbols carry the scipy_ prefix (NumPy's with 64-bit
    # integers); fastbp's GEMMs call the newest, and its batch GEMM pairs the backward pass's products. Another BLAS
    # (a conda NumPy and SciPy on MKL, say) has none: SciPy's cython_blas GEMM, and the pairs are two calls.
    from fastbp.kernels.gemm import BLAS_GEMM, BLAS_GEMM_BATCH, BLAS_LIBRARY, _scipy_openblas_builds

    builds = _scipy_openblas_builds()
    if not builds:
        pytest.skip("neither NumPy nor SciPy uses the OpenBLAS of their wheels here: no build to choose")
    newest = max(builds, key=lambda build: build[0])
    assert (BLAS_LIBRARY, BLAS_GEMM, BLAS_GEMM_BATCH) == newest[1:]
    assert all(build[3][np.dtype(np.float32)] and build[3][np.dtype(np.float64)] for build in builds)


def _builds():
    """(id, gemm, batch) of each OpenBLAS build of the wheels that is loaded (both integer widths where NumPy's and
    SciPy's are), for the tests of the calls."""
    from fastbp.kernels.gemm import _scipy_openblas_builds

    return [(f"{'ilp64' if key[1] else 'lp64'}-{'.'.join(map(str, key[0]))}", gemms, batches)
            for key, _, gemms, batches in _scipy_openblas_builds()]  # fmt: skip


@pytest.mark.parametrize("build", _builds(), ids=lambda build: build[0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_each_openblas_build_of_the_wheels_computes_the_products_and_the_pair(build, dtype, rng):
    # the Fortran GEMM's integers are 64-bit slots that an LP64 build reads the low half of; the batch GEMM's arrays
    # are laid out for the build's own width (the sign of its address)
    import numba

    from fastbp.kernels.gemm import _gemm_pair

    _, gemms, batches = build

    @numba.njit
    def pair(gemm, batch_gemm, A, D, dW, W, G, beta):
        _gemm_pair(gemm, batch_gemm, (1, 0, A, D, beta, dW), (0, 1, D, W, 0.0, G))

    n, fan_in, fan_out = 100, 120, 101  # above PAIR_MIN_MNK: the batch GEMM runs
    A, D = rng.standard_normal((n, fan_in)).astype(dtype), rng.standard_normal((n, fan_out)).astype(dtype)
    W, dW = rng.standard_normal((fan_in, fan_out)).astype(dtype), rng.standard_normal((fan_in, fan_out)).astype(dtype)
    expected_dW, expected_G = A.T @ D + dW, D @ W.T
    G = np.full((n, fan_in), np.nan, dtype)
    pair(gemms[np.dtype(dtype)], batches[np.dtype(dtype)], A, D, dW, W, G, 1.0)
    assert rel_err(dW, expected_dW) <= RTOL[dtype] and rel_err(G, expected_G) <= RTOL[dtype]
    C = np.full((n, fan_out), np.nan, dtype)
    _gemm(gemms[np.dtype(dtype)], 0, 0, 1.0, A, W, 0.0, C)
    assert rel_err(C, A @ W) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("n", "fan_in", "fan_out"), [(32, 64, 10), (100, 100, 100), (100, 100, 101), (7, 600, 300)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("batch", [True, False])
def test_gemm_pair_computes_both_products(dtype, n, fan_in, fan_out, beta, batch, rng):
    # The backward pass's pair: dW (+)= A.T @ D and G = D @ W.T, below and above the size that goes to the batch
    # GEMM (PAIR_MIN_MNK = 100^3 multiply-adds), with the batch GEMM and without one (two calls).
    import numba

    from fastbp.kernels.gemm import BLAS_GEMM_BATCH, PAIR_MIN_MNK, _gemm_pair

    @numba.njit
    def pair(gemm, batch_gemm, A, D, dW, W, G, beta):
        _gemm_pair(gemm, batch_gemm, (1, 0, A, D, beta, dW), (0, 1, D, W, 0.0, G))

    A, D = rng.standard_normal((n, fan_in)).astype(dtype), rng.standard_normal((n, fan_out)).astype(dtype)
    W, dW = rng.standard_normal((fan_in, fan_out)).astype(dtype), rng.standard_normal((fan_in, fan_out)).astype(dtype)
    expected_dW, expected_G = A.T @ D + beta * dW, D @ W.T
    G = np.full((n, fan_in), np.nan, dtype)  # beta 0: not read
    pair(BLAS_GEMM[np.dtype(dtype)], BLAS_GEMM_BATCH[np.dtype(dtype)] if batch else 0, A, D, dW, W, G, beta)
    assert rel_err(dW, expected_dW) <= RTOL[dtype] and rel_err(G, expected_G) <= RTOL[dtype]
    assert (n * fan_in * fan_out > PAIR_MIN_MNK) == ((n, fan_in, fan_out) in [(100, 100, 101), (7, 600, 300)])
