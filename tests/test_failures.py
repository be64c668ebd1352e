"""The failure battery: what fastbp does when things go wrong.

- SIGKILLs at random moments of a process saving in a loop: the checkpoint is complete or absent, at most one
  temporary file is left, and the next save removes it; stale temporary files are recognised by their lock;
  writes are fsynced (file, then directory) and every file the command line writes goes through the atomic helper.
- Damaged checkpoints (byte flips at about 1400 offsets; truncation at every byte is tests/test_checkpoint.py) are
  refused cleanly, and pickle payloads (a pickle file, object arrays, raw members) are never executed.
- Determinism in one process and across processes; two trainers in two threads equal to sequential runs.
- A soak of many thousand calls with flat memory.
- A table of malformed arguments: the exception type, a message naming the argument, parameters untouched.
- batch_size larger than the data, as scikit-learn does it.
"""

import concurrent.futures
import contextlib
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
from conftest import (
    KILL_DELAY_MAX,
    KILLS_MIDWRITE_MIN,
    SOAK_RSS_GROWTH_MAX,
    SOAK_TRACED_GROWTH_MAX,
    make_batch,
)

import fastbp
from fastbp import _files, cli
from fastbp.checkpoint import CheckpointError

KILLS = 30

# ------------------------------------------------------------------------------------------ kills during saves
# One harness process imports fastbp once, then forks KILLS savers one after the other: each saves a 1.2 MB network
# in a loop (the parameters all equal to the loop count, so a mixed file would show) and is SIGKILLed after a random
# delay. After each kill the harness reports the temporary files next to the checkpoint and loads a copy of the
# checkpoint (a copy: loading the path itself would remove the stale temporary file, which the next save must do).
KILL_HARNESS = textwrap.dedent(
    """
    import json, os, shutil, signal, sys, time
    import numpy as np
    import fastbp
    from fastbp import _files

    target, scratch, kills, delay_max = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    directory = os.path.dirname(target)
    net = fastbp.MLP([300, 500, 300, 10], seed=0)
    rng = np.random.default_rng(0)
    for i in range(kills):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the saver: never returns to the harness's code
            try:
                os.close(ready_r)
                os.write(ready_w, b"1")
                k = 0
                while True:
                    net.params[:] = 1000 * i + k
                    net.save(target)
                    k += 1
            finally:
                os._exit(1)
        os.close(ready_w)
        os.read(ready_r, 1)  # the saver runs
        os.close(ready_r)
        time.sleep(rng.uniform(0.0, delay_max))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        temps = sorted(n for n in os.listdir(directory) if n.startswith(_files.PREFIX))
        others = sorted(n for n in os.listdir(directory) if n != os.path.basename(target) and n not in temps)
        report = {"kill": i, "temps": temps, "others": others, "exists": os.path.exists(target)}
        if report["exists"]:
            copy = os.path.join(scratch, "copy.npz")
            shutil.copyfile(target, copy)
            try:
                values = np.unique(fastbp.load(copy).params)
                report["values"] = values.tolist()[:3]
            except Exception as err:
                report["error"] = f"{type(err).__name__}: {err}"
        print(json.dumps(report), flush=True)
    """
)


def test_kills_during_saves_leave_a_complete_checkpoint_and_at_most_one_temporary_file(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "scratch").mkdir()
    target = tmp_path / "models" / "model.npz"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_HARNESS, str(target), str(tmp_path / "scratch"), str(KILLS), str(KILL_DELAY_MAX)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(reports) == KILLS
    for report in reports:
        assert len(report["temps"]) <= 1, report  # a kill leaves at most its own; the next save removes it
        assert report["others"] == [], report  # nothing but the checkpoint and that temporary file
        assert "error" not in report, report  # the checkpoint loads ...
        if report["exists"]:
            assert len(report["values"]) == 1, report  # ... and is one save, whole
    midwrite = sum(bool(r["temps"]) for r in reports)
    assert midwrite >= KILLS_MIDWRITE_MIN, f"only {midwrite} of {KILLS} kills landed during a write"
    assert sum(r["exists"] for r in reports) >= KILLS // 2  # most savers got a save done before their kill
    # the last kill's temporary file, if any, goes with the next save; and its name is the target's own pattern
    net = fastbp.MLP([3, 2])
    net.save(target)
    assert sorted(os.listdir(target.parent)) == ["model.npz"]


