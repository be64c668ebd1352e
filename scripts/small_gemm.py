"""Small GEMMs: OpenBLAS called from compiled code (as every pass calls it, fastbp/kernels/gemm.py) against compiled
loops, per shape: the products of one training step at S, M and L, and a sweep of small cubes for the crossover.

Each product is timed in a loop from compiled code (best of 7 runs), on the operands' own shapes and row-major
layouts: ``NN`` is ``C = A @ B`` (the forward pass), ``TN`` is ``C = A.T @ B`` (the weight gradients, BP4), ``NT``
is ``C = A @ B.T`` (the deltas, BP2). The loops are the ones LLVM vectorises best for each layout: for ``NN`` an
axpy over C's row with four rows of B per pass (so that each C value is loaded and stored once per four products),
for ``TN`` an axpy over C's rows per row of A, for ``NT`` a dot product of contiguous rows. Usage: ``python
scripts/small_gemm.py [--dtypes float32,float64]``; run it with ``OPENBLAS_CORETYPE`` unset, like the benchmarks.
"""

import argparse
import itertools
import time

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from fastbp import _config, bench
from fastbp.kernels.gemm import BLAS_GEMM, _gemm
from fastbp.kernels.layout import _unowned

_FLAGS = {"fastmath": set(_config.FASTMATH), "error_model": "numpy"}


@njit(inline="always", **_FLAGS)
def _nn(A, B, C):
    m, n = C.shape
    k = A.shape[1]
    k4 = k - k % 4
    for i in range(m):
        c = C[i]
        for j in range(n):
            c[j] = 0.0
        for p in range(0, k4, 4):
            a0, a1, a2, a3 = A[i, p], A[i, p + 1], A[i, p + 2], A[i, p + 3]
            b0, b1, b2, b3 = B[p], B[p + 1], B[p + 2], B[p + 3]
            for j in range(n):
                c[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]
        for p in range(k4, k):
            a, b = A[i, p], B[p]
            for j in range(n):
                c[j] += a * b[j]


@njit(inline="always", **_FLAGS)
def _tn(A, B, C):
    m, n = C.shape
    for p in range(m):
        for j in range(n):
            C[p, j] = 0.0
    for i in range(A.shape[0]):
        b = B[i]
        for p in range(m):
            a, c = A[i, p], C[p]
            for j in range(n):
                c[j] += a * b[j]


@njit(inline="always", **_FLAGS)
def _nt(A, B, C):
    m, n = C.shape
    for i in range(m):
        a = A[i]
        for j in range(n):
            b = B[j]
            acc = a[0] * 0  # in the dtype
            for p in range(A.shape[1]):
                acc += a[p] * b[p]
            C[i, j] = acc


@njit(**_FLAGS)
def _loop(kind, reps, A, B, C):
    A, B, C = _unowned(A), _unowned(B), _unowned(C)  # no reference counts, as the passes' arrays
    for _ in range(reps):
        if kind == 0:
            _nn(A, B, C)
        elif kind == 1:
            _tn(A, B, C)
        else:
            _nt(A, B, C)


@njit(**_FLAGS)
def _blas(gemm, kind, reps, A, B, C):
    A, B, C = _unowned(A), _unowned(B), _unowned(C)
    for _ in range(reps):
        _gemm(gemm, 1 if kind == 1 else 0, 1 if kind == 2 else 0, 1.0, A, B, 0.0, C)


KINDS = {"NN": 0, "TN": 1, "NT": 2}


def operands(kind, m, n, k, dtype, rng):
    """A, B, C of ``C (m, n) = op(A) @ op(B)`` with inner size k."""
    shape_a = (k, m) if kind == "TN" else (m, k)
    shape_b = (n, k) if kind == "NT" else (k, n)
    A, B = (rng.standard_normal(s).astype(dtype) for s in (shape_a, shape_b))
    return A, B, np.zeros((m, n), dtype)


def best(fn, reps):
    fn(1)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        fn(reps)
        times.append((time.perf_counter() - start) / reps)
    return min(times)


def measure(kind, m, n, k, dtype):
    """(OpenBLAS seconds, OpenBLAS on one thread, loop seconds, relative difference of the results)."""
    A, B, C = operands(kind, m, n, k, dtype, np.random.default_rng(0))
    C_loop = C.copy()
    gemm, code = BLAS_GEMM[np.dtype(dtype)], KINDS[kind]
    reps = max(3, int(3e7 / (m * n * k)))
    blas = best(lambda r: _blas(gemm, code, r, A, B, C), reps)
    with threadpool_limits(1, user_api="blas"):
        blas1 = best(lambda r: _blas(gemm, code, r, A, B, C), reps)
    loop = best(lambda r: _loop(code, r, A, B, C_loop), reps)
    diff = float(np.abs(C - C_loop).max() / max(np.abs(C).max(), 1e-30))
    return blas, blas1, loop, diff


def step_products(shape):
    """(name, kind, m, n, k) of every GEMM of a training step of a shape of docs/benchmarks.md."""
    sizes, n = bench.SHAPES[shape]
    products = []
    for l, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        products.append((f"forward {l}", "NN", n, fan_out, fan_in))
        products.append((f"dW {l}", "TN", fan_in, fan_out, n))
        if l:
            products.append((f"delta {l - 1}", "NT", n, fan_in, fan_out))
    return products


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--shapes", default="S,M,L")
    args = parser.parse_args()
    print("| dtype | product | kind | m x n x k | OpenBLAS us | OpenBLAS 1 thread us | loop us | faster |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        rows = [
            (f"{shape} {name}", kind, m, n, k)
            for shape in args.shapes.split(",")
            for name, kind, m, n, k in step_products(shape)
        ]
        rows += [(f"cube {s}", kind, s, s, s) for kind in KINDS for s in (2, 4, 8, 12, 16, 32)]
        for name, kind, m, n, k in rows:
            blas, blas1, loop, diff = measure(kind, m, n, k, dtype)
            faster = f"loop {blas / loop:.1f}x" if loop < blas else f"OpenBLAS {loop / blas:.1f}x"
            print(
                f"| {dtype} | {name} | {kind} | {m} x {n} x {k} | {1e6 * blas:.3f} | {1e6 * blas1:.3f} | "
                f"{1e6 * loop:.3f} | {faster} |",
                flush=True,
            )
            assert diff < (1e-4 if dtype == "float32" else 1e-12), (name, diff)  # both computed the same product


if __name__ == "__main__":
    main()
