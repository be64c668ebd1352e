"""Run by tests/test_distributed.py under ``mpiexec -n K``: data-parallel training runs whose results the tests
compare with single-process training on the same global batches, and runs in which one rank fails.

Usage: mpiexec -n K python tests/distributed_worker.py MODE OUT, MODE one of the functions in MODES.
Every configuration is built by :func:`make` from its name, by the worker and by the tests alike.
"""

import argparse
import functools
import os
import pickle
import signal
import sys

import numpy as np

import fastbp
from fastbp import _onednn

#: name -> how to split the data over 2 ranks: "replicated" (every rank gets all rows), or the cut points between
#: the ranks' shards (np.split): uneven shards on purpose, and an empty one.
CONFIGS = {
    "sgd_frozen_l2_clip_cosine": "replicated",
    "adam_multilabel_sharded": (37,),
    "adamw_weights_valsplit_deltas": "replicated",
    "sgd_weights_sharded_tiny_last_batch": (45,),
    "float32_adam_early_stopping": "replicated",
    "deltas_empty_shard": (61,),  # 61 rows: rank 1 holds none
}
#: the same over 3 ranks
CONFIGS_3 = {
    "sgd_frozen_l2_clip_cosine": "replicated",
    "sgd_weights_sharded_tiny_last_batch": (20, 45),
    "float32_adam_early_stopping": "replicated",
    "deltas_empty_shard": (30, 30),  # rank 1 holds none
}
EPOCHS = 3


def make(name):
    """(net, trainer kwargs, X, y, fit kwargs) of configuration ``name``; the single-process run is
    ``fastbp.Trainer(net, **kwargs).fit(X, y, **fit_kwargs)``. Every net is float64 but one."""
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
    if name == "float32_adam_early_stopping":
        # min_delta 1 and patience 1: the second epoch does not improve enough, training stops after it and the
        # parameters of the first epoch are restored
        X, y = rng.standard_normal((70, 8)), rng.integers(0, 3, 70)
        net = fastbp.MLP([8, 10, 3], "relu", l2=1e-3, dtype="float32", seed=9)
        kwargs = {"optimizer": fastbp.Adam(1e-2), "batch_size": 16, "seed": 10, "early_stopping": True}
        kwargs.update(patience=1, min_delta=1.0, restore_best=True)
        return net, kwargs, X, y, {"validation_data": (X[:20], y[:20])}
    if name == "deltas_empty_shard":
        X, y = rng.standard_normal((61, 6)), rng.integers(0, 3, 61)
        net = fastbp.MLP([6, 8, 3], "tanh", l2=1e-3, dtype="float64", seed=11)
        kwargs = {"optimizer": fastbp.SGD(0.1, momentum=0.9), "batch_size": 16, "seed": 12, "record_deltas": True}
        return net, kwargs, X, y, {}
    raise KeyError(name)


def _shard(split, rank, *arrays):
    """This rank's rows of each array (None stays None): all of them when replicated."""
    if split == "replicated":
        return arrays
    return tuple(None if a is None else np.split(a, split)[rank] for a in arrays)


def equal(out):
    from fastbp import distributed
    from fastbp.kernels import step

    # Count the steps taken by the compiled step of the epoch loop (kernels/step.py), which the ranks call from Python.
    step_entry, step_calls = step._step_entry, [0]

    def counted(*args):
        step_calls[0] += 1
        return step_entry(*args)

    step._step_entry = counted
    results = {}
    configs = CONFIGS_3 if distributed._mpi().COMM_WORLD.Get_size() == 3 else CONFIGS
    for name, split in configs.items():
        net, kwargs, X, y, fit_kwargs = make(name)
        trainer = distributed.Trainer(net, progress=False, **kwargs)
        fit_kwargs = dict(fit_kwargs)
        if split != "replicated":
            sw = fit_kwargs.pop("sample_weight", None)
            X, y, sw = _shard(split, trainer.rank, X, y, sw)
            fit_kwargs.update(sharded=True, sample_weight=sw)
        step_calls[0] = 0
        history = trainer.fit(X, y, epochs=EPOCHS, **fit_kwargs)
        results[f"{name}/step_calls"] = np.array([step_calls[0], trainer.optimizer.t])
        digests = trainer.comm.allgather(net.params.tobytes())
        results[f"{name}/params"] = net.params
        results[f"{name}/same_on_all_ranks"] = np.array(len(set(digests)) == 1)
        for key, values in history.items():
            results[f"{name}/history/{key}"] = np.array(values, dtype=np.float64)
        results[f"{name}/threads"] = np.array(trainer.comm.allgather(trainer.threads))
    if trainer.rank == 0:
        np.savez(out, **results)


