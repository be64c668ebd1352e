"""Checkpoints: exact round trip (layer options and running statistics too), version-1 files, rejection of damaged
files and unknown versions (kills during saves, byte flips and stale temporary files: tests/test_failures.py)."""

import hashlib
import json
import os

import numpy as np
import pytest
from conftest import PAIRS, make_batch

import fastbp
from fastbp.checkpoint import CheckpointError


def _trained(rng, optimizer):
    net = fastbp.MLP([5, 9, 4, 3], ["tanh", "relu"], l2=0.01, dtype="float64", seed=3, trainable=[True, False, True])
    trainer = fastbp.Trainer(net, optimizer, batch_size=8, seed=1, progress=False)
    X, y = make_batch(net, 40, rng)
    trainer.fit(X, y, epochs=2)
    return net, trainer, X, y


@pytest.mark.parametrize(
    "optimizer",
    [lambda: fastbp.SGD(0.05, momentum=0.9, nesterov=True), lambda: fastbp.AdamW(schedule=fastbp.optim.Cosine(50))],
)
def test_round_trip_is_exact_and_training_resumes_identically(tmp_path, rng, optimizer):
    net, trainer, X, y = _trained(rng, optimizer())
    path = tmp_path / "model.npz"
    trainer.save(path, extras={"note": np.arange(3)})
    loaded, opt = fastbp.load(path, return_optimizer=True)
    assert loaded.layer_sizes == net.layer_sizes and loaded.activations == net.activations
    assert (loaded.output, loaded.loss, loaded.l2, loaded.dtype, loaded.trainable) == (
        net.output,
        net.loss,
        net.l2,
        net.dtype,
        net.trainable,
    )
    np.testing.assert_array_equal(loaded.params, net.params)
    np.testing.assert_array_equal(opt.state, trainer.optimizer.state)
    assert opt.t == trainer.optimizer.t and repr(opt) == repr(trainer.optimizer)
    np.testing.assert_array_equal(loaded.extras["note"], np.arange(3))
    # one more epoch from the checkpoint equals one more epoch of the original
    resumed = fastbp.Trainer(loaded, opt, batch_size=8, seed=5, progress=False)
    original = fastbp.Trainer(net, trainer.optimizer, batch_size=8, seed=5, progress=False)
    resumed.fit(X, y, epochs=1)
    original.fit(X, y, epochs=1)
    np.testing.assert_array_equal(loaded.params, net.params)


def test_an_optimizer_saved_with_a_network_it_does_not_fit_is_refused_at_save(tmp_path, rng):
    net, trainer, _, _ = _trained(rng, fastbp.Adam())  # float64, 109 parameters
    other = fastbp.MLP(net.layer_sizes, net.activations, dtype="float32")
    with pytest.raises(
        ValueError, match=r"state, shape \(2, 109\) of float64, was made for another network \(this one"
    ):
        other.save(tmp_path / "m.npz", optimizer=trainer.optimizer)
    with pytest.raises(ValueError, match=r"was made for another network \(this one has 8 parameters of float64\)"):
        fastbp.MLP([3, 2], dtype="float64").save(tmp_path / "m.npz", optimizer=trainer.optimizer)
    assert not (tmp_path / "m.npz").exists()
    # momentum switched on after training: saved as its next step would start, zeroed velocity, same step count
    sgd = fastbp.SGD(0.1)
    fastbp.Trainer(net, sgd, batch_size=8, progress=False).fit(*make_batch(net, 16, rng), epochs=1)
    sgd.momentum = 0.9
    net.save(tmp_path / "m.npz", optimizer=sgd)
    _, loaded = fastbp.load(tmp_path / "m.npz", return_optimizer=True)
    assert loaded.t == sgd.t > 0 and loaded.state.shape == (1, net.n_params) and not loaded.state.any()


def test_load_without_optimizer(tmp_path):
    net = fastbp.MLP([3, 2])
    net.save(tmp_path / "m.npz")
    loaded, opt = fastbp.load(tmp_path / "m.npz", return_optimizer=True)
    assert opt is None
    np.testing.assert_array_equal(loaded.params, net.params)
    assert isinstance(fastbp.load(tmp_path / "m.npz"), fastbp.MLP)


