"""The SGD update of a large flat parameter buffer on one thread (fastbp's kernel) against the same kernel split
over the cores with a Numba ``prange``: what a parallel update would save at XL (docs/benchmarks.md).

Usage: python scripts/parallel_update.py [--params 25175040] [--dtype float32] [--rounds 5]

The update reads the parameters and the gradient and writes the other parameter buffer, so it is bound by memory
bandwidth; this measures how much a second core adds. Both are timed alone, interleaved, medians over rounds.
"""

import argparse
import time

import numba
import numpy as np
from numba import njit, prange

from fastbp import bench
from fastbp.cli import _positive_int  # the command line's argparse type of counts
from fastbp.kernels.optimizers import _sgd_range


@njit
def serial(p, g, q):
    return _sgd_range(p, g, g, q, 1e-3, 1.0, 0.0, False, 0.0)


@njit(parallel=True)
def parallel(p, g, q):
    chunks = 2 * numba.get_num_threads()
    size = (p.shape[0] + chunks - 1) // chunks
    parts = np.zeros(chunks)
    for c in prange(chunks):
        s, e = c * size, min(p.shape[0], (c + 1) * size)
        parts[c] = _sgd_range(p[s:e], g[s:e], g[s:e], q[s:e], 1e-3, 1.0, 0.0, False, 0.0)
    return parts.sum()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=25_175_040, help="default: the XL network's count")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=_positive_int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    p, g = (rng.standard_normal(args.params).astype(args.dtype) for _ in range(2))
    q = np.empty_like(p)
    start = time.perf_counter()
    parallel(p, g, q)
    compile_s = time.perf_counter() - start
    serial(p, g, q)
    times = bench.interleaved(
        {"1 thread": (lambda: serial(p, g, q), 1), "prange": (lambda: parallel(p, g, q), 1)}, args.rounds, 0.3
    )
    print(f"{args.params} {args.dtype} parameters, {numba.get_num_threads()} threads ({numba.threading_layer()})")
    print(f"parallel kernel compiled in {compile_s:.2f} s")
    for name, ts in times.items():
        print(f"{name}: {1e3 * np.median(ts):.2f} ms per update (median of {args.rounds})")


if __name__ == "__main__":
    main()
