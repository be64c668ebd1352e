"""Data-parallel scaling with MPI: training throughput of 2 ranks x 1 thread against 1 rank x 1 thread, the
all-reduce time per step, and the cost of driving each step from Python instead of the compiled epoch loop.

Usage: python scripts/mpi_scaling.py [--shape L] [--dtype float32] [--repeats 5] [--epochs 3]
       [--overhead-shapes S,M,L] [--json PATH]

Each repeat launches, one after the other (interleaved, as the machine is shared and drifts):
- ``mpiexec -n 1``: the single-process compiled epoch loop (``fastbp.Trainer``) and the distributed per-step path
  on one rank (``fastbp.distributed.Trainer``; its all-reduce over one rank is a no-op), both 1 thread, SGD,
  global batch of the shape (docs/benchmarks.md); the compiled loop with 2 threads (one process, one copy of the
  weights: what 2 cores give without MPI); and the per-step overhead on ``--overhead-shapes``;
- ``mpiexec -n 2``: the distributed trainer on 2 ranks x 1 thread, same global batches; then the all-reduce
  alone (the gradient buffer, after a barrier, so no waiting for a slower rank is included).
Throughput is global steps per second over whole epochs (``history["epoch_time"]``). Medians over the repeats.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from fastbp.bench import SHAPES, flops_per_step


def _data(sizes, batch, steps, dtype):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch * steps, sizes[0])).astype(dtype), rng.integers(0, sizes[-1], batch * steps)


def _steps_per_second(make_trainer, X, y, epochs):
    """Global steps per second of ``fit`` over whole epochs, after one warm-up epoch; and the all-reduce seconds
    per step (0 for the single-process trainer)."""
    trainer = make_trainer()
    trainer.fit(X, y, epochs=1)  # warm-up: caches, page faults, workspace
    history = trainer.fit(X, y, epochs=epochs)
    steps = epochs * int(np.ceil(X.shape[0] / trainer.batch_size))
    comm = sum(history.get("comm_time", [0.0])) / steps
    return steps / sum(history["epoch_time"]), comm


def worker(args):
    import fastbp
    from fastbp import distributed

    comm = distributed._mpi().COMM_WORLD
    fastbp.set_num_threads(1)
    result = {"ranks": comm.Get_size()}
    sizes, batch = SHAPES[args.shape]
    X, y = _data(sizes, batch, args.steps, args.dtype)

    def make(cls, **extra):
        net = fastbp.MLP(sizes, dtype=args.dtype, seed=0)
        return lambda: cls(net, fastbp.SGD(1e-3), batch_size=batch, progress=False, divergence_factor=None, **extra)

    dist = make(distributed.Trainer, threads=1)
    if comm.Get_size() == 1:
        result["compiled"], _ = _steps_per_second(make(fastbp.Trainer), X, y, args.epochs)
        result["python"], _ = _steps_per_second(dist, X, y, args.epochs)
        fastbp.set_num_threads(2)  # the ceiling of 2 cores with ONE copy of the weights: one process, 2 threads
        result["compiled_2_threads"], _ = _steps_per_second(make(fastbp.Trainer), X, y, args.epochs)
        fastbp.set_num_threads(1)
        overhead = {}
        for shape in filter(None, args.overhead_shapes.split(",")):
            s_sizes, s_batch = SHAPES[shape]
            steps = max(8, int(2e9 // flops_per_step(s_sizes, s_batch)))  # about 0.1 s per epoch
            Xs, ys = _data(s_sizes, s_batch, min(steps, 512), args.dtype)
            times = {}
            for name, cls, extra in (("compiled", fastbp.Trainer, {}), ("python", distributed.Trainer, {"threads": 1})):
                net = fastbp.MLP(s_sizes, dtype=args.dtype, seed=0)

                def factory(net=net, cls=cls, extra=extra, s_batch=s_batch):
                    return cls(
                        net, fastbp.SGD(1e-3), batch_size=s_batch, progress=False, divergence_factor=None, **extra
                    )

                times[name] = 1.0 / _steps_per_second(factory, Xs, ys, args.epochs)[0]
            overhead[shape] = times
        result["overhead"] = overhead
    else:
        result["python"], result["comm_per_step"] = _steps_per_second(dist, X, y, args.epochs)
        net = fastbp.MLP(sizes, dtype=args.dtype, seed=0)
        buffer = np.zeros(net.n_params + 1, dtype=args.dtype)
        MPI = distributed._mpi()
        samples = []
        for _ in range(30):
            comm.Barrier()
            tick = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            samples.append(time.perf_counter() - tick)
        result["allreduce_alone"] = float(np.median(samples[5:]))
        result["bytes"] = int(buffer.nbytes)
    if comm.Get_rank() == 0:
        print("RESULT " + json.dumps(result), flush=True)


def _launch(ranks, args, timeout=900):
    """Run this script as a worker under ``mpiexec -n ranks``; returns rank 0's result dict."""
    from fastbp.distributed import mpirun

    command = [sys.executable, os.path.abspath(__file__), "--worker"]
    command += ["--shape", args.shape, "--dtype", args.dtype, "--epochs", str(args.epochs), "--steps", str(args.steps)]
    command += ["--overhead-shapes", args.overhead_shapes]
    try:
        proc = mpirun(command, n=ranks, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"timeout after {timeout} s: {' '.join(command)}")
    except FileNotFoundError as err:
        sys.exit(str(err))
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr}")
    out = proc.stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="L", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per run (after one warm-up epoch)")
    parser.add_argument("--steps", type=int, default=32, help="global steps per epoch")
    parser.add_argument("--overhead-shapes", default="S,M,L")
    parser.add_argument("--json", help="write the raw results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import fastbp
    from fastbp.bench import machine

    sizes, batch = SHAPES[args.shape]
    n_params = fastbp.MLP(sizes).n_params
    print(f"mpi_scaling {time.strftime('%Y-%m-%d')}: {machine()}; {os.cpu_count()} cores; fastbp {fastbp.__version__}")
    print(f"shape {args.shape} {'-'.join(map(str, sizes))}, global batch {batch}, {args.dtype}, SGD, {n_params} params")
    runs = []
    for repeat in range(args.repeats):
        one, two = _launch(1, args), _launch(2, args)
        runs.append({"one": one, "two": two})
        print(
            f"  repeat {repeat + 1}: 1 rank compiled {one['compiled']:.1f} steps/s, python {one['python']:.1f}; "
            f"1 rank x 2 threads {one['compiled_2_threads']:.1f}; "
            f"2 ranks {two['python']:.1f} steps/s, all-reduce {1e3 * two['comm_per_step']:.3f} ms/step in the loop, "
            f"{1e3 * two['allreduce_alone']:.3f} ms alone"
        )

    def med(values):
        return float(np.median(values))

    compiled = med([r["one"]["compiled"] for r in runs])
    python1 = med([r["one"]["python"] for r in runs])
    two = med([r["two"]["python"] for r in runs])
    ratio_compiled = med([r["two"]["python"] / r["one"]["compiled"] for r in runs])
    ratio_python = med([r["two"]["python"] / r["one"]["python"] for r in runs])
    threads2 = med([r["one"]["compiled_2_threads"] for r in runs])
    ratio_threads = med([r["one"]["compiled_2_threads"] / r["one"]["compiled"] for r in runs])
    comm = med([r["two"]["comm_per_step"] for r in runs])
    alone = med([r["two"]["allreduce_alone"] for r in runs])
    nbytes = runs[0]["two"]["bytes"]
    print(f"medians over {args.repeats} repeats:")
    print(f"  1 rank x 1 thread, compiled epoch loop (fastbp.Trainer): {compiled:.1f} steps/s")
    print(f"  1 rank x 1 thread, per-step path (fastbp.distributed.Trainer): {python1:.1f} steps/s")
    print(f"  2 ranks x 1 thread (fastbp.distributed.Trainer): {two:.1f} steps/s")
    print(f"  for reference, 1 rank x 2 threads, compiled loop: {threads2:.1f} steps/s ({ratio_threads:.2f}x 1 thread)")
    print(f"  speed-up 2 ranks / 1 rank: {ratio_compiled:.2f}x vs the compiled loop, {ratio_python:.2f}x vs 1 rank")
    print(
        f"  all-reduce of {nbytes / 1e6:.2f} MB per step: {1e3 * comm:.3f} ms in the training loop (incl. waiting "
        f"for the slower rank), {1e3 * alone:.3f} ms alone ({nbytes / alone / 1e9:.1f} GB/s)"
    )
    print("  per-step cost of the Python-driven step vs the compiled epoch loop (1 rank x 1 thread):")
    for shape in runs[0]["one"]["overhead"]:
        c = med([r["one"]["overhead"][shape]["compiled"] for r in runs])
        p = med([r["one"]["overhead"][shape]["python"] for r in runs])
        print(
            f"    {shape}: compiled {1e6 * c:.1f} us/step, per-step path {1e6 * p:.1f} us/step: "
            f"+{1e6 * (p - c):.1f} us ({100 * (p - c) / c:+.1f}%)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
