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
