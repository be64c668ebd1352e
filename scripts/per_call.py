"""Time per call of the entry points a user drives from Python, and the overhead around the compiled work.

For each entry point (``net.value_and_grad(X, y, out=g)``, ``trainer.train_step(X, y)``, ``net.predict(X)``,
``trainer.evaluate(X, y)``, ``FlatObjective(theta)``) three times are measured, interleaved in rounds (medians):

- ``call``: the public call, as a user makes it;
- ``dispatch``: the compiled entry points that one call ran, called again directly from Python as the Python layer
  called them, with the arguments recorded during that call (what is left when the Python around them is gone: the
  unboxing of the arguments, and Numba's dispatch where the dispatcher is called);
- ``work``: the same entry points called in a loop from compiled code (the compiled work alone).

``overhead = call - work``. The arguments are recorded by wrapping every compiled ``*_entry`` function the Python
layer calls (and the compiled functions of ``fastbp.kernels.checked.Entries``, where they exist), so the script runs
on the versions before and after that change. Usage: ``python scripts/per_call.py
[--shapes S,M,L] [--dtype float32] [--rounds 5]``; run it with ``OPENBLAS_CORETYPE`` unset, like the benchmarks.
"""

import argparse
import sys

import numba
import numpy as np

import fastbp
from fastbp import bench
from fastbp.cli import _positive_int  # the command line's argparse type of counts

#: Modules whose compiled ``*_entry`` functions the Python layer calls (looked up there at call time).
_MODULES = ("fastbp.network", "fastbp.trainer", "fastbp.flat", "fastbp.kernels.epoch", "fastbp.kernels.drivers")


class Recorder:
    """Records the compiled entry points one call runs, by wrapping every ``*_entry`` function of :data:`_MODULES`
    and the compiled functions of the checked entry points for the duration of that call only (the timed calls run
    unwrapped)."""

    def __init__(self):
        self.modules = [sys.modules.get(name) or __import__(name, fromlist=["_"]) for name in _MODULES]

    def record(self, fn):
        """The (entry, function, args, alive) of the compiled calls of one call of fn: the dispatcher, the function
        the Python layer called (the dispatcher, or its compiled function), the arguments and what keeps them
        alive."""
        calls, saved = [], []

        def wrap(entry, function=None):
            function = entry if function is None else function

            def wrapper(*args):
                # the callers' locals too: buffers made for this call (a permutation, the optimizer's arrays) must
                # outlive it, since the recorded arguments hold their addresses
                frame, alive = sys._getframe(1), []
                while frame is not None:
                    alive.append(dict(frame.f_locals))
                    frame = frame.f_back
                calls.append((entry, function, args, alive))
                return function(*args)

            return wrapper

        for module in self.modules:
            for attr, value in list(vars(module).items()):
                if attr.endswith("_entry") and isinstance(value, numba.core.registry.CPUDispatcher):
                    saved.append((module, attr, value))
                    setattr(module, attr, wrap(value))
        # the checked entry points, which the Python layer calls through their compiled functions (checked.Entries)
        checked = sys.modules["fastbp.kernels.checked"]
        for entries in getattr(checked, "_ENTRIES", {}).values():
            for attr, (dispatcher, _) in checked._ARGUMENTS.items():
                saved.append((entries, attr, entries.__dict__.get(attr)))
                setattr(entries, attr, wrap(dispatcher, getattr(entries, attr)))
        try:
            fn()
        finally:
            for owner, attr, value in saved:
                if value is None:
                    delattr(owner, attr)
                else:
                    setattr(owner, attr, value)
        return calls


_REPEATS = {}


def _repeat(entry):
    """A compiled function ``(k, args) -> None`` that calls ``entry(*args)`` k times (compiled once per entry)."""
    if entry not in _REPEATS:

        @numba.njit
        def repeat(k, args):
            for _ in range(k):
                entry(*args)

        _REPEATS[entry] = repeat
    return _REPEATS[entry]


def _work(calls, k=64):
    """The recorded entry calls, each run k times in a compiled loop: one call's compiled work, times k."""
    loops = [(_repeat(entry), args) for entry, _, args, _ in calls]

    def run():
        for repeat, args in loops:
            repeat(k, args)

    return run


def _dispatch(calls):
    def run():
        for _, function, args, _ in calls:
            function(*args)

    return run


def contenders(shape, dtype):
    """name -> the public call (a function of no arguments) at ``shape``."""
    sizes, batch = bench.SHAPES[shape]
    X, y = bench._data(sizes, batch, dtype, 1)
    net = fastbp.MLP(sizes, dtype=dtype, seed=0)
    g = np.empty_like(net.params)
    trainer = fastbp.Trainer(net, fastbp.SGD(1e-4), batch_size=batch, progress=False)
    objective_net = fastbp.MLP(sizes, dtype="float64", seed=0)
    objective = fastbp.FlatObjective(objective_net, X, y)
    theta = objective_net.params.astype(np.float64)
    return {
        "value_and_grad(out=g)": lambda: net.value_and_grad(X, y, out=g),
        "train_step": lambda: trainer.train_step(X, y),
        "predict": lambda: net.predict(X),
        "evaluate": lambda: trainer.evaluate(X, y),
        "FlatObjective (float64)": lambda: objective(theta),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="S")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=_positive_int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2)
    args = parser.parse_args()
    recorder = Recorder()
    print(f"fastbp per-call times, {args.dtype}, medians of {args.rounds} interleaved rounds (us)")
    print(f"{'shape':5} {'entry point':24} {'call':>9} {'dispatch':>9} {'work':>9} {'overhead':>9} {'calls':>5}")
    for shape in args.shapes.split(","):
        functions = {}
        k = 64 if shape == "S" else 4
        for name, fn in contenders(shape, args.dtype).items():
            fn()  # warm-up: compilation, the workspace, train_step's divergence reference
            calls = recorder.record(fn)
            functions[(name, "call")] = (fn, 1)
            functions[(name, "dispatch")] = (_dispatch(calls), 1)
            functions[(name, "work")] = (_work(calls, k), k)
            functions[(name, "n")] = len(calls)
        timed = {key: value for key, value in functions.items() if key[1] != "n"}
        times = bench.interleaved(timed, args.rounds, args.min_time)
        for name in contenders.names:
            call, dispatch, work = (1e6 * np.median(times[(name, kind)]) for kind in ("call", "dispatch", "work"))
            print(
                f"{shape:5} {name:24} {call:9.1f} {dispatch:9.1f} {work:9.1f} {call - work:9.1f} "
                f"{functions[(name, 'n')]:5d}"
            )


contenders.names = ("value_and_grad(out=g)", "train_step", "predict", "evaluate", "FlatObjective (float64)")

if __name__ == "__main__":
    main()