def test_paths_may_be_bytes_as_for_open_and_numpy(tmp_path):
    net = fastbp.MLP([3, 2], seed=0)
    trainer = fastbp.Trainer(net, fastbp.Adam(), progress=False)
    for save, path in ((net.save, tmp_path / "m.npz"), (trainer.save, tmp_path / "t.npz")):
        save(os.fsencode(path))
        loaded, _ = fastbp.load(os.fsencode(path), return_optimizer=True)
        np.testing.assert_array_equal(loaded.params, net.params)
    np.savez(tmp_path / "d.npz", X=np.ones((2, 3)), y=[0, 1])
    (tmp_path / "d.csv").write_text("1,2,0\n3,4,1\n")
    assert fastbp.data.load_file(os.fsencode(tmp_path / "d.npz"))[1].tolist() == [0, 1]
    assert fastbp.data.load_file(os.fsencode(tmp_path / "d.csv"))[1].tolist() == [0, 1]


def test_truncated_at_any_byte_fails_with_a_clear_error(tmp_path):
    net = fastbp.MLP([3, 4, 2])
    path = tmp_path / "m.npz"
    net.save(path, optimizer=fastbp.Adam())
    data = path.read_bytes()
    broken = tmp_path / "broken.npz"
    for cut in range(len(data)):
        broken.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"broken\.npz"):
            fastbp.load(broken, return_optimizer=True)


def test_tampered_bytes_and_changed_shapes_are_rejected(tmp_path):
    net = fastbp.MLP([3, 4, 2], dtype="float64")
    path = tmp_path / "m.npz"
    net.save(path)
    with np.load(path) as f:
        arrays = dict(f)
    # change a parameter value but keep the stored digest
    tampered = dict(arrays, params=arrays["params"] + 1.0)
    np.savez(tmp_path / "tampered.npz", **tampered)
    with pytest.raises(CheckpointError, match="SHA-256"):
        fastbp.load(tmp_path / "tampered.npz")
    # consistent files (digest recomputed) whose params do not fit the architecture; a huge one is refused before the
    # network is made (it allocated the whole network first: 286 MB for 5000 x 5000, 40 GB for 100000 x 100000)
    for sizes, needs in (([3, 5, 2], 32), ([100_000, 100_000, 2], 10000300002)):
        reshaped = _rewrite(tmp_path / "m.npz", tmp_path / "reshaped.npz", layer_sizes=np.array(sizes))
        with pytest.raises(CheckpointError, match=rf"params has dtype float64 and shape \(26,\).*\({needs},\)"):
            fastbp.load(reshaped)
    # without its dtype entry too: still the file's error, not a KeyError
    reshaped = _rewrite(tmp_path / "m.npz", tmp_path / "reshaped.npz", layer_sizes=np.array([3, 5, 2]), dtype=None)
    with pytest.raises(CheckpointError, match=r"params has dtype float64 and shape \(26,\).*\(32,\)"):
        fastbp.load(reshaped)
    # not a checkpoint at all
    np.savez(tmp_path / "other.npz", X=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"archive of arrays \[X\]; expected a fastbp checkpoint"):
        fastbp.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        fastbp.load(tmp_path / "missing.npz")


def _options_net(seed=3):
    """A float64 network with every layer option: batch and layer norm, residual connections, two dropout rates."""
    return fastbp.MLP(
        [5, 8, 8, 8, 3],
        activation="tanh",
        dtype="float64",
        seed=seed,
        norm=["batch", "layer", "batch"],
        residual=[False, True, True],
        dropout=[0.0, 0.25, 0.1],
    )


