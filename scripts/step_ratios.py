"""Per-step cost of fastbp against the NumPy reference and PyTorch eager, measured interleaved in one run.

Usage: python scripts/step_ratios.py [--shapes S,M] [--dtypes float32,float64] [--rounds 7]

For each shape of BENCHMARKS.md (ReLU hidden layers, softmax + cross-entropy, plain SGD) it times, in rounds
A B C ... A B C ..., each round a loop lasting >= 0.2 s, and prints medians (min-max) per step and the ratio of
each peer to fastbp's compiled epoch loop, computed per round and then the median taken.
"""

import argparse
import itertools
import time

import numpy as np

import fastbp
from fastbp import reference

SHAPES = {
    "S": ([64, 128, 10], 32),
    "M": ([784, 256, 256, 10], 128),
    "L": ([784, 1024, 1024, 10], 256),
    "XL": ([1024, 4096, 4096, 1024], 512),
}
LR = 0.01


def _per_call(fn, min_time=0.2):
    """Seconds per call of fn, from a loop lasting at least min_time."""
    fn()
    reps, elapsed = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / reps
        reps = max(2 * reps, int(reps * min_time / max(elapsed, 1e-9)) + 1)


def peers(sizes, batch, dtype, steps_per_epoch=32, frozen=None):
    """name -> function running ONE training step's worth of work (the epoch loop runs steps_per_epoch steps
    per call and is reported per step)."""
    rng = np.random.default_rng(0)
    n = batch * steps_per_epoch
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], n)
    Xb, yb = X[:batch], y[:batch]
    out = {}

    net = fastbp.MLP(sizes, dtype=dtype, trainable=frozen)
    trainer = fastbp.Trainer(net, fastbp.SGD(LR), batch_size=batch, progress=False, divergence_factor=None)
    Xc, Y2d, labels = net.check_batch(X, y)
    perm = np.arange(n, dtype=np.int64)
    schedule = trainer._schedule(None)

    def epoch_loop():
        trainer._run(Xc, Y2d, labels, perm, batch, schedule)

    out["fastbp epoch loop"] = (epoch_loop, steps_per_epoch)
    out["fastbp train_step"] = (lambda: trainer.train_step(Xb, yb), 1)
    g = np.empty(net.n_params, dtype=dtype)
    out["fastbp value_and_grad"] = (lambda: net.value_and_grad(Xb, yb, out=g), 1)

    ref_net = fastbp.MLP(sizes, dtype=dtype)

    def reference_step():
        _, grads = reference.value_and_grad(ref_net, Xb, yb)
        ref_net.params[:] -= LR * grads

    out["numpy reference step"] = (reference_step, 1)
    out["numpy reference value_and_grad"] = (lambda: reference.value_and_grad(ref_net, Xb, yb), 1)

    try:
        import torch
    except ImportError:
        print("note: torch is not installed; PyTorch eager skipped (pip install torch==2.13.0)")
    else:
        layers = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers[:-1]).to(getattr(torch, dtype))
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        loss_fn = torch.nn.CrossEntropyLoss()
        tX, ty = torch.from_numpy(Xb), torch.from_numpy(yb)

        def torch_step():
            opt.zero_grad()
            loss_fn(model(tX), ty).backward()
            opt.step()

        out["pytorch eager step"] = (torch_step, 1)
    return out


def measure(funcs, rounds):
    """Interleaved rounds; returns name -> list of seconds per step (one per round)."""
    times = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, (fn, steps) in funcs.items():
            times[name].append(_per_call(fn) / steps)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="S,M")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--frozen",
        action="store_true",
        help="instead: the epoch loop with the first layer frozen against all layers trainable",
    )
    args = parser.parse_args()
    if args.frozen:
        return frozen_saving(args)
    base = "fastbp epoch loop"
    for shape in args.shapes.split(","):
        sizes, batch = SHAPES[shape]
        for dtype in args.dtypes.split(","):
            times = measure(peers(sizes, batch, dtype), args.rounds)
            print(f"\n{shape} {'-'.join(map(str, sizes))} batch {batch} {dtype}")
            for name, ts in times.items():
                ratio = np.median(np.array(ts) / np.array(times[base]))
                print(
                    f"  {name:32s} {1e6 * np.median(ts):9.1f} us  ({1e6 * min(ts):.1f}-{1e6 * max(ts):.1f})"
                    f"  {ratio:6.2f}x the epoch loop's time"
                )


def frozen_saving(args):
    """Per-step time of the epoch loop with layer 0 frozen (its weight-gradient GEMM, and the propagation of
    delta into it, are skipped) against the same network fully trainable."""
    for shape in args.shapes.split(","):
        sizes, batch = SHAPES[shape]
        for dtype in args.dtypes.split(","):
            frozen = [False] + [True] * (len(sizes) - 2)
            funcs = {
                "all trainable": peers(sizes, batch, dtype)["fastbp epoch loop"],
                "layer 0 frozen": peers(sizes, batch, dtype, frozen=frozen)["fastbp epoch loop"],
            }
            times = measure(funcs, args.rounds)
            ratio = np.median(np.array(times["all trainable"]) / np.array(times["layer 0 frozen"]))
            print(
                f"{shape} {dtype}: all trainable {1e6 * np.median(times['all trainable']):.1f} us, layer 0 frozen "
                f"{1e6 * np.median(times['layer 0 frozen']):.1f} us per step; frozen is {ratio:.2f}x faster"
            )


if __name__ == "__main__":
    main()
