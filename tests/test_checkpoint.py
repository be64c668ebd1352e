"""Checkpoints: exact round trip, rejection of damaged files, atomic writes."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import make_batch

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


def test_load_without_optimizer(tmp_path):
    net = fastbp.MLP([3, 2])
    net.save(tmp_path / "m.npz")
    loaded, opt = fastbp.load(tmp_path / "m.npz", return_optimizer=True)
    assert opt is None
    np.testing.assert_array_equal(loaded.params, net.params)
    assert isinstance(fastbp.load(tmp_path / "m.npz"), fastbp.MLP)


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
    # a consistent file (digest recomputed) whose params do not fit the architecture
    from fastbp.checkpoint import _digest

    reshaped = dict(arrays, layer_sizes=np.array([3, 5, 2]))
    del reshaped["sha256"]
    reshaped["sha256"] = np.array(_digest(reshaped))
    np.savez(tmp_path / "reshaped.npz", **reshaped)
    with pytest.raises(CheckpointError, match=r"params has dtype float64 and shape \(26,\).*\(32,\)"):
        fastbp.load(tmp_path / "reshaped.npz")
    # not a checkpoint at all
    np.savez(tmp_path / "other.npz", X=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a fastbp checkpoint"):
        fastbp.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        fastbp.load(tmp_path / "missing.npz")


SAVER = textwrap.dedent(
    """
    import sys
    import fastbp
    net = fastbp.MLP([300, 500, 300, 10], seed=0)
    path = sys.argv[1]
    k = 0
    while True:
        net.params[:] = k
        net.save(path)
        if k == 0:
            print("saved", flush=True)
        k += 1
    """
)


def test_killing_the_process_during_a_save_never_leaves_a_corrupt_file(tmp_path):
    path = tmp_path / "model.npz"
    rng = np.random.default_rng(0)
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "saved"
            time.sleep(rng.uniform(0.0, 0.5))  # each save takes ~10 ms: the kill lands mid-write most times
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        net = fastbp.load(path)  # always a complete checkpoint: all parameters equal one k
        assert np.unique(net.params).size == 1, attempt
    leftovers = [name for name in os.listdir(tmp_path) if name != "model.npz"]
    assert all(name.startswith(".fastbp-") for name in leftovers)  # only temporary files, never the target


def test_save_rejects_object_extras_and_missing_directories(tmp_path):
    net = fastbp.MLP([3, 2])
    with pytest.raises(TypeError, match=r"extras\['cfg'\]"):
        net.save(tmp_path / "m.npz", extras={"cfg": {"a": 1}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        net.save(tmp_path / "missing" / "m.npz")
    assert not list(tmp_path.iterdir())
    net.save(tmp_path / "m.npz")
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
