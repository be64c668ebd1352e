"""Run by tests/test_distributed.py under ``mpiexec -n 2``: data-parallel training runs whose results the tests
compare with single-process training on the same global batches, and runs in which one rank fails.

Usage: mpiexec -n 2 python tests/distributed_worker.py MODE OUT.npz, MODE one of equal, fail, setup.
Every configuration is built by :func:`make` from its name, by the worker and by the tests alike.
"""

import sys

import numpy as np

import fastbp

#: name -> how to split the data over 2 ranks: "replicated" (every rank gets all rows), or the row count of
#: rank 0's shard (the rest goes to rank 1): uneven shards on purpose.
CONFIGS = {
    "sgd_frozen_l2_clip_cosine": "replicated",
    "adam_multilabel_sharded": 37,
    "adamw_weights_valsplit_deltas": "replicated",
    "sgd_weights_sharded_tiny_last_batch": 45,
}
EPOCHS = 3


def make(name):
    """(net, trainer kwargs, X, y, fit kwargs) of configuration ``name``; the single-process run is
    ``fastbp.Trainer(net, **kwargs).fit(X, y, **fit_kwargs)``. Every net is float64."""
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "sgd_frozen_l2_clip_cosine":
        # 101 rows in batches of 25: the last batch has 1 row, so rank 0 has no rows in it
        X, y = rng.standard_normal((101, 12)), rng.integers(0, 4, 101)
        net = fastbp.MLP([12, 16, 8, 4], "tanh", l2=1e-3, dtype="float64", seed=1, trainable=[True, False, True])
        opt = fastbp.SGD(0.05, momentum=0.9, nesterov=True, clip_norm=0.5, schedule="cosine")
        return net, {"optimizer": opt, "batch_size": 25, "seed": 3}, X, y, {"validation_data": (X[:30], y[:30])}
    if name == "adam_multilabel_sharded":
        X = rng.standard_normal((87, 10))
        Y = (X[:, :3] + 0.5 * rng.standard_normal((87, 3)) > 0).astype(float)
        net = fastbp.MLP([10, 12, 3], "relu", output="sigmoid", l2=1e-2, dtype="float64", seed=2)
        opt = fastbp.Adam(1e-2, clip_norm=1.0)
        return net, {"optimizer": opt, "batch_size": 16, "seed": 4}, X, Y, {}
    if name == "adamw_weights_valsplit_deltas":
        X, y = rng.standard_normal((90, 6)), rng.integers(0, 3, 90)
        w = rng.random(90) * (rng.random(90) > 0.2)  # some weights are 0
        net = fastbp.MLP([6, 9, 3], "sigmoid", dtype="float64", seed=5)
        kwargs = {"optimizer": fastbp.AdamW(1e-2), "batch_size": 20, "seed": 6, "record_deltas": True}
        return net, kwargs, X, y, {"validation_split": 0.2, "sample_weight": w}
    if name == "sgd_weights_sharded_tiny_last_batch":
        X, y = rng.standard_normal((61, 5)), rng.integers(0, 2, 61)
        w = rng.random(61) + 0.1
        net = fastbp.MLP([5, 7, 2], "leaky_relu", dtype="float64", seed=7)
        return (
            net,
            {"optimizer": fastbp.SGD(0.1, momentum=0.5), "batch_size": 30, "seed": 8},
            X,
            y,
            {"sample_weight": w},
        )
    raise KeyError(name)


def _shard(split, rank, *arrays):
    """This rank's rows of each array (None stays None): all of them when replicated."""
    if split == "replicated":
        return arrays
    return tuple(None if a is None else (a[:split] if rank == 0 else a[split:]) for a in arrays)


def equal(out):
    from fastbp import distributed

    results = {}
    for name, split in CONFIGS.items():
        net, kwargs, X, y, fit_kwargs = make(name)
        trainer = distributed.Trainer(net, progress=False, **kwargs)
        fit_kwargs = dict(fit_kwargs)
        if split != "replicated":
            sw = fit_kwargs.pop("sample_weight", None)
            X, y, sw = _shard(split, trainer.rank, X, y, sw)
            fit_kwargs.update(sharded=True, sample_weight=sw)
        history = trainer.fit(X, y, epochs=EPOCHS, **fit_kwargs)
        digests = trainer.comm.allgather(net.params.tobytes())
        results[f"{name}/params"] = net.params
        results[f"{name}/same_on_all_ranks"] = np.array(len(set(digests)) == 1)
        for key, values in history.items():
            results[f"{name}/history/{key}"] = np.array(values, dtype=np.float64)
        results[f"{name}/threads"] = np.array(trainer.comm.allgather(trainer.threads))
    if trainer.rank == 0:
        np.savez(out, **results)


def fail(out):
    """Rank 1 raises in a callback after its second epoch, while rank 0 goes on into the next all-reduce."""
    from fastbp import distributed

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((200, 8)), rng.integers(0, 3, 200)
    trainer = distributed.Trainer(fastbp.MLP([8, 16, 3], dtype="float64"), fastbp.SGD(0.1), 20, progress=False)

    def callback(trainer, epoch, logs):
        if trainer.rank == 1 and epoch == 1:
            raise ValueError("boom on rank 1")

    trainer.callbacks.append(callback)
    trainer.fit(X, y, epochs=100_000)  # hours, unless the failure ends the job


def setup(out):
    """Rank 1's part of the data holds a NaN: both ranks must raise at once (nobody waits in a collective)."""
    from fastbp import distributed

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((200, 8)), rng.integers(0, 3, 200)
    trainer = distributed.Trainer(fastbp.MLP([8, 16, 3], dtype="float64"), fastbp.SGD(0.1), 20, progress=False)
    if trainer.rank == 1:
        X[3, 2] = np.nan
    trainer.fit(X, y, epochs=100_000, sharded=True)


if __name__ == "__main__":
    {"equal": equal, "fail": fail, "setup": setup}[sys.argv[1]](sys.argv[2])