def test_layer_options_and_running_statistics_round_trip_exactly(tmp_path, rng):
    net = _options_net()
    net.dropout_seed = 12345  # not the initialisation's seed: the checkpoint keeps it
    trainer = fastbp.Trainer(net, fastbp.Adam(1e-2), batch_size=8, seed=1, progress=False)
    X, y = make_batch(net, 40, rng)
    trainer.fit(X, y, epochs=2)
    assert not np.array_equal(net.running_means[0], np.zeros(8))  # training moved the running statistics
    path = tmp_path / "options.npz"
    trainer.save(path)
    with np.load(path) as f:
        assert int(f["version"]) == 2
        assert list(f["norms"]) == ["batch", "layer", "batch"] and f["residuals"].tolist() == [False, True, True]
        np.testing.assert_array_equal(f["buffers"], net.buffers)
    loaded, opt = fastbp.load(path, return_optimizer=True)
    assert (loaded.norms, loaded.residuals, loaded.dropouts) == (net.norms, net.residuals, net.dropouts)
    assert loaded.dropout_seed == 12345 and repr(loaded) == repr(net)
    np.testing.assert_array_equal(loaded.params, net.params)
    np.testing.assert_array_equal(loaded.buffers, net.buffers)
    for a, b in zip(loaded.running_vars, net.running_vars, strict=True):
        assert (a is None and b is None) or np.array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))  # evaluation mode: the running statistics
    # training resumes identically: the same dropout masks (seed and step) and running statistics
    resumed = fastbp.Trainer(loaded, opt, batch_size=8, seed=5, progress=False)
    original = fastbp.Trainer(net, trainer.optimizer, batch_size=8, seed=5, progress=False)
    resumed.fit(X, y, epochs=1)
    original.fit(X, y, epochs=1)
    np.testing.assert_array_equal(loaded.params, net.params)
    np.testing.assert_array_equal(loaded.buffers, net.buffers)


def test_a_plain_network_saves_empty_options(tmp_path):
    net = fastbp.MLP([3, 2])  # no hidden layer: the per-layer entries are empty
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        assert f["norms"].shape == f["residuals"].shape == f["dropouts"].shape == f["buffers"].shape == (0,)
    loaded = fastbp.load(tmp_path / "m.npz")
    assert not loaded._has_options and loaded.dropout_seed == net.dropout_seed


