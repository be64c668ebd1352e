"""Where the time of a training step goes: each GEMM of the step timed alone (from compiled code, same shapes,
transposes and thread count as the kernels use) against the whole step of the compiled epoch loop, same run.

Usage: python scripts/profile_step.py [--shapes S,M,L,XL] [--dtype float32] [--rounds 5]

The GEMM share of the step shows what limits it: when it is close to 100%, the step runs at the speed of the
BLAS GEMM on these shapes, and only a faster GEMM can make it faster. The GEMMs' own GFLOP/s are shown against the
2048 x 2048 peak of the same BLAS. A second figure runs all GEMMs of a step in sequence on the step's own buffers
(so each GEMM meets the caches as in a real step, not warmed by its own repetition): the time a step of ANY
implementation on this BLAS needs for its matrix products alone, the floor under the step time.
"""

import argparse
import itertools

import numpy as np
from numba import njit

from fastbp import bench
from fastbp.kernels.gemm import _gemm


@njit
def _repeat_gemm(k, trans_a, trans_b, A, B, C):
    for _ in range(k):
        _gemm(trans_a, trans_b, 1.0, A, B, 0.0, C)


@njit
def _gemm_sequence(k, X, Ws, As, Ds, dWs):
    """The GEMMs of k training steps in order: forward, then per layer from the top dW and the delta below."""
    L = len(Ws)
    for _ in range(k):
        _gemm(0, 0, 1.0, X, Ws[0], 0.0, As[0])
        for l in range(1, L):
            _gemm(0, 0, 1.0, As[l - 1], Ws[l], 0.0, As[l])
        for l in range(L - 1, 0, -1):
            _gemm(1, 0, 1.0, As[l - 1], Ds[l], 0.0, dWs[l])
            _gemm(0, 1, 1.0, Ds[l], Ws[l], 0.0, Ds[l - 1])
        _gemm(1, 0, 1.0, X, Ds[0], 0.0, dWs[0])


def gemm_sequence_time(sizes, n, dtype, min_time=0.2):
    """Seconds per step of the step's GEMMs run in sequence on distinct buffers (see the module docstring)."""
    rng = np.random.default_rng(0)
    pairs = list(itertools.pairwise(sizes))
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    Ws = tuple(rng.standard_normal((a, b)).astype(dtype) for a, b in pairs)
    As = tuple(np.empty((n, b), dtype) for _, b in pairs)
    Ds = tuple(np.empty((n, b), dtype) for _, b in pairs)
    dWs = tuple(np.empty_like(W) for W in Ws)
    reps = max(1, int(2e8 / bench.flops_per_step(sizes, n)))
    return bench.per_call(lambda: _gemm_sequence(reps, X, Ws, As, Ds, dWs), min_time) / reps


def step_gemms(sizes, n):
    """(name, m, k, n_cols, trans_a, trans_b) of every GEMM of one step: forward, weight gradients, deltas."""
    gemms = []
    for l, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        gemms.append((f"forward {l}", n, fan_in, fan_out, 0, 0))
        gemms.append((f"dW {l}", fan_in, n, fan_out, 1, 0))
        if l > 0:
            gemms.append((f"delta {l - 1}", n, fan_out, fan_in, 0, 1))
    return gemms


def gemm_time(m, k, n, trans_a, trans_b, dtype, min_time=0.1):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    B = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    C = np.empty((m, n), dtype=dtype)
    reps = max(1, int(2e8 / (2 * m * n * k)))
    return bench.per_call(lambda: _repeat_gemm(reps, trans_a, trans_b, A, B, C), min_time) / reps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="S,M,L,XL")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    peak = bench.gemm_peak(args.dtype)
    print(f"{bench.machine()}\nGEMM peak ({args.dtype}, 2048^3): {peak:.0f} GFLOP/s")
    for shape in args.shapes.split(","):
        sizes, batch = bench.SHAPES[shape]
        step, per = bench.fastbp_step(sizes, batch, args.dtype)
        gemms = step_gemms(sizes, batch)
        steps, totals, sequences, parts = [], [], [], {g[0]: [] for g in gemms}
        for _ in range(args.rounds):
            steps.append(bench.per_call(step, 0.2) / per)
            sequences.append(gemm_sequence_time(sizes, batch, args.dtype))
            total = 0.0
            for name, m, k, n, ta, tb in gemms:
                t = gemm_time(m, k, n, ta, tb, args.dtype)
                parts[name].append(t)
                total += t
            totals.append(total)
        step_s, gemm_s = np.median(steps), np.median(totals)
        flops = sum(2 * m * k * n for _, m, k, n, _, _ in gemms)
        print(
            f"\n{shape} {'-'.join(map(str, sizes))} batch {batch}: step {1e6 * step_s:.1f} us, its GEMMs alone "
            f"{1e6 * gemm_s:.1f} us = {100 * gemm_s / step_s:.0f}% of the step; GEMMs at {flops / gemm_s / 1e9:.0f} "
            f"GFLOP/s = {100 * flops / gemm_s / 1e9 / peak:.0f}% of peak"
        )
        seq_s = np.median(sequences)
        print(
            f"  all GEMMs of the step in sequence on its own buffers: {1e6 * seq_s:.1f} us = "
            f"{100 * seq_s / step_s:.0f}% of the step; everything else (epilogues, loss, gather, update) "
            f"{1e6 * (step_s - seq_s):.1f} us"
        )
        for name, m, k, n, _, _ in gemms:
            t = np.median(parts[name])
            print(f"  {name:10s} ({m} x {k}) @ ({k} x {n}): {1e6 * t:9.1f} us  {2 * m * k * n / t / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