def _hold_temp_file(path):
    """A live writer's temporary file of ``path``: created and locked by a child process that waits for a line on
    its standard input. Returns (process, temporary file name)."""
    code = (
        "import sys; from fastbp import _files; fd, name = _files._create_locked_temp(sys.argv[1]); "
        "print(name, flush=True); sys.stdin.readline()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    return proc, proc.stdout.readline().strip()


def test_stale_temporary_files_are_removed_only_when_their_writer_is_gone(tmp_path):
    target = tmp_path / "model.npz"
    proc, live = _hold_temp_file(target)
    try:
        # a dead writer's file of the same target (unlocked), files of the same look that are not the target's own
        # pattern, and a symbolic link of the pattern: only the dead writer's file goes
        stale = tmp_path / f".fastbp-model.npz-{'0' * 16}.tmp"
        stale.write_bytes(b"partial")
        foreign = [".fastbp-other.npz-0123456789abcdef.tmp", ".fastbp-model.npz-xyz.tmp", ".fastbp-abcdefgh.tmp"]
        for name in foreign:
            (tmp_path / name).write_bytes(b"not ours")
        link = tmp_path / f".fastbp-model.npz-{'1' * 16}.tmp"
        link.symlink_to(tmp_path / foreign[0])
        assert _files.stale_temp_files(target) == [str(stale)]
        net = fastbp.MLP([3, 2])
        net.save(target)
        left = sorted(os.listdir(tmp_path))
        assert left == sorted([*foreign, link.name, os.path.basename(live), "model.npz"])
        # the live writer's file stays through saves and loads; once its writer is gone, a load removes it
        fastbp.load(target)
        assert os.path.exists(live)
    finally:
        proc.communicate("\n", timeout=60)
    assert _files.stale_temp_files(target) == [live]
    fastbp.load(target)
    assert not os.path.exists(live)


def test_long_names_that_start_alike_keep_their_temporary_files_apart(tmp_path):
    first, second = tmp_path / ("x" * 100 + "A.npz"), tmp_path / ("x" * 100 + "B.npz")
    with _files.atomic_write(str(second), "wb") as f:  # a temporary file of the second, left as a dead writer's
        f.write(b"partial")
        (temp,) = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
        os.link(tmp_path / temp, tmp_path / (temp + ".kept"))
    os.rename(tmp_path / (temp + ".kept"), tmp_path / temp)
    assert _files.stale_temp_files(second) == [str(tmp_path / temp)]
    assert _files.stale_temp_files(first) == []
    fastbp.MLP([3, 2]).save(first)  # removes its own stale files only
    assert (tmp_path / temp).exists()


def test_a_write_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    fastbp.MLP([3, 2]).save(tmp_path / "m.npz")
    kinds = [(kind, os.path.basename(arg) if kind == "fsync" else arg) for kind, arg in events]
    assert [k for k, _ in kinds] == ["fsync", "replace", "fsync"]
    assert kinds[0][1].startswith(".fastbp-m.npz-") and kinds[1][1] == "m.npz"
    assert events[2][1] == os.path.realpath(tmp_path)  # the directory, after the rename


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="midway"):
        with _files.atomic_write(path, "w") as f:
            f.write("new, partial")
            raise RuntimeError("midway")
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["report.json"]