def _keep_alive_after_abort(rank):
    """The launcher (MPICH's Hydra) ends the ranks with SIGTERM shortly after MPI_Abort, which returns to the
    caller: the failing rank ignores SIGTERM so that whether it goes on after the abort does not depend on that
    race (only its own exit can stop it)."""
    if rank == 1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _write_marker(out, rank):
    """What user code after a failed call would do (save a checkpoint, ...): it must never run."""
    if out != "-":
        with open(f"{out}.rank{rank}", "w") as f:
            f.write("the rank went on after the job was aborted\n")


def fail(out, exit=False):
    """Rank 1 raises in a callback after its second epoch (or, with ``exit``, calls sys.exit(4)), while rank 0 goes
    on into the next all-reduce; then each rank would write a marker file OUT.rankR (unless OUT is -)."""
    from fastbp import distributed

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((200, 8)), rng.integers(0, 3, 200)
    trainer = distributed.Trainer(fastbp.MLP([8, 16, 3], dtype="float64"), fastbp.SGD(0.1), 20, progress=False)

    def callback(trainer, epoch, logs):
        if trainer.rank == 1 and epoch == 1:
            if exit:
                sys.exit(4)
            raise ValueError("boom on rank 1")

    trainer.callbacks.append(callback)
    _keep_alive_after_abort(trainer.rank)
    trainer.fit(X, y, epochs=100_000)  # hours, unless the failure ends the job
    _write_marker(out, trainer.rank)


def setup(out):
    """Rank 1's part of the data holds a NaN: both ranks must raise at once (nobody waits in a collective)."""
    from fastbp import distributed

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((200, 8)), rng.integers(0, 3, 200)
    trainer = distributed.Trainer(fastbp.MLP([8, 16, 3], dtype="float64"), fastbp.SGD(0.1), 20, progress=False)
    if trainer.rank == 1:
        X[3, 2] = np.nan
    trainer.fit(X, y, epochs=100_000, sharded=True)


def cli_fail(out):
    """The command line's train function raises on rank 1 while rank 0 waits in a collective; then each rank would
    write a marker file OUT.rankR."""
    from fastbp import distributed

    comm = distributed._mpi().COMM_WORLD

    def train(args, trainer_cls):
        if comm.Get_rank() == 1:
            raise RuntimeError("boom on rank 1")
        comm.Barrier()  # forever, unless the failure ends the job
        return 0

    _keep_alive_after_abort(comm.Get_rank())
    distributed.run_cli(train, argparse.Namespace(threads=1, plot=None, json=None))
    _write_marker(out, comm.Get_rank())


def cli_agreed(out):
    """The command line's train function with ranks that disagree on the batch size: every rank raises at once."""
    from fastbp import distributed

    def train(args, trainer_cls):
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
        rank = distributed._mpi().COMM_WORLD.Get_rank()
        trainer = trainer_cls(fastbp.MLP([4, 5, 3], dtype="float64"), batch_size=10 if rank == 1 else 20)
        trainer.fit(X, y, epochs=1)
        return 0

    sys.exit(distributed.run_cli(train, argparse.Namespace(threads=1, plot=None, json=None)))


def save_rank0(out):
    """Rank 0 alone calls the collective save, then every rank fits again: the job must end, not hang."""
    from fastbp import distributed

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
    trainer = distributed.Trainer(fastbp.MLP([4, 5, 3], dtype="float64"), batch_size=10, progress=False)
    trainer.fit(X, y, epochs=1)
    if trainer.rank == 0:
        trainer.save(os.path.join(out, "model.npz"))
    trainer.fit(X, y, epochs=1)


