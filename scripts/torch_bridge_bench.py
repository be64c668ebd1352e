"""Training step of ``fastbp.torch.MLP`` against the equivalent ``torch.nn.Sequential``, in one interleaved run.

One step = ``opt.zero_grad()``, forward, ``CrossEntropyLoss`` on the logits, ``backward()``, ``torch.optim.SGD``
step: the user's torch loop, unchanged except for the module. Shapes S and M of docs/benchmarks.md (ReLU hidden
layers), float32 by default. Both modules start from the same weights; a check first runs a few steps of each
and prints the largest relative parameter difference.

Contenders, timed in interleaved rounds (A B C A B C ..., each a loop of at least ``--min-time`` seconds):

- ``torch``: torch eager, torch's default thread count;
- ``fastbp.torch``: the bridge, same process settings (its default ``blas_threads="auto"`` then runs fastbp's
  GEMMs on the calling thread, since torch's pool owns the cores);
- ``torch/t1`` and ``fastbp.torch/t1`` (unless ``--no-t1``): the same after ``torch.set_num_threads(1)`` (set for
  their loops only), the configuration in which fastbp's BLAS keeps its own threads.

Times are medians over rounds; ratios ``torch / contender`` are taken within each round, then the median
(docs/benchmarks.md: the machine drifts between rounds, same-round ratios much less).

    python scripts/torch_bridge_bench.py [--shapes S,M] [--dtype float32] [--rounds 7] [--min-time 0.2]
                                         [--cooldown 0.3] [--no-t1] [--json FILE]
"""

import argparse
import json
import os
import time

import numpy as np
import torch

import fastbp.torch
from fastbp.bench import SHAPES, machine, per_call, same_round_ratio
from fastbp.cli import _positive_int  # the command line's argparse type of counts

LR = 1e-3


def make_pair(sizes, batch, dtype, seed=0):
    """(fastbp module, equivalent Sequential, X, y) with identical weights and one batch of data."""
    model = fastbp.torch.MLP(sizes, activation="relu", output="identity", dtype=dtype, seed=seed)
    reference = model.to_sequential()
    rng = np.random.default_rng(seed)
    X = torch.from_numpy(rng.standard_normal((batch, sizes[0]))).to(dtype)
    y = torch.from_numpy(rng.integers(0, sizes[-1], batch))
    return model, reference, X, y


def training_step(module, X, y):
    """A closure running one SGD training step of ``module`` on (X, y)."""
    opt = torch.optim.SGD(module.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(module(X), y).backward()
        opt.step()

    return step


def agreement(sizes, batch, dtype, steps=5):
    """Largest relative difference between the two modules' parameters after ``steps`` identical steps."""
    model, reference, X, y = make_pair(sizes, batch, dtype)
    step_model, step_reference = training_step(model, X, y), training_step(reference, X, y)
    for _ in range(steps):
        step_model()
        step_reference()
    linears = [m for m in reference if isinstance(m, torch.nn.Linear)]
    worst = 0.0
    with torch.no_grad():
        for W, b, linear in zip(model.coefs, model.intercepts, linears, strict=True):
            for ours, theirs in ((W, linear.weight.T), (b, linear.bias)):
                worst = max(worst, ((ours - theirs).norm() / theirs.norm()).item())
    return worst


def timed_rounds(contenders, rounds, min_time, cooldown):
    """``{name: (step, torch threads or None)}`` timed in interleaved rounds; returns name -> seconds per step,
    one value per round. torch's thread count is set before a contender's loop and restored after it.

    Each loop is followed by ``cooldown`` seconds of sleep: idle BLAS and OpenMP workers spin for a while after
    their last task (OpenBLAS's for ~0.1 s, measured), and would otherwise slow down the next contender's loop."""
    default_threads = torch.get_num_threads()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (step, threads) in contenders.items():
            torch.set_num_threads(threads or default_threads)
            try:
                times[name].append(per_call(step, min_time))
            finally:
                torch.set_num_threads(default_threads)
            time.sleep(cooldown)
    return times


def measure(shape, dtype, rounds, min_time, cooldown, with_t1=True):
    sizes, batch = SHAPES[shape]
    model, reference, X, y = make_pair(sizes, batch, dtype)
    contenders = {"torch": (training_step(reference, X, y), None), "fastbp.torch": (training_step(model, X, y), None)}
    if with_t1:
        contenders["torch/t1"] = (training_step(reference, X, y), 1)
        contenders["fastbp.torch/t1"] = (training_step(model, X, y), 1)
    times = timed_rounds(contenders, rounds, min_time, cooldown)
    result = {"shape": shape, "sizes": sizes, "batch": batch, "dtype": str(dtype).removeprefix("torch."), "peers": {}}
    for name, ts in times.items():
        result["peers"][name] = {
            "median_s": float(np.median(ts)),
            "min_s": float(min(ts)),
            "max_s": float(max(ts)),
            "torch_over_this": same_round_ratio(times, "torch", name),
        }
    result["param_rel_diff_after_5_steps"] = agreement(sizes, batch, dtype)
    # What fastbp.torch's calibration chose for the GEMMs while torch used several threads.
    names = {frozenset(): "not measured", frozenset({True}): "torch's BLAS", frozenset({False}): "fastbp's BLAS"}
    result["gemms"] = names.get(frozenset(model._engine.choices.values()), "mixed")
    return result


def format_result(r):
    lines = [f"{r['shape']:>2} {r['dtype']} ({'-'.join(map(str, r['sizes']))}, batch {r['batch']}):"]
    for name, p in r["peers"].items():
        ratio = "" if name == "torch" else f"  torch / this {p['torch_over_this']:.2f}x"
        lines.append(
            f"   {name:<16} {1e6 * p['median_s']:8.1f} us/step ({1e6 * p['min_s']:.1f}-{1e6 * p['max_s']:.1f}){ratio}"
        )
    lines.append(f"   parameters after 5 steps differ by {r['param_rel_diff_after_5_steps']:.1e} (relative)")
    lines.append(f"   fastbp.torch's GEMMs (torch on several threads): {r['gemms']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="S,M", help="comma-separated shapes of docs/benchmarks.md (default S,M)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rounds", type=_positive_int, default=7)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timed loop (default 0.2)")
    parser.add_argument("--cooldown", type=float, default=0.3, help="seconds of sleep after each loop (default 0.3)")
    parser.add_argument("--no-t1", action="store_true", help="skip the contenders with torch on one thread")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
        "openblas_env": {
            k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")
        },
        "rounds": args.rounds,
        "min_time": args.min_time,
        "cooldown": args.cooldown,
        "cells": [],
    }
    print(f"{results['date']}; {results['machine']}; torch {results['torch']}; {results['openblas_env']}")
    for shape in args.shapes.split(","):
        result = measure(shape.strip(), dtype, args.rounds, args.min_time, args.cooldown, with_t1=not args.no_t1)
        results["cells"].append(result)
        print(format_result(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