def test_a_write_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path):
    # the rename used to put a regular file in the link's place, leaving the target as it was
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "model.npz"
    target.write_bytes(b"old")
    link = tmp_path / "latest.npz"
    link.symlink_to(os.path.join("runs", "model.npz"))  # relative, as `ln -s` makes it
    with _files.atomic_write(link, "wb") as f:
        f.write(b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["latest.npz", "runs"] and os.listdir(tmp_path / "runs") == ["model.npz"]


def test_a_failed_rename_names_the_file_not_the_temporary_one(tmp_path, monkeypatch):
    # a file the rename cannot replace (an immutable one: EPERM) was reported under the temporary file's name
    path = tmp_path / "model.npz"

    def refuse(src, dst):
        raise PermissionError(1, "Operation not permitted", src)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as info:
        with _files.atomic_write(path, "wb", what="--output") as f:
            f.write(b"data")
    assert str(info.value) == f"cannot write --output {path}: operation not permitted"
    assert os.listdir(tmp_path) == []


def test_every_file_the_command_line_writes_goes_through_the_atomic_helper(tmp_path, monkeypatch, capsys):
    written = []
    real = _files.atomic_write

    @contextlib.contextmanager
    def recording(path, *args, **kwargs):
        with real(path, *args, **kwargs) as f:
            yield f
        written.append(os.path.basename(path))

    monkeypatch.setattr(_files, "atomic_write", recording)
    monkeypatch.chdir(tmp_path)
    train = ["train", "--epochs", "1", "--layers", "8", "--no-progress", "-o", "m.npz"]
    assert cli.main([*train, "--json", "h.json", "--plot", "curves.png"]) == 0
    assert cli.main(["predict", "m.npz", "-o", "predictions"]) == 0
    args = ["--depth", "2", "--width", "8", "--samples", "32", "--epochs", "1", "--plot", "d.png", "--json", "d.json"]
    assert cli.main(["diagnose", *args]) == 0
    capsys.readouterr()
    assert sorted(written) == sorted(os.listdir(tmp_path))
    assert sorted(written) == sorted(["m.npz", "h.json", "curves.png", "predictions.npy", "d.png", "d.json"])


# ------------------------------------------------------------------------------------------ damaged checkpoints
def _flips(size, rng):
    """(offset, xor mask) pairs: every offset of the first and last 512 bytes (the zip's local header and the .npy
    headers of the first entries; the central directory) flipped whole and in its lowest bit, and 400 offsets drawn
    from the rest flipped whole."""
    ends = sorted(set(range(min(size, 512))) | set(range(max(0, size - 512), size)))
    middle = sorted(set(range(size)) - set(ends))
    drawn = sorted(rng.choice(middle, size=min(400, len(middle)), replace=False).tolist())
    return [(o, m) for o in ends for m in (0xFF, 0x01)] + [(o, 0xFF) for o in drawn]


def test_byte_flips_at_many_offsets_are_refused_or_change_nothing(tmp_path):
    net = fastbp.MLP([3, 4, 2], norm="batch", dropout=0.1, dtype="float64", seed=1)
    opt = fastbp.Adam()
    fastbp.Trainer(net, opt, batch_size=8, progress=False).fit(*make_batch(net, 16, np.random.default_rng(0)), epochs=1)
    path = tmp_path / "m.npz"
    net.save(path, optimizer=opt, extras={"classes": np.array(["a", "b"])})
    data = path.read_bytes()
    broken = tmp_path / "broken.npz"
    rng = np.random.default_rng(0)
    refused = unchanged = 0
    for offset, mask in _flips(len(data), rng):
        bad = bytearray(data)
        bad[offset] ^= mask
        broken.write_bytes(bad)
        try:
            loaded, loaded_opt = fastbp.load(broken, return_optimizer=True)
        except CheckpointError as err:
            assert str(err).startswith(str(broken)) and "\n" not in str(err), (offset, str(err))
            refused += 1
            continue
        # bytes the content does not depend on (a zip header's date, say): the same checkpoint, exactly
        np.testing.assert_array_equal(loaded.params, net.params)
        np.testing.assert_array_equal(loaded.buffers, net.buffers)
        np.testing.assert_array_equal(loaded_opt.state, opt.state)
        assert loaded.extras["classes"].tolist() == ["a", "b"] and loaded.layer_sizes == net.layer_sizes
        unchanged += 1
    assert refused > unchanged > 0  # both outcomes occur: the offsets reach content and bytes that are not


class _Payload:
    """Unpickling this touches ``path``: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path(self.path).touch, ())


def _pickle_payloads(tmp_path, sentinel):
    """Files that would run the payload if unpickled: name -> path."""
    payload = _Payload(sentinel)
    files = {}
    files["pickle"] = tmp_path / "pickle.npz"
    files["pickle"].write_bytes(pickle.dumps({"params": payload}))
    files["object_array"] = tmp_path / "object_array.npz"
    net = fastbp.MLP([3, 2])
    net.save(files["object_array"])
    with np.load(files["object_array"]) as f:
        arrays = dict(f)
    obj = np.empty(1, dtype=object)
    obj[0] = payload
    np.savez(files["object_array"], **{**arrays, "params": obj})
    files["raw_member"] = tmp_path / "raw_member.npz"
    with zipfile.ZipFile(files["raw_member"], "w") as z:
        z.writestr("format.npy", pickle.dumps(payload))
    files["npy"] = tmp_path / "object.npy"
    np.save(files["npy"], obj, allow_pickle=True)
    files["data_X"] = tmp_path / "data_X.npz"
    np.savez(files["data_X"], X=obj, y=np.zeros(1))
    return files


def test_pickle_payloads_are_never_executed(tmp_path, capfd):
    sentinel = tmp_path / "EXECUTED"
    files = _pickle_payloads(tmp_path, sentinel)
    for name, path in files.items():
        with pytest.raises(CheckpointError) as info:
            fastbp.load(path)
        assert "allow_pickle" not in str(info.value), name
        for argv in (["predict", str(path)], ["predict", str(files["object_array"]), "--data", str(path)]):
            assert cli.main(argv) == 1
            err = capfd.readouterr().err
            assert len(err.splitlines()) == 1 and "allow_pickle" not in err, err
        with pytest.raises(ValueError, match=r"pickle|not a NumPy array|expected a data file"):
            fastbp.data.load_npz(path)
    assert not sentinel.exists()
    # the payloads are real: unpickling them as NumPy would with allow_pickle=True runs them
    np.load(files["data_X"], allow_pickle=True)["X"]
    assert sentinel.exists()


# ------------------------------------------------------------------------------------------ determinism
def _fit_result(seed, barrier=None, rows=200, times=None):
    """A training run with every source of randomness fastbp has (initialisation, shuffling, validation split,
    dropout masks) and batch norm: (params, buffers, history losses). With a barrier, the run waits for it, and
    appends its (start, end) times to ``times``."""
    net = fastbp.MLP([12, 64, 64, 3], norm="batch", residual=[False, True], dropout=0.2, dtype="float64", seed=seed)
    trainer = fastbp.Trainer(net, fastbp.Adam(1e-2), batch_size=16, seed=seed, progress=False)
    X, y = make_batch(net, rows, np.random.default_rng(seed))
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    history = trainer.fit(X, y, epochs=6, validation_split=0.2)
    if times is not None:
        times.append((start, time.perf_counter()))
    return net.params.copy(), net.buffers.copy(), history["loss"], history["val_loss"]


def _assert_same_run(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_training_is_deterministic_in_process():
    first, second = _fit_result(3), _fit_result(3)
    _assert_same_run(first, second)
    assert not np.array_equal(first[0], _fit_result(4)[0])  # and the seed matters


def test_training_is_deterministic_across_processes(tmp_path):
    # two processes at the same time, then a third alone (the in-process repeat is the test above)
    args = ["train", "--epochs", "2", "--layers", "32,32", "--residual", "--dropout", "0.1", "--norm", "batch"]
    args += ["--no-progress", "--seed", "5", "--threads", "1"]

    def start(name):
        command = [sys.executable, "-m", "fastbp.cli", *args, "-o", name]
        return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL)

    procs = [start(f"p{i}.npz") for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert start("p2.npz").wait(timeout=300) == 0
    nets = [fastbp.load(tmp_path / name) for name in ("p0.npz", "p1.npz", "p2.npz")]
    for net in nets[1:]:
        np.testing.assert_array_equal(net.params, nets[0].params)
        np.testing.assert_array_equal(net.buffers, nets[0].buffers)


def test_two_trainers_in_two_threads_equal_sequential_runs():
    rows = 3000  # about 0.3 s of training each: the two runs overlap in time (checked)
    sequential = [_fit_result(seed, rows=rows) for seed in (1, 2)]
    results, errors, times = [None, None], [], []
    barrier = threading.Barrier(2)

    def run(i):
        try:
            results[i] = _fit_result(i + 1, barrier, rows, times)
        except Exception as err:  # reported below, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    (start_a, end_a), (start_b, end_b) = times
    assert max(start_a, start_b) < min(end_a, end_b)  # they did run at the same time
    for got, expected in zip(results, sequential, strict=True):
        _assert_same_run(got, expected)


def _in_threads(work, n_threads=4):
    """Run work(i) in n_threads threads at once; returns their results, raising the first error of any."""
    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        return list(pool.map(work, range(n_threads)))


def test_train_step_from_several_threads_counts_every_step():
    # The step count was read before the network's lock and written after it: steps taken at the same time read
    # the same count, and Adam's bias correction and the schedules saw repeated counts (fewer steps than taken).
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    for sample_weight in (None, [1.0] * 8):  # the compiled path, and (a list) the Python path
        trainer = fastbp.Trainer(fastbp.MLP([4, 16, 3], seed=0), fastbp.Adam(), progress=False)
        _in_threads(lambda i, trainer=trainer, sw=sample_weight: [trainer.train_step(X, y, sw) for _ in range(100)])
        assert trainer.optimizer.t == 400


def test_a_flat_objective_called_from_several_threads_returns_each_thetas_own_values():
    # The parameters were set from theta before the network's lock was taken and the gradient copied from a shared
    # buffer after it was released: with thetas that take the Python path (another dtype than float64, or a
    # list), a call could return the loss and gradient of another thread's theta.
    rng = np.random.default_rng(0)
    net = fastbp.MLP([6, 16, 3], seed=0)
    X, y = rng.standard_normal((32, 6)), rng.integers(0, 3, 32)
    objective = fastbp.FlatObjective(net, X, y)
    thetas = [net.params + np.float32(0.1) * rng.standard_normal(net.n_params).astype(np.float32) for _ in range(32)]
    expected = [objective(theta) for theta in thetas]

    def work(i):
        return [objective(theta) if i % 2 else objective(list(theta)) for theta in thetas]

    for results in _in_threads(work):
        for (loss, grad), (loss_expected, grad_expected) in zip(results, expected, strict=True):
            assert loss == loss_expected
            np.testing.assert_array_equal(grad, grad_expected)


# ------------------------------------------------------------------------------------------ soak
def test_a_soak_of_many_thousand_calls_keeps_memory_flat():
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    net = fastbp.MLP([64, 128, 128, 10], norm="batch", dropout=0.1, seed=0)
    trainer = fastbp.Trainer(net, fastbp.Adam(1e-3), progress=False)
    rng = np.random.default_rng(0)
    X, y = make_batch(net, 32, rng)
    X_val, y_val = make_batch(net, 64, rng)
    g = np.empty_like(net.params)

    def calls(n):
        for _ in range(n):
            trainer.train_step(X, y)
            net.value_and_grad(X, y, out=g)
            net.predict(X_val)
        trainer.evaluate(X_val, y_val)

    calls(500)  # compilation, workspaces, allocator pools
    tracemalloc.start()
    try:
        calls(2000)  # under tracemalloc too: the interpreter's free lists fill up (their blocks count as traced)
        traced_start, rss_start = tracemalloc.get_traced_memory()[0], process.memory_info().rss
        calls(4000)
        traced_end, rss_end = tracemalloc.get_traced_memory()[0], process.memory_info().rss
    finally:
        tracemalloc.stop()
    assert traced_end - traced_start <= SOAK_TRACED_GROWTH_MAX, traced_end - traced_start
    assert rss_end - rss_start <= SOAK_RSS_GROWTH_MAX, rss_end - rss_start
    assert np.isfinite(net.params).all() and trainer.optimizer.t == 6500


# ------------------------------------------------------------------------------------------ malformed arguments
def _setup(tmp_path):
    """A trained network, its trainer and data, and a checkpoint: the state the malformed calls must not touch."""
    net = fastbp.MLP([4, 6, 3], norm="batch", dtype="float64", seed=0)
    trainer = fastbp.Trainer(net, fastbp.Adam(1e-2), batch_size=8, progress=False)
    X, y = make_batch(net, 24, np.random.default_rng(0))
    trainer.fit(X, y, epochs=1)
    net.save(tmp_path / "m.npz", optimizer=trainer.optimizer)
    return {"net": net, "trainer": trainer, "X": X, "y": y, "dir": tmp_path}


# (case, call on the setup, exception type, regex the message must match: the argument's name)
MALFORMED = [
    ("MLP layer_sizes", lambda s: fastbp.MLP([4]), ValueError, "layer_sizes"),
    ("MLP activation", lambda s: fastbp.MLP([4, 3, 2], activation="swish"), ValueError, "activation"),
    ("MLP dtype", lambda s: fastbp.MLP([4, 2], dtype="int8"), ValueError, "dtype"),
    ("MLP l2", lambda s: fastbp.MLP([4, 2], l2=-1.0), ValueError, "l2"),
    ("MLP dropout", lambda s: fastbp.MLP([4, 3, 2], dropout=1.0), ValueError, "dropout"),
    ("MLP norm", lambda s: fastbp.MLP([4, 3, 2], norm="group"), ValueError, "norm"),
    ("MLP residual", lambda s: fastbp.MLP([4, 3, 2], residual=True), ValueError, "residual"),
    ("MLP norm type", lambda s: fastbp.MLP([4, 3, 2], norm=False), TypeError, r"norm must be None, 'batch' or 'layer'"),
    ("MLP dropout None", lambda s: fastbp.MLP([4, 3, 2], dropout=None), TypeError, r"^dropout must be a rate in"),
    ("MLP dropout < 0", lambda s: fastbp.MLP([4, 3, 2], dropout=-0.1), ValueError, r"^dropout must be in \[0, 1\)"),
    ("MLP residual str", lambda s: fastbp.MLP([4, 3, 2], residual="yes"), TypeError, r"^residual must be a bool"),
    ("MLP no hidden layer", lambda s: fastbp.MLP([4, 2], norm="batch"), ValueError, r"norm='batch' applies to hidden"),
    ("MLP 0-d option", lambda s: fastbp.MLP([4, 3, 2], dropout=np.array(1.5)), ValueError, r"^dropout must be in"),
    ("vg X shape", lambda s: s["net"].value_and_grad(s["X"][:, :3], s["y"]), ValueError, r"\bX\b"),
    ("vg X nan", lambda s: s["net"].value_and_grad(s["X"] * np.nan, s["y"]), ValueError, r"\bX\b.*NaN"),
    ("vg X strings", lambda s: s["net"].value_and_grad(s["X"].astype(str), s["y"]), TypeError, r"\bX\b"),
    ("vg Y range", lambda s: s["net"].value_and_grad(s["X"], s["y"] + 5), ValueError, r"\bY\b"),
    ("vg Y length", lambda s: s["net"].value_and_grad(s["X"], s["y"][:-1]), ValueError, r"\bY\b"),
    (
        "vg out dtype",
        lambda s: s["net"].value_and_grad(s["X"], s["y"], out=np.zeros(s["net"].n_params, np.float32)),
        TypeError,
        r"\bout\b",
    ),
    (
        "vg out shape",
        lambda s: s["net"].value_and_grad(s["X"], s["y"], out=np.zeros(3, s["net"].dtype)),
        ValueError,
        r"\bout\b",
    ),
    ("vg scale", lambda s: s["net"].value_and_grad(s["X"], s["y"], scale=np.inf), ValueError, "scale"),
    (
        "vg sample_weight",
        lambda s: s["net"].value_and_grad(s["X"], s["y"], sample_weight=-np.ones(len(s["y"]))),
        ValueError,
        "sample_weight",
    ),
    ("predict X", lambda s: s["net"].predict(np.zeros((0, 4))), ValueError, r"\bX\b"),
    ("Trainer optimizer", lambda s: fastbp.Trainer(s["net"], "adam"), TypeError, "optimizer"),
    ("Trainer batch_size", lambda s: fastbp.Trainer(s["net"], batch_size=0), ValueError, "batch_size"),
    ("Trainer batch_size type", lambda s: fastbp.Trainer(s["net"], batch_size=2.5), TypeError, "batch_size"),
    ("Trainer patience", lambda s: fastbp.Trainer(s["net"], patience=0), ValueError, "patience"),
    ("fit epochs", lambda s: s["trainer"].fit(s["X"], s["y"], epochs=0), ValueError, "epochs"),
    (
        "fit validation_split",
        lambda s: s["trainer"].fit(s["X"], s["y"], validation_split=1.0),
        ValueError,
        "validation_split",
    ),
    (
        "fit validation_data",
        lambda s: s["trainer"].fit(s["X"], s["y"], validation_data=(s["X"],)),
        TypeError,
        "validation_data",
    ),
    ("fit y", lambda s: s["trainer"].fit(s["X"], s["y"][:5]), ValueError, r"\by\b"),
    (
        "fit sample_weight",
        lambda s: s["trainer"].fit(s["X"], s["y"], sample_weight=np.zeros(len(s["y"]))),
        ValueError,
        "sample_weight",
    ),
    ("train_step Y", lambda s: s["trainer"].train_step(s["X"], s["y"] - 1), ValueError, r"\bY\b"),
    ("evaluate X", lambda s: s["trainer"].evaluate(s["X"][:, :2], s["y"]), ValueError, r"\bX\b"),
    ("Adam lr", lambda s: fastbp.Adam(lr=-1.0), ValueError, r"\blr\b"),
    ("SGD momentum", lambda s: fastbp.SGD(momentum=1.5), ValueError, "momentum"),
    ("SGD clip_norm", lambda s: fastbp.SGD(clip_norm=0.0), ValueError, "clip_norm"),
    ("save extras", lambda s: s["net"].save(s["dir"] / "x.npz", extras={"cfg": {1: 2}}), TypeError, "extras"),
    ("save directory", lambda s: s["net"].save(s["dir"]), IsADirectoryError, "directory"),
    ("load matmul_precision", lambda s: fastbp.load(s["dir"] / "m.npz", matmul_precision="f16"), ValueError, "matmul"),
    ("prepare test_size", lambda s: fastbp.data.prepare(s["X"], s["y"], test_size=1.5), ValueError, "test_size"),
    ("prepare y rows", lambda s: fastbp.data.prepare(s["X"], s["y"][:-1]), ValueError, r"one row per row of X"),
    ("prepare 1-D X", lambda s: fastbp.data.prepare(s["X"][:, 0], s["y"]), ValueError, r"X must be 2-D"),
    ("Trainer callbacks", lambda s: fastbp.Trainer(s["net"], callbacks=print), TypeError, "callbacks must be"),
    ("one_hot labels", lambda s: fastbp.data.one_hot([0, 7], n_classes=3), ValueError, "labels"),
    ("set_num_threads", lambda s: fastbp.set_num_threads(0), ValueError, r"\bn\b"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return _setup(tmp_path_factory.mktemp("malformed"))


@pytest.mark.parametrize(("case", "call", "kind", "names"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_arguments_raise_naming_the_argument_and_touch_nothing(setup, case, call, kind, names):
    net, trainer = setup["net"], setup["trainer"]
    before = (net.params.copy(), net.buffers.copy(), trainer.optimizer.state.copy(), trainer.optimizer.t)
    files = sorted(os.listdir(setup["dir"]))
    with pytest.raises(kind) as info:
        call(setup)
    assert type(info.value) is kind, repr(info.value)  # the type itself, not a subclass
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)
    assert re.search(names, str(info.value)), str(info.value)
    after = (net.params, net.buffers, trainer.optimizer.state, trainer.optimizer.t)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(setup["dir"])) == files  # no file written, no temporary file left


# ------------------------------------------------------------------------------------------ batch_size > data
def test_a_batch_larger_than_the_data_is_the_whole_data_with_a_warning():
    def fit(batch_size):
        net = fastbp.MLP([5, 7, 3], dtype="float64", seed=0)
        trainer = fastbp.Trainer(net, fastbp.SGD(0.1), batch_size=batch_size, progress=False)
        X, y = make_batch(net, 40, np.random.default_rng(1))
        trainer.fit(X, y, epochs=3, validation_split=0.25)
        return net.params, trainer.optimizer.t

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        big, steps = fit(10**9)  # no buffer of 10**9 rows: one batch of the 30 training rows per epoch
    [warning] = caught
    assert issubclass(warning.category, UserWarning) and warning.filename == __file__
    assert "batch_size=1000000000 is larger than the 30 training rows" in str(warning.message)
    whole, _ = fit(30)
    np.testing.assert_array_equal(big, whole)
    assert steps == 3


def test_fastbp_sklearn_clips_a_large_batch_as_scikit_learn_does():
    from sklearn.neural_network import MLPClassifier as Reference

    from fastbp.sklearn import MLPClassifier

    X, y = fastbp.data.load_digits()
    X, y = X[:60] / 16, y[:60]
    messages = []
    for cls in (Reference, MLPClassifier):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls(hidden_layer_sizes=(8,), batch_size=1000, max_iter=2, random_state=0).fit(X, y)
        messages.append(sorted({str(w.message) for w in caught if "batch_size" in str(w.message)}))
    assert messages[0] == messages[1] and len(messages[0]) == 1, messages


# ------------------------------------------------------------------------------------------ helpers' own checks
def test_the_file_kinds_predict_reports():
    cases = {b"": "empty", b"PK\x03\x04rest": "zip", b"\x93NUMPY\x01\x00": "npy", pickle.dumps([1]): "pickle"}
    cases.update({b"\x1f\x8b\x08": "gzip", b"a,b\n1,2\n": "text", bytes(range(256)): "binary"})
    for raw, expected in cases.items():
        assert _files.kind_of_bytes(raw) == expected, raw[:10]


# ------------------------------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """A directory of bad inputs (and two good checkpoints to misuse)."""
    d = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(int)
    np.savetxt(d / "d.csv", np.column_stack([X, y]), delimiter=",", header="a,b,c,label", comments="")
    np.savez(d / "d.npz", X=X, y=y)
    (d / "empty.csv").write_text("")
    (d / "header_only.csv").write_text("a,b,label\n")
    (d / "ragged.csv").write_text("1,2,0\n3,1\n")
    (d / "text_feature.csv").write_text("1,2,0\n3,x,1\n")
    (d / "semicolons.csv").write_text("a;b;label\n1;2;0\n3;4;1\n")
    np.savetxt(d / "one_class.csv", np.column_stack([X, np.zeros(40)]), delimiter=",")
    np.savetxt(d / "float_labels.csv", X, delimiter=",")
    bad = X.copy()
    bad[3, 1] = np.nan
    # a header and a blank line: the message's line (6) is not the data row (3, from 0)
    np.savetxt(d / "nan_feature.csv", np.column_stack([bad, y]), delimiter=",", header="a,b,c,label\n", comments="")
    np.savez(d / "nan_feature.npz", X=bad, y=y)
    np.savetxt(d / "features_only.csv", X, delimiter=",")
    np.save(d / "array.npy", X)
    (d / "pickle.npz").write_bytes(pickle.dumps({"X": X}))
    (d / "text.npz").write_text("hello\n")
    (d / "images.idx").write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(6))  # IDX: 2 x 3 uint8
    (d / "labels.idx").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2]) + bytes(2))  # IDX: 2 uint8 labels
    cwd = os.getcwd()
    try:
        os.chdir(d)
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            assert cli.main(["train", "--epochs", "1", "--layers", "8", "--no-progress", "-o", "model.npz"]) == 0
            assert cli.main(["train", "--data", "d.csv", "--epochs", "1", "--no-progress", "-o", "csv_model.npz"]) == 0
            named = ["--data", "d.csv", "--label-column", "label", "--epochs", "1", "--no-progress", "-o", "named.npz"]
            assert cli.main(["train", *named]) == 0
    finally:
        os.chdir(cwd)
    raw = (d / "model.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    return d


LONG = "1x" * 15000  # a 30,000-character value
# (argv, exit code, a regex the one line must match: the input it names)
BAD_COMMANDS = [
    (["train", "--layers", LONG], 2, r"--layers: .*'1x1x.*\.\.\..*1x' \(see fastbp train --help\)$"),
    (["train", "--epochs", "0"], 2, r"--epochs: must be >= 1, got 0"),
    (["train", "--optimizer", "lbfgs"], 2, r"--optimizer: invalid choice: 'lbfgs'"),
    (["train", "--data", "missing.csv"], 1, r"--data missing\.csv: no such file; check the path"),
    (["train", "--data", "empty.csv"], 1, r"--data empty\.csv has no data rows"),
    (["train", "--data", "header_only.csv"], 1, r"--data header_only\.csv has a header line but no data rows"),
    (
        ["train", "--data", "ragged.csv"],
        1,
        r"--data ragged\.csv: line 2 has 2 columns where the first data line has 3 .*as many",
    ),
    (
        ["train", "--data", "semicolons.csv"],
        1,
        r"semicolons\.csv needs at least one feature column .*lines hold ';': the command line reads comma-separated",
    ),
    (
        ["train", "--data", "text_feature.csv"],
        1,
        r"text_feature\.csv: line 2, column index 1: 'x' is not a number.*if this column is the label, give "
        r"--label-column 1\)",
    ),
    (["train", "--data", "one_class.csv"], 1, r"one_class\.csv .* holds a single class \(0\).*--label-column"),
    (["train", "--data", "float_labels.csv"], 1, r"float_labels\.csv .*non-integer numbers.*--label-column"),
    (
        ["train", "--data", "nan_feature.csv"],
        1,
        r"--data nan_feature\.csv: the features hold NaN.*at line 6, column index 1\)",
    ),
    (
        ["train", "--data", "nan_feature.npz"],
        1,
        r"--data nan_feature\.npz: the features hold NaN.*the first at X\[3, 1\]\)",
    ),
    (["predict", "csv_model.npz", "--data", "nan_feature.csv"], 1, r"hold NaN.*at line 6, column index 1\)"),
    (["train", "--data", "array.npy"], 1, r"--data array\.npy is a single \.npy array"),
    (["train", "--data", "pickle.npz"], 1, r"--data pickle\.npz is a Python pickle \(fastbp never loads pickles"),
    (["train", "--data", "text.npz"], 1, r"--data text\.npz is a text file; expected a data file"),
    (
        ["train", "--data", "images.idx"],
        2,
        r"--data images\.idx holds IDX images: give their labels file with --labels",
    ),
    (["train", "--data", "labels.idx"], 2, r"--data labels\.idx holds IDX labels \(one dimension\): give the images"),
    (["train", "--data", "d.csv", "--labels", "d.idx"], 2, r"--labels applies to IDX images, but --data d\.csv"),
    (["train", "--data", "d.npz", "--labels", "d.idx"], 2, r"--labels applies to IDX images, but --data d\.npz"),
    (["train", "--labels", "d.idx"], 2, r"--labels .* needs --data"),
    (["train", "--data", "d.npz", "--label-column", "0"], 2, r"--label-column applies to a CSV --data file, not"),
    (["train", "--label-column", "0"], 2, r"--label-column applies to a CSV --data file, not to the embedded"),
    (["train", "--data", "d.csv", "--label-column", "nosuch"], 2, r"--label-column 'nosuch': d\.csv has no column 'no"),
    (
        ["train", "--data", "d.csv", "--label-column", "7"],
        2,
        r"--label-column '7': d\.csv has 4 columns: column index 7",
    ),
    (
        ["predict", "named.npz", "--data", "features_only.csv"],
        2,
        r"--data features_only\.csv has no column 'label'.*the model was trained with\); .* add --no-labels",
    ),
    (["train", "--momentum", "0.5"], 2, r"--momentum applies to --optimizer momentum and nesterov, not adam"),
    (["train", "--dtype", "float64", "--matmul-precision", "bfloat16"], 2, r"--matmul-precision bfloat16 needs"),
    (["train", "--data", "d.csv", "--test-size", "0.99"], 2, r"--test-size 0\.99 of 40 rows leaves no training"),
    (["train", "--layers", "8,4", "--residual"], 2, r"--residual needs a hidden layer that keeps its width"),
    (["train", "-o", "nodir/m.npz"], 1, r"cannot write --output nodir/m\.npz: directory .*nodir does not exist"),
    (["train", "-o", "."], 1, r"cannot write --output \.: it is a directory"),
    (["predict", "model.npz", "-o", "."], 1, r"cannot write --output \.: it is a directory; give a file name$"),
    (["train", "-o", "a" * 300 + ".npz"], 1, r"--output a+\.npz: its file name has 304 bytes, but .*; give a shorter"),
    (["train", "--json", "nodir/h.json"], 1, r"cannot write --json nodir/h\.json"),
    (["predict"], 2, r"required: model"),
    (["predict", "missing.npz"], 1, r"missing\.npz: no such file; give a checkpoint written by fastbp train"),
    (["predict", "array.npy"], 1, r"array\.npy is a NumPy \.npy file \(a single array\); expected a fastbp checkpoint"),
    (["predict", "d.npz"], 1, r"d\.npz is an \.npz archive of arrays \[X, y\]; expected a fastbp checkpoint"),
    (["predict", "pickle.npz"], 1, r"pickle\.npz is a Python pickle"),
    (["predict", "truncated.npz"], 1, r"truncated\.npz is a damaged or truncated \.npz archive"),
    (["predict", "d.csv"], 1, r"d\.csv is a text file; expected a fastbp checkpoint"),
    (["predict", "model.npz", "--data", "d.npz"], 1, r"--data d\.npz has 3 feature columns besides its label .*64$"),
    (
        ["predict", "csv_model.npz", "--data", "features_only.csv"],
        1,
        r"2 feature columns besides its label column, but csv_model\.npz takes 3; if the file has no label column, "
        r"add --no-labels$",
    ),
    (["predict", "model.npz", "--data", "d.npz", "--no-labels"], 2, r"--no-labels applies to a CSV --data file"),
    (["predict", "model.npz", "--no-labels"], 2, r"--no-labels applies to a CSV --data file .*, not to the embedded"),
    (
        ["predict", "model.npz", "--data", "images", "--no-labels"],
        2,
        r"not to a file without a \.csv, \.txt or \.npz name .*; IDX images without --labels are predicted unlabelled",
    ),
    (["predict", "csv_model.npz"], 2, r"csv_model\.npz was trained on d\.csv, not on the embedded digits: give"),
    (["predict", "model.npz", "--data", "d.csv", "--label-column", "0", "--no-labels"], 2, r"give one"),
    (["predict", "model.npz", "-o", "nodir/p.npy"], 1, r"cannot write --output nodir/p\.npy"),
    (["bench", "--shapes", "Q"], 2, r"--shapes: unknown shape 'Q'; expected some of S,M,L,XL"),
    (["bench", "--shapes", "S", "--dtypes", "int8"], 2, r"--dtypes: unknown dtype 'int8'"),
    (["bench", "--dtypes", "float64"], 2, r"--dtypes applies with --shapes"),
    (["bench", "--profile", "--json", "b.json"], 2, r"--json does not apply to --profile"),
    (["bench", "--profile", "--shapes", "S,D"], 2, r"--profile covers the shapes of 2 or 3 layers \(S,M,L,XL\), not D"),
    (["bench", "--rounds", "0"], 2, r"--rounds: must be >= 1"),
    (["bench", "--json", "nodir/b.json"], 1, r"cannot write --json nodir/b\.json"),
    (["gradcheck", "--layers", "0"], 2, r"--layers: layer sizes must be positive"),
    (["gradcheck", "--dtype", "float64", "--threshold-float32", "1e-3"], 2, r"--threshold-float32 applies to"),
    (["train", "--distributed", "--norm", "batch"], 2, r"--norm batch does not apply to --distributed: .*--norm layer"),
    (["train", "--test-size", "0.999"], 2, r"--test-size 0.999 of 1797 rows tests on 1796 and trains on 1: .* 10 rows"),
    (
        ["train", "--val-split", "0.0001"],
        2,
        r"--val-split 0.0001 of 1437 rows holds out 1 and trains on 1436: .* 10 rows",
    ),
    (["diagnose", "--depth", "0"], 2, r"--depth: must be >= 1"),
    (
        ["gradcheck", "--outputs", "1"],
        2,
        r"--output softmax needs --outputs 2 or more; for one output, use --output sigm",
    ),
    (["diagnose", "--samples", "1"], 2, r"--samples: must be >= 2, got 1"),
    (
        ["diagnose", "--batch-size", "4"],
        2,
        r"1437 training rows in batches of 4 leave a batch of 1 row: .*--batch-size",
    ),
    (["diagnose", "--plot", "nodir/d.png"], 1, r"cannot write --plot nodir/d\.png"),
    (["info", "--verbose"], 2, r"unrecognized arguments: --verbose"),
    (["fly"], 2, r"invalid choice: 'fly'"),
    ([], 2, r"required: COMMAND"),
]


@pytest.mark.parametrize(("argv", "code", "message"), BAD_COMMANDS, ids=[" ".join(b[0])[:60] for b in BAD_COMMANDS])
def test_every_command_fails_on_bad_input_with_one_line_and_exit_code_1_or_2(
    bad_inputs, monkeypatch, capfd, argv, code, message
):
    monkeypatch.chdir(bad_inputs)
    before = sorted(os.listdir(bad_inputs))
    assert cli.main(argv) == code
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err  # one line: no warning, no traceback, no usage block
    commands = ("train", "predict", "bench", "info", "gradcheck", "diagnose")
    prefix = f"fastbp {argv[0]}: error: " if argv and argv[0] in commands else "fastbp: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert len(lines[0]) <= cli.MAX_LINE + 60, len(lines[0])  # values echoed back shortened
    assert re.search(message, lines[0]), lines[0]
    for noise in ("Traceback", "allow_pickle", "Warning", "usecols", "TypeError"):
        assert noise not in err
    assert sorted(os.listdir(bad_inputs)) == before  # nothing written, no temporary file left


def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly(tmp_path):
    # fastbp predict ... | head -1: the rest of the output has no reader; no error line, as Unix tools
    fastbp.MLP([64, 16, 10], output="identity", seed=0).save(tmp_path / "m.npz")  # 1797 rows of 10 numbers
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastbp.cli", "predict", "m.npz"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert err.decode() == "" and proc.returncode == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "empty.csv"],
        ["train", "--layers", LONG],
        ["bench", "--shapes", "Q"],
        ["predict", "array.npy"],
    ],
    ids=["empty csv", "30000 characters", "bench shapes", "npy model"],
)
def test_as_a_process_too_the_error_is_one_line(bad_inputs, argv):
    proc = subprocess.run(
        [sys.executable, "-m", "fastbp.cli", *argv], capture_output=True, text=True, cwd=bad_inputs, timeout=120
    )
    assert proc.returncode in (1, 2) and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert len(proc.stderr) < 700