def save_rank0_caught(out, bad_path=False):
    """As save_rank0, each rank catching what its calls raise and going on, as code that retries after an error
    raised on every rank does: rank 0's fit after its save then waits for a rank 1 that has finished, unless the
    job ends at the first call out of step (``bad_path``: even when rank 0's save fails its own argument check)."""
    from fastbp import distributed

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
    trainer = distributed.Trainer(fastbp.MLP([4, 5, 3], dtype="float64"), batch_size=10, progress=False)
    trainer.fit(X, y, epochs=1)
    path = None if bad_path else os.path.join(out, "model.npz")
    calls = [lambda: trainer.save(path)] if trainer.rank == 0 else []
    for call in [*calls, lambda: trainer.fit(X, y, epochs=1)]:
        try:
            call()
        except Exception:
            pass


#: Settings that differ on rank 1 only, and whether the data is sharded: every rank must raise a ValueError that
#: names the setting (some of these hung, or failed with an MPI error on one rank, when unchecked).
DISAGREE = {
    "record_deltas": ({"record_deltas": True}, True),
    "divergence_factor": ({"divergence_factor": None}, False),
    "early_stopping": ({"early_stopping": True}, False),
    "patience": ({"patience": 2}, False),
    "min_delta": ({"min_delta": 0.5}, False),
    "restore_best": ({"restore_best": False}, False),
    "batch_size": ({"batch_size": 8}, False),
}
#: Replicated data that differs on rank 1 only (another shuffle, other labels, other weights, a lost row): the
#: field the error must name.
DATA_DISAGREE = {
    "shuffled": "X (CRC-32 of 64 rows spread over it)",
    "labels": "y (CRC-32 of the same rows)",
    "weights": "sample_weight (CRC-32 of the same rows)",
    "lost_row": "rows is 64 on rank 0 but 63 on rank 1",
    "evaluate": "the ranks disagree on evaluate's arguments: X (CRC-32",
}


def checks_data():
    """(X, y, w, Xs, ys) of the ``checks`` run: 64 rows, 3 classes, sample weights, and 16 more rows."""
    rng = np.random.default_rng(21)
    return rng.standard_normal((64, 5)), rng.integers(0, 3, 64), rng.random(64) + 0.05


def checks_net(seed):
    return fastbp.MLP([5, 7, 3], "tanh", l2=1e-3, dtype="float64", seed=seed)


