"""``net.value_and_grad`` (compiled, called from Python with ``out=``) against ``fastbp.reference.value_and_grad``
(NumPy), interleaved rounds in one run, medians. Usage: python scripts/value_and_grad_ratio.py [--rounds 7]"""

import argparse

import numpy as np

from fastbp import MLP, bench, reference
from fastbp.cli import _positive_int  # the command line's argparse type of counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="S,M")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--rounds", type=_positive_int, default=7)
    args = parser.parse_args()
    unknown = [s for s in args.shapes.split(",") if s not in bench.SHAPES]
    if unknown:  # D is timed by fastbp bench: its layer options are not this script's
        parser.error(f"--shapes: {unknown[0]} is not one of {','.join(bench.SHAPES)}")
    for shape in args.shapes.split(","):
        sizes, batch = bench.SHAPES[shape]
        for dtype in args.dtypes.split(","):
            X, y = bench._data(sizes, batch, dtype, 1)
            net = MLP(sizes, dtype=dtype, seed=0)
            g = np.empty_like(net.params)
            fns = {
                "fastbp": (lambda net=net, X=X, y=y, g=g: net.value_and_grad(X, y, out=g), 1),
                "numpy": (lambda net=net, X=X, y=y: reference.value_and_grad(net, X, y), 1),
            }
            times = bench.interleaved(fns, args.rounds, 0.2)
            ratio = bench.same_round_ratio(times, "numpy", "fastbp")
            print(
                f"{shape} {dtype}: fastbp {1e6 * np.median(times['fastbp']):.1f} us, reference "
                f"{1e6 * np.median(times['numpy']):.1f} us; reference / fastbp = {ratio:.2f}x"
            )


if __name__ == "__main__":
    main()