def _v1_digest(arrays):
    """The SHA-256 digest of version 1 (unchanged in version 2): names, dtypes, shapes and bytes, by name."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _save_v1(net, path, optimizer=None, extras=None):
    """Write ``net`` as fastbp wrote checkpoints before the layer options (format version 1)."""
    arrays = {
        "format": np.array("fastbp-checkpoint"),
        "version": np.array(1),
        "layer_sizes": np.array(net.layer_sizes, dtype=np.int64),
        "activations": np.array(net.activations, dtype=str).reshape(-1),
        "output": np.array(net.output),
        "loss": np.array(net.loss),
        "l2": np.array(net.l2),
        "dtype": np.array(net.dtype.name),
        "trainable": np.array(net.trainable, dtype=bool),
        "matmul_precision": np.array(net.matmul_precision),
        "params": net.params,
    }
    if optimizer is not None:
        config = {
            k: ({"name": type(val).__name__, **vars(val)} if k == "schedule" else val)
            for k, val in optimizer.config().items()
        }
        arrays["optimizer"] = np.array(json.dumps({"name": optimizer.name, "config": config}))
        arrays["optimizer_t"] = np.array(optimizer.t, dtype=np.int64)
        arrays["optimizer_state"] = optimizer.state
    for name, value in (extras or {}).items():
        arrays[f"extra_{name}"] = np.asarray(value)
    arrays["sha256"] = np.array(_v1_digest(arrays))
    np.savez(path, **arrays)


def test_version_1_checkpoints_still_load_as_plain_networks(tmp_path, rng):
    net, trainer, X, _ = _trained(rng, fastbp.AdamW(schedule=fastbp.optim.Cosine(50)))
    path = tmp_path / "v1.npz"
    _save_v1(net, path, trainer.optimizer, extras={"x_mean": np.arange(5.0)})
    loaded, opt = fastbp.load(path, return_optimizer=True)
    assert loaded.layer_sizes == net.layer_sizes and loaded.trainable == net.trainable
    assert not loaded._has_options and loaded.buffers.size == 0
    assert loaded.norms == (None,) * 3 and loaded.residuals == (False,) * 3 and loaded.dropouts == (0.0,) * 3
    np.testing.assert_array_equal(loaded.params, net.params)
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))
    np.testing.assert_array_equal(opt.state, trainer.optimizer.state)
    assert opt.t == trainer.optimizer.t and repr(opt) == repr(trainer.optimizer)
    np.testing.assert_array_equal(loaded.extras["x_mean"], np.arange(5.0))
    # saved again, it is a version-2 checkpoint of the same network
    loaded.save(tmp_path / "v2.npz")
    with np.load(tmp_path / "v2.npz") as f:
        assert int(f["version"]) == 2
    np.testing.assert_array_equal(fastbp.load(tmp_path / "v2.npz").params, net.params)


def _rewrite(path, out, **changes):
    """Copy the checkpoint ``path`` to ``out`` with entries changed (None deletes) and the digest recomputed."""
    with np.load(path) as f:
        arrays = dict(f)
    del arrays["sha256"]
    for name, value in changes.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    arrays["sha256"] = np.array(_v1_digest(arrays))
    np.savez(out, **arrays)
    return out


def test_unknown_versions_and_inconsistent_options_are_refused(tmp_path):
    net = _options_net()
    path = tmp_path / "m.npz"
    net.save(path)
    future = _rewrite(path, tmp_path / "future.npz", version=np.array(3))
    with pytest.raises(CheckpointError, match=r"future\.npz has checkpoint format version 3, .*reads versions 1 and 2"):
        fastbp.load(future)
    for version in (np.array(0), np.array("2"), np.array([2]), None):
        with pytest.raises(CheckpointError, match="version"):
            fastbp.load(_rewrite(path, tmp_path / "bad.npz", version=version))
    # the options and the running statistics are covered by the digest
    with np.load(path) as f:
        tampered = dict(f)
    tampered["buffers"] = tampered["buffers"] + 1.0
    np.savez(tmp_path / "tampered.npz", **tampered)
    with pytest.raises(CheckpointError, match="SHA-256"):
        fastbp.load(tmp_path / "tampered.npz")
    cases = [
        ({"norms": np.array(["batch", "layer"])}, r"invalid network: norms has 2 values for 3 hidden layers"),
        ({"norms": np.array(["batch", "group", ""])}, r"invalid network: unknown norm\[1\] 'group'"),
        ({"residuals": np.array([True, True, True])}, r"invalid network: residual\[0\]"),
        ({"dropouts": np.array([0.0, 1.0, 0.0])}, r"invalid network: dropout\[1\] must be in \[0, 1\)"),
        ({"dropouts": None}, r"invalid network: 'dropouts'"),
        ({"buffers": np.zeros(3)}, r"buffers \(running statistics\) has dtype float64 and shape \(3,\).*\(32,\)"),
        ({"buffers": None}, "needs the entries buffers and dropout_seed"),
        ({"dropout_seed": np.array(-1)}, "dropout_seed must be a non-negative integer"),
    ]
    trainer = fastbp.Trainer(net, fastbp.Adam(), progress=False)
    trainer.save(path)
    with pytest.raises(CheckpointError, match=r"optimizer_t \(the optimizer's step count\) is -5, below 0"):
        fastbp.load(_rewrite(path, tmp_path / "bad.npz", optimizer_t=np.array(-5)), return_optimizer=True)
    for changes, message in cases:
        with pytest.raises(CheckpointError, match=message):
            fastbp.load(_rewrite(path, tmp_path / "bad.npz", **changes))


def test_save_rejects_object_extras_and_missing_directories(tmp_path):
    net = fastbp.MLP([3, 2])
    with pytest.raises(TypeError, match=r"extras\['cfg'\]"):
        net.save(tmp_path / "m.npz", extras={"cfg": {"a": 1}})
    with pytest.raises(TypeError, match="extras must be a dict of name -> array or None, got list"):
        net.save(tmp_path / "m.npz", extras=[1, 2])
    with pytest.raises(TypeError, match="extras' names must be strings"):
        net.save(tmp_path / "m.npz", extras={1: np.zeros(2)})
    with pytest.raises(TypeError, match="optimizer must be a fastbp optimizer"):
        net.save(tmp_path / "m.npz", optimizer="adam")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        net.save(tmp_path / "missing" / "m.npz")
    assert not list(tmp_path.iterdir())
    net.save(tmp_path / "m.npz")
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_a_loaded_checkpoint_saved_again_keeps_its_extras(tmp_path):
    # load, fine-tune, save: fastbp train's standardisation (x_mean, x_scale) must survive for fastbp predict
    net = fastbp.MLP([3, 2], seed=0)
    net.save(tmp_path / "a.npz", extras={"x_mean": np.arange(3.0), "classes": np.array(["cat", "dog"])})
    loaded = fastbp.load(tmp_path / "a.npz")
    loaded.save(tmp_path / "b.npz")
    assert sorted(fastbp.load(tmp_path / "b.npz").extras) == ["classes", "x_mean"]
    loaded.save(tmp_path / "c.npz", extras={"x_mean": np.ones(3), "note": np.array("tuned")})
    again = fastbp.load(tmp_path / "c.npz").extras
    np.testing.assert_array_equal(again["x_mean"], np.ones(3))  # the array given replaces the loaded one
    assert again["classes"].tolist() == ["cat", "dog"] and str(again["note"]) == "tuned"
    assert sorted(loaded.extras) == ["classes", "x_mean"]  # saving does not change the network's extras
    del loaded.extras["classes"]
    loaded.save(tmp_path / "d.npz")
    assert sorted(fastbp.load(tmp_path / "d.npz").extras) == ["x_mean"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(("output", "loss"), [*PAIRS, ("softmax", "log_loss"), ("sigmoid", "binary_log_loss")])
def test_every_output_and_loss_round_trip(tmp_path, rng, output, loss):
    net = fastbp.MLP([4, 6, 3], "tanh", output, loss, dtype="float64", seed=1)
    net.save(tmp_path / "m.npz")
    loaded = fastbp.load(tmp_path / "m.npz")
    assert (loaded.output, loaded.loss) == (net.output, net.loss) == (output, loss)
    X, Y = make_batch(net, 7, rng)
    assert loaded.value_and_grad(X, Y)[0] == net.value_and_grad(X, Y)[0]


def test_a_save_while_another_thread_trains_writes_one_steps_state(tmp_path, rng):
    # save copied the parameters while a training call on another thread wrote them: files whose digest did not
    # match, or parameters of one step with the step count of another
    import threading

    net = fastbp.MLP([6, 32, 3], dtype="float64", norm="batch", seed=0)
    trainer = fastbp.Trainer(net, fastbp.SGD(0.01, momentum=0.9), progress=False)
    X, y = rng.standard_normal((64, 6)), rng.integers(0, 3, 64)
    trainer.train_step(X, y)  # compiled before the race
    seen = {trainer.optimizer.t: (net.params.copy(), net.buffers.copy(), trainer.optimizer.state.copy())}
    done = threading.Event()

    def train():
        for _ in range(400):
            trainer.train_step(X, y)
            seen[trainer.optimizer.t] = (net.params.copy(), net.buffers.copy(), trainer.optimizer.state.copy())
        done.set()

    worker = threading.Thread(target=train)
    worker.start()
    paths = []
    while not done.is_set() and len(paths) < 40:
        paths.append(trainer.save(tmp_path / f"c{len(paths)}.npz"))
    worker.join()
    assert len(paths) >= 2
    for path in paths:
        loaded, optimizer = fastbp.load(path, return_optimizer=True)
        params, buffers, state = seen[optimizer.t]
        np.testing.assert_array_equal(loaded.params, params)
        np.testing.assert_array_equal(loaded.buffers, buffers)
        np.testing.assert_array_equal(optimizer.state, state)