def checks(out):
    """Collective methods and checks on 2 ranks; rank 0 pickles {name: value or per-rank list} to OUT."""
    from fastbp import distributed

    comm = distributed._mpi().COMM_WORLD
    rank = comm.Get_rank()
    results = {}
    X, y, w = checks_data()

    def error_of(call, *args, **kwargs):
        try:
            call(*args, **kwargs)
        except Exception as err:
            return type(err).__name__, str(err), bool(getattr(err, "agreed_across_ranks", False))
        return None

    def trainer(seed=0, optimizer=None, **options):
        return distributed.Trainer(checks_net(seed), optimizer, progress=False, threads=None, **options)

    for name, (options, sharded) in DISAGREE.items():
        t = trainer(**{"batch_size": 16, **(options if rank == 1 else {})})
        part = slice(0, 30) if rank == 0 else slice(30, 64)
        data = (X[part], y[part]) if sharded else (X, y)
        results[f"disagree/{name}"] = comm.allgather(error_of(t.fit, *data, epochs=2, sharded=sharded))
    for name in DATA_DISAGREE:
        t = trainer(batch_size=16)
        Xr, yr, wr = X, y, w
        if rank == 1:
            Xr, yr, wr = {
                "shuffled": (X[::-1], y[::-1], w[::-1]),
                "labels": (X, (y + 1) % 3, w),
                "weights": (X, y, 2 * w),
                "lost_row": (X[:-1], y[:-1], w[:-1]),
                "evaluate": (X[::-1], y, w),
            }[name]
        call = t.evaluate if name == "evaluate" else t.fit
        results[f"data/{name}"] = comm.allgather(error_of(call, Xr, yr, sample_weight=wr))

    # a bad constructor argument on rank 1 only: raised on every rank (rank 0 must not wait in threads_per_rank)
    net = checks_net(0)
    results["constructor"] = comm.allgather(error_of(distributed.Trainer, net, batch_size=0 if rank else 16))
    # sharded validation data empty on every rank (a part may be empty, not the whole set): refused before training
    part = slice(0, 30) if rank == 0 else slice(30, 64)
    fit = trainer(batch_size=16).fit
    results["empty_validation"] = comm.allgather(
        error_of(fit, X[part], y[part], epochs=1, sharded=True, validation_data=(X[:0], y[:0]))
    )

    # evaluate: replicated and weighted, sharded (rank 1's part empty), and in a history: Python floats
    t = trainer(seed=1, batch_size=16)
    history = t.fit(X, y, epochs=2, validation_data=(X[:20], y[:20]))
    results["evaluate/params"] = t.net.params.copy()
    results["evaluate/weighted"] = t.evaluate(X, y, sample_weight=w)
    results["evaluate/sharded"] = t.evaluate(X if rank == 0 else X[:0], y if rank == 0 else y[:0], sharded=True)
    results["evaluate/types"] = comm.allgather(
        sorted(
            {type(x).__name__ for r in (results["evaluate/weighted"], results["evaluate/sharded"]) for x in r.values()}
            | {type(history[k][0]).__name__ for k in ("val_loss", "val_accuracy", "loss")}
        )
    )
    # the step's workspace: rows of this rank's part of a replicated batch, not the whole batch
    results["workspace_rows"] = comm.allgather(t._rows)

    # save: collective, rank 0 writes, loadable; a failure to write is raised on every rank
    results["save/path"] = t.save(os.path.join(os.path.dirname(out), "model.npz"))
    results["save/error"] = comm.allgather(error_of(t.save, os.path.join(out + ".missing", "m.npz")))
    # save and sync with another network on rank 1: refused on every rank, naming what differs (save wrote rank 0's
    # network, sync failed in its broadcast on one rank)
    other = distributed.Trainer(
        fastbp.MLP([5, 8 if rank else 7, 3], dtype="float64"), progress=False, threads=None, batch_size=16
    )
    results["save/disagree"] = comm.allgather(error_of(other.save, os.path.join(os.path.dirname(out), "o.npz")))
    results["sync/disagree"] = comm.allgather(error_of(other.sync))
    # save's own arguments, and parameters that differ between ranks (save wrote rank 0's network, evaluate blended
    # the ranks' results)
    here = os.path.dirname(out)
    results["save/path_disagree"] = comm.allgather(error_of(t.save, os.path.join(here, f"p{rank}.npz")))
    extras = {"k": np.array([rank])}
    results["save/extras_disagree"] = comm.allgather(error_of(t.save, os.path.join(here, "e.npz"), extras=extras))
    unsynced = distributed.Trainer(checks_net(None), progress=False, threads=None, batch_size=16)
    results["save/params_differ"] = comm.allgather(error_of(unsynced.save, os.path.join(here, "u.npz")))
    results["evaluate/params_differ"] = comm.allgather(error_of(unsynced.evaluate, X, y))

    # train_step: replicated, weighted and sharded batches; rank 0's parameters broadcast on the first call only
    t = trainer(seed=2, optimizer=fastbp.SGD(0.1, momentum=0.9))
    synced = []
    sync = t._sync
    t._sync = lambda: (synced.append(1), sync())
    losses = [t.train_step(X[:16], y[:16]), t.train_step(X[16:32], y[16:32], sample_weight=w[16:32])]
    part = slice(32, 40) if rank == 0 else slice(40, 48)
    losses.append(t.train_step(X[part], y[part], sample_weight=w[part], sharded=True))
    results["train_step/losses"] = losses
    results["train_step/params"] = t.net.params.copy()
    results["train_step/syncs"] = comm.allgather(len(synced))
    if rank == 1:  # parameters changed on one rank between steps: sync() makes them equal again
        t.net.params[:] += 1.0
    t.sync()
    results["train_step/after_sync_equal"] = len(set(comm.allgather(t.net.params.tobytes()))) == 1

    # a Cosine schedule sized by rank 0's step count, whatever the other ranks' counts
    t = trainer(seed=3, optimizer=fastbp.SGD(0.1, schedule="cosine"), batch_size=16)
    t.fit(X, y, epochs=1)
    if rank == 1:
        t.optimizer.t = 1000
    results["cosine/history"] = t.fit(X, y, epochs=2)
    results["cosine/params"] = t.net.params.copy()

    # divergence: raised on every rank
    t = trainer(seed=4, optimizer=fastbp.SGD(1e4), batch_size=16)
    results["diverge"] = comm.allgather(error_of(t.fit, X, 100.0 * np.eye(3)[y], epochs=5))
    if rank == 0:
        with open(out, "wb") as f:
            pickle.dump(results, f)


