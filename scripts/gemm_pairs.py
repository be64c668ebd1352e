"""Pairs of products of the backward pass: the batch GEMM of SciPy's OpenBLAS against two ordinary calls.

For each layer shape of the benchmarks, the pair the backward pass makes of a layer (its weight gradient ``dW =
A.T @ D``, fan_in x fan_out, and the error below it ``G = D @ W.T``, rows x fan_in) is timed from compiled code with
``_gemm_pair`` (fastbp/kernels/gemm.py) both ways: one call of the batch GEMM (``BLAS_GEMM_BATCH``), which runs the
two products at once, each on one of the BLAS's threads; and two ordinary calls, each on all of them. The two are
interleaved in rounds; medians. Pairs of at most ``PAIR_MIN_MNK`` multiply-adds are left out: the backward pass
never sends them to the batch GEMM. Usage: ``python scripts/gemm_pairs.py [--dtypes float32,float64] [--rounds
7]``; run it with ``OPENBLAS_CORETYPE`` unset, like the benchmarks.
"""

import argparse
import itertools
import time

import numpy as np
from numba import njit

from fastbp import bench
from fastbp.cli import _positive_int  # the command line's argparse type of counts
from fastbp.kernels.gemm import BLAS_GEMM, BLAS_GEMM_BATCH, PAIR_MIN_MNK, _gemm_pair
from fastbp.kernels.layout import _unowned


@njit
def _pairs(k, gemm, batch, A, D, dW, W, G):
    A, D, dW, W, G = _unowned(A), _unowned(D), _unowned(dW), _unowned(W), _unowned(G)
    for _ in range(k):
        _gemm_pair(gemm, batch, (1, 0, A, D, 0.0, dW), (0, 1, D, W, 0.0, G))


def layer_pairs():
    """(shape, rows, fan_in, fan_out) of every pair of the benchmark shapes that goes to the batch GEMM."""
    pairs = []
    for shape in [*bench.SHAPES, *bench.DEEP]:
        sizes, rows, _ = bench.shape_of(shape)
        for fan_in, fan_out in itertools.pairwise(sizes[1:]):  # layer 1 and up: a layer below to pass the error to
            if rows * fan_in * fan_out > PAIR_MIN_MNK and (rows, fan_in, fan_out) not in [p[1:] for p in pairs]:
                pairs.append((shape, rows, fan_in, fan_out))
    return pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--rounds", type=_positive_int, default=7)
    args = parser.parse_args()
    print(f"{bench.machine()}; medians of {args.rounds} interleaved rounds, us per pair")
    print("| dtype | shape | pair (rows, fan_in, fan_out) | two calls | batch GEMM | two calls / batch GEMM |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for dtype in args.dtypes.split(","):
        gemm, batch = BLAS_GEMM[np.dtype(dtype)], BLAS_GEMM_BATCH[np.dtype(dtype)]
        if not batch:
            raise SystemExit("no batch GEMM in the loaded BLAS: nothing to compare")
        for shape, rows, fan_in, fan_out in layer_pairs():
            A = rng.standard_normal((rows, fan_in)).astype(dtype)
            D = rng.standard_normal((rows, fan_out)).astype(dtype)
            W = rng.standard_normal((fan_in, fan_out)).astype(dtype)
            dW, G = np.empty_like(W), np.empty_like(A)
            k = max(3, int(3e8 / (4 * rows * fan_in * fan_out)))
            times = {0: [], batch: []}
            for _ in range(args.rounds):
                for address in times:
                    _pairs(1, gemm, address, A, D, dW, W, G)
                    start = time.perf_counter()
                    _pairs(k, gemm, address, A, D, dW, W, G)
                    times[address].append((time.perf_counter() - start) / k * 1e6)
            two, one = np.median(times[0]), np.median(times[batch])
            print(f"| {dtype} | {shape} | {rows} x {fan_in} x {fan_out} | {two:.1f} | {one:.1f} | {two / one:.2f}x |")


if __name__ == "__main__":
    main()
