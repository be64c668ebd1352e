"""Time saved by freezing the first layer: its weight-gradient GEMM and the propagation of delta into it are
skipped. Per-step time of the compiled epoch loop, frozen against fully trainable, interleaved rounds.

Usage: python scripts/frozen_layers.py [--shapes S,M] [--dtype float32] [--rounds 7]
"""

import argparse

import numpy as np

from fastbp import bench
from fastbp.cli import _positive_int  # the command line's argparse type of counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="S,M")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=_positive_int, default=7)
    args = parser.parse_args()
    unknown = [s for s in args.shapes.split(",") if s not in bench.SHAPES]
    if unknown:  # D is timed by fastbp bench: its layer options are not this script's
        parser.error(f"--shapes: {unknown[0]} is not one of {','.join(bench.SHAPES)}")
    for shape in args.shapes.split(","):
        sizes, batch = bench.SHAPES[shape]
        layers = len(sizes) - 1
        fns = {
            "trainable": bench.fastbp_step(sizes, batch, args.dtype),
            "frozen": bench.fastbp_step(sizes, batch, args.dtype, trainable=[False] + [True] * (layers - 1)),
        }
        times = bench.interleaved(fns, args.rounds, 0.2)
        ratio = bench.same_round_ratio(times, "trainable", "frozen")
        print(
            f"{shape} {args.dtype}: all layers trainable {1e6 * np.median(times['trainable']):.1f} us/step, "
            f"layer 0 frozen {1e6 * np.median(times['frozen']):.1f} us/step: {ratio:.2f}x faster"
        )


if __name__ == "__main__":
    main()