#: Networks with layer options (layer norm, residual connections, dropout) trained over 2 ranks by the ``layers`` run:
#: name -> how the data is split, as in CONFIGS. Dropout's masks are keyed by the rows' indices in the whole data set,
#: so each rank must draw, for its rows, the masks one process draws.
LAYER_CONFIGS = {
    "layer_norm_residual_dropout": "replicated",
    "dropout_sharded": (29,),
    "float32_layer_norm_dropout_adam": "replicated",
}


def make_layers(name):
    """(net, trainer kwargs, X, y, fit kwargs) of the LAYER_CONFIGS configuration ``name``, as :func:`make`."""
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "layer_norm_residual_dropout":
        # 70 rows in batches of 16: the last batch has 6 rows
        X, y = rng.standard_normal((70, 8)), rng.integers(0, 3, 70)
        net = fastbp.MLP(
            [8, 12, 12, 12, 3], "relu", dtype="float64", seed=13, norm="layer", residual=[False, True, True],
            dropout=[0.3, 0.0, 0.2], l2=1e-3,
        )  # fmt: skip
        opt = fastbp.SGD(0.05, momentum=0.9, clip_norm=1.0)
        return net, {"optimizer": opt, "batch_size": 16, "seed": 14}, X, y, {"validation_data": (X[:20], y[:20])}
    if name == "dropout_sharded":
        X, y = rng.standard_normal((61, 6)), rng.integers(0, 3, 61)
        w = rng.random(61) + 0.1
        net = fastbp.MLP([6, 6, 9, 3], "tanh", dtype="float64", seed=15, norm=[None, "layer"], residual=[True, False],
                         dropout=0.5)  # fmt: skip
        return net, {"optimizer": fastbp.AdamW(1e-2), "batch_size": 20, "seed": 16}, X, y, {"sample_weight": w}
    if name == "float32_layer_norm_dropout_adam":
        X, y = rng.standard_normal((50, 7)), rng.integers(0, 4, 50)
        net = fastbp.MLP([7, 10, 10, 4], "leaky_relu", dtype="float32", seed=17, norm="layer", residual=[False, True],
                         dropout=[0.25, 0.4])  # fmt: skip
        return net, {"optimizer": fastbp.Adam(1e-2), "batch_size": 12, "seed": 18}, X, y, {}
    raise KeyError(name)


def layers_step_net():
    """The network of the ``layers`` run's train_step checks: layer norm, a residual connection and dropout."""
    return fastbp.MLP([5, 7, 7, 3], "tanh", dtype="float64", seed=19, norm="layer", residual=[False, True],
                      dropout=[0.5, 0.3])  # fmt: skip


