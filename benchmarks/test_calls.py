"""The entry points a user calls from their own loop, each beside its lean NumPy peer in one group
(docs/benchmarks.md, "Per call"):

- ``trainer.train_step(X, y)`` against the lean NumPy training step (forward, softmax cross-entropy, backward, SGD);
- ``net.value_and_grad(X, y, out=g)`` against NumPy's forward and backward pass;
- ``net.predict(X)`` against NumPy's forward pass;
- ``trainer.fit(X, y, epochs=1)`` against a NumPy epoch (shuffled, batches gathered by fancy indexing).

Every timed call of the first three runs :data:`fastbp.bench.STEPS_PER_CALL` calls, one per mini-batch of the same
data, so that the times of a group compare directly (divide by it for the time per call). An epoch runs over
:data:`FIT_BATCHES` mini-batches. Both sides of the fit do the same work: the trainer without the divergence
reference (``divergence_factor=None``), which the NumPy epoch does not compute either (it costs a forward pass over up
to 1024 rows per fit call).
"""

import numpy as np
import pytest

import fastbp
from fastbp import bench

#: The shapes of docs/benchmarks.md the per-call targets are set at (S) or checked "no slower than before" (M, L).
SHAPES = ["S", "M", "L"]
#: Mini-batches of one epoch: about the size of scikit-learn's digits at S (2048 rows), fewer at the GEMM-bound
#: shapes, where the cost of a call is its GEMMs.
FIT_BATCHES = {"S": 64, "M": 16, "L": 16}


def _setup(shape, dtype="float32"):
    sizes, batch = bench.SHAPES[shape]
    X, y = bench._data(sizes, batch, dtype)
    return sizes, batch, bench._batches(X, y, batch)


def _per_batch(fn, batches):
    def calls():
        for X, y in batches:
            fn(X, y)

    return calls


def _contender(entry, contender, shape):
    """The timed function: STEPS_PER_CALL calls of ``entry`` by ``contender`` ("fastbp" or "numpy")."""
    sizes, batch, batches = _setup(shape)
    if contender == "numpy":
        layers = bench.numpy_layers(sizes, "float32")
        return _per_batch(
            {
                "train_step": lambda X, y: bench.numpy_train_step(layers, X, y),
                "value_and_grad": lambda X, y: bench.numpy_value_and_grad(layers, X, y),
                "predict": lambda X, y: bench.numpy_forward(layers, X),
            }[entry],
            batches,
        )
    net = fastbp.MLP(sizes, seed=0)
    if entry == "train_step":
        trainer = fastbp.Trainer(net, fastbp.SGD(bench.LR), batch_size=batch, progress=False)
        return _per_batch(trainer.train_step, batches)
    if entry == "value_and_grad":
        g = np.empty_like(net.params)
        return _per_batch(lambda X, y: net.value_and_grad(X, y, out=g), batches)
    return _per_batch(lambda X, y: net.predict(X), batches)


@pytest.mark.parametrize("contender", ["fastbp", "numpy"])
@pytest.mark.parametrize("entry", ["train_step", "value_and_grad", "predict"])
@pytest.mark.parametrize("shape", SHAPES)
def test_call(benchmark, shape, entry, contender):
    calls = _contender(entry, contender, shape)
    benchmark.group = f"{entry} x {bench.STEPS_PER_CALL}|{shape}-float32"
    benchmark.extra_info.update(calls=bench.STEPS_PER_CALL)
    calls()  # warm-up: compilation, the workspace, train_step's divergence reference
    benchmark(calls)


@pytest.mark.parametrize("contender", ["fastbp", "numpy"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fit_one_epoch(benchmark, shape, contender):
    sizes, batch = bench.SHAPES[shape]
    X, y = bench._data(sizes, batch, "float32", FIT_BATCHES[shape])
    if contender == "numpy":
        layers, rng = bench.numpy_layers(sizes, "float32"), np.random.default_rng(0)

        def epoch():
            bench.numpy_epoch(layers, X, y, batch, rng)

    else:
        net = fastbp.MLP(sizes, seed=0)
        trainer = fastbp.Trainer(net, fastbp.SGD(bench.LR), batch_size=batch, progress=False, divergence_factor=None)

        def epoch():
            trainer.fit(X, y, epochs=1)

    benchmark.group = f"fit, one epoch of {FIT_BATCHES[shape]} batches|{shape}-float32"
    benchmark.extra_info.update(batches=FIT_BATCHES[shape])
    epoch()
    benchmark(epoch)