def layers(out):
    """Layer options on 2 ranks; rank 0 pickles {name: value or per-rank list} to OUT: the LAYER_CONFIGS fits, three
    train_steps with dropout (replicated, then sharded), batch norm refused, ranks that disagree on an option."""
    from fastbp import distributed

    comm = distributed._mpi().COMM_WORLD
    rank = comm.Get_rank()
    results = {}

    def error_of(call, *args, **kwargs):
        try:
            call(*args, **kwargs)
        except Exception as err:
            return type(err).__name__, str(err), bool(getattr(err, "agreed_across_ranks", False))
        return None

    for name, split in LAYER_CONFIGS.items():
        net, kwargs, X, y, fit_kwargs = make_layers(name)
        trainer = distributed.Trainer(net, progress=False, threads=None, **kwargs)
        fit_kwargs = dict(fit_kwargs)
        if split != "replicated":
            sw = fit_kwargs.pop("sample_weight", None)
            X, y, sw = _shard(split, rank, X, y, sw)
            fit_kwargs.update(sharded=True, sample_weight=sw)
        history = trainer.fit(X, y, epochs=EPOCHS, **fit_kwargs)
        results[f"{name}/params"] = net.params.copy()
        results[f"{name}/same_on_all_ranks"] = len(set(comm.allgather(net.params.tobytes()))) == 1
        results[f"{name}/history"] = {k: v for k, v in history.items() if k not in ("epoch_time", "comm_time")}

    # train_step: the batch's row ids are 0..m-1 (replicated: each rank its part of them; sharded: the ranks' parts in
    # rank order), as in one process
    X, y, _ = checks_data()
    trainer = distributed.Trainer(layers_step_net(), fastbp.SGD(0.1, momentum=0.9), progress=False, threads=None)
    losses = [trainer.train_step(X[:16], y[:16]), trainer.train_step(X[16:31], y[16:31])]
    part = slice(31, 38) if rank == 0 else slice(38, 48)
    losses.append(trainer.train_step(X[part], y[part], sharded=True))
    results["train_step/losses"] = losses
    results["train_step/params"] = trainer.net.params.copy()

    # batch norm: refused on every rank by the constructor, saying why and what to do
    for key, norm in (("batch_norm", "batch"), ("batch_norm_one_layer", ["layer", "batch"])):
        net = fastbp.MLP([5, 7, 7, 3], dtype="float64", norm=norm)
        results[key] = comm.allgather(error_of(distributed.Trainer, net, progress=False, threads=None))

    # ranks whose networks differ in an option (the sizes of the all-reduce too, for norm): named on every rank
    for key, option in (("norms", {"norm": "layer"}), ("residuals", {"residual": [False, True]})):
        net = fastbp.MLP([5, 7, 7, 3], dtype="float64", **(option if rank == 1 else {}))
        trainer = distributed.Trainer(net, progress=False, threads=None, batch_size=16)
        results[f"disagree/{key}"] = comm.allgather(error_of(trainer.fit, X, y, epochs=1))
    net = fastbp.MLP([5, 7, 7, 3], dtype="float64", dropout=0.5 if rank == 1 else 0.25)
    trainer = distributed.Trainer(net, progress=False, threads=None, batch_size=16)
    results["disagree/dropouts"] = comm.allgather(error_of(trainer.fit, X, y, epochs=1))
    if _onednn.info()["reason"] is None:  # bfloat16 products on one rank only
        net = fastbp.MLP([5, 7, 7, 3], matmul_precision="bfloat16" if rank == 1 else "float32")
        trainer = distributed.Trainer(net, progress=False, threads=None, batch_size=16)
        results["disagree/matmul_precisions"] = comm.allgather(error_of(trainer.fit, X, y, epochs=1))

    # seed=None draws each rank's own dropout seed: rank 0's is broadcast with the parameters
    net = fastbp.MLP([5, 7, 7, 3], dtype="float64", seed=None, dropout=0.5)
    trainer = distributed.Trainer(net, fastbp.SGD(0.1), progress=False, threads=None, batch_size=16)
    trainer.fit(X, y, epochs=1)
    results["seed_none/dropout_seeds"] = comm.allgather(net.dropout_seed)
    if rank == 0:
        with open(out, "wb") as f:
            pickle.dump(results, f)


MODES = {
    "equal": equal,
    "fail": fail,
    "exit": functools.partial(fail, exit=True),
    "setup": setup,
    "cli_fail": cli_fail,
    "cli_agreed": cli_agreed,
    "save_rank0": save_rank0,
    "save_rank0_caught": save_rank0_caught,
    "save_rank0_bad_path_caught": functools.partial(save_rank0_caught, bad_path=True),
    "checks": checks,
    "layers": layers,
}

if __name__ == "__main__":
    MODES[sys.argv[1]](sys.argv[2])
