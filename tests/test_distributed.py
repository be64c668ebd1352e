"""fastbp.distributed: data-parallel training over 2 and 3 MPI ranks (launched with mpiexec under a timeout) equals
single-process training on the same global batches; a failing rank ends the job at once; the ranks agree on their
settings and data; data shards."""

import gzip
import itertools
import json
import os
import pickle
import re
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from conftest import DIST_RTOL, DIST_RTOL_FLOAT32, rel_err

import fastbp
from fastbp import _onednn, distributed

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "distributed_worker.py")
sys.path.insert(0, HERE)
import distributed_worker  # noqa: E402 - the worker module beside this file

TIMEOUT = 120  # s for one mpiexec run; the runs take a few seconds


def _mpi_skip_reason():
    try:
        import mpi4py  # noqa: F401 - importing the package does not start MPI
    except ImportError:
        return "mpi4py is not installed (python -m pip install -e '.[mpi]')"
    if distributed.mpiexec_path() is None:
        return "no mpiexec found (the mpich wheel installs one: python -m pip install -e '.[mpi]')"
    return None


needs_mpi = pytest.mark.skipif(_mpi_skip_reason() is not None, reason=str(_mpi_skip_reason()))


def mpirun(args, n=2, cwd=None, timeout=TIMEOUT):
    """Run ``mpiexec -n n args`` bounded in time (fastbp.distributed.mpirun kills the whole process group on
    timeout); returns (CompletedProcess, seconds)."""
    start = time.perf_counter()
    try:
        proc = distributed.mpirun(args, n=n, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{' '.join(err.cmd)} did not end within {timeout} s:\n{err.output}\n{err.stderr}")
    return proc, time.perf_counter() - start


def _equal_run(tmp_path_factory, ranks):
    """Every configuration of distributed_worker for ``ranks`` ranks, trained in one mpiexec run: a dict of arrays."""
    out = tmp_path_factory.mktemp("mpi") / "equal.npz"
    proc, _ = mpirun([sys.executable, "-m", "mpi4py", WORKER, "equal", str(out)], n=ranks)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as data:
        return dict(data)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _equal_run(tmp_path_factory, 2)


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory):
    return _equal_run(tmp_path_factory, 3)


def _check_equal_one_process(results, name):
    net, kwargs, X, y, fit_kwargs = distributed_worker.make(name)
    history = fastbp.Trainer(net, progress=False, **kwargs).fit(X, y, epochs=distributed_worker.EPOCHS, **fit_kwargs)
    rtol = DIST_RTOL if net.dtype == np.float64 else DIST_RTOL_FLOAT32
    assert results[f"{name}/same_on_all_ranks"]
    assert rel_err(results[f"{name}/params"], net.params) <= rtol
    keys = {k.split("/")[-1] for k in results if k.startswith(f"{name}/history/")}
    assert keys == set(history) | {"comm_time"}
    for key in set(history) - {"epoch_time"}:
        assert rel_err(results[f"{name}/history/{key}"], np.array(history[key], dtype=np.float64)) <= rtol, key
    if kwargs.get("early_stopping"):  # the configuration stops early on purpose
        assert len(history["loss"]) < distributed_worker.EPOCHS
    if kwargs.get("record_deltas"):
        assert "delta_norm" in keys


@needs_mpi
@pytest.mark.parametrize("name", list(distributed_worker.CONFIGS))
def test_two_ranks_equal_one_process_on_the_same_global_batches(two_ranks, name):
    _check_equal_one_process(two_ranks, name)


@needs_mpi
@pytest.mark.parametrize("name", list(distributed_worker.CONFIGS_3))
def test_three_ranks_equal_one_process_on_the_same_global_batches(three_ranks, name):
    _check_equal_one_process(three_ranks, name)


@needs_mpi
def test_every_step_of_the_ranks_is_the_compiled_step_of_the_epoch_loop(two_ranks):
    # fastbp.distributed drives the step from Python around its all-reduce, through kernels/step.py's entry point,
    # whose compiled code is the epoch loop's step (tests/test_kernels.py reads the machine code): once per step.
    for key, (calls, steps) in ((k, v) for k, v in two_ranks.items() if k.endswith("/step_calls")):
        assert calls == steps > 0, key


def test_ranks_times_threads_fit_the_cores(two_ranks):
    threads = two_ranks["sgd_frozen_l2_clip_cosine/threads"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads.shape == (2,) and threads.min() >= 1
    assert threads.sum() <= max(cores, 2)  # 2 ranks on one core still get 1 thread each


@needs_mpi
@pytest.mark.parametrize(("mode", "error"), [("fail", "ValueError: boom on rank 1"), ("exit", "SystemExit: 4")])
def test_an_exception_on_one_rank_aborts_the_job_within_seconds(tmp_path, mode, error):
    marker = tmp_path / "marker"
    proc, seconds = mpirun([sys.executable, WORKER, mode, str(marker)])
    assert proc.returncode != 0
    assert seconds < 30  # without the abort, rank 0 would wait in the all-reduce until the timeout
    assert proc.stderr.count(error) == 1  # printed once, by the failing rank
    assert proc.stderr.count("aborting every rank") == 1
    # MPICH's MPI_Abort returns to the caller: the failing rank must not go on with the script after fit
    assert sorted(os.listdir(tmp_path)) == []


@needs_mpi
def test_a_cli_failure_on_one_rank_aborts_the_job_and_the_rank_does_not_go_on(tmp_path):
    proc, seconds = mpirun([sys.executable, WORKER, "cli_fail", str(tmp_path / "marker")])
    assert proc.returncode != 0
    assert seconds < 30
    assert proc.stderr.count("RuntimeError: boom on rank 1") == 1
    assert sorted(os.listdir(tmp_path)) == []


@needs_mpi
def test_a_cli_error_raised_on_every_rank_is_printed_once_by_rank_0_without_abort():
    proc, seconds = mpirun([sys.executable, WORKER, "cli_agreed", "-"])
    assert proc.returncode == 1, proc.stderr
    assert seconds < 30
    assert proc.stderr.count("fastbp train: error") == 1, proc.stderr
    assert (
        "fastbp train: error: the ranks disagree on fit's arguments: batch_size is 20 on rank 0 but 10" in proc.stderr
    )
    assert "Abort" not in proc.stderr and "Traceback" not in proc.stderr


@needs_mpi
@pytest.mark.parametrize("mode", ["save_rank0", "save_rank0_caught", "save_rank0_bad_path_caught"])
def test_save_on_rank_0_only_ends_the_job_instead_of_hanging(tmp_path, mode):
    # caught: the ranks' error was marked as raised together, so the guard let it through, and ranks that went on
    # after it waited for each other in different collective calls
    proc, seconds = mpirun([sys.executable, WORKER, mode, str(tmp_path)], timeout=60)
    assert proc.returncode != 0
    assert seconds < 30
    assert "save on every rank, not on rank 0 only" in proc.stderr


@needs_mpi
def test_bad_data_on_one_rank_is_raised_on_every_rank():
    proc, seconds = mpirun([sys.executable, WORKER, "setup", "-"])
    assert proc.returncode != 0
    assert seconds < 30
    assert "ValueError: X contains NaN or infinity" in proc.stderr
    assert "RankFailedError: rank 1 of 2 failed: ValueError: X contains NaN or infinity" in proc.stderr


@needs_mpi
def test_cli_usage_errors_and_warnings_are_told_once_by_rank_0(tmp_path):
    script = os.path.join(os.path.dirname(distributed.mpiexec_path()), "fastbp")
    launcher = [script] if os.path.isfile(script) else [sys.executable, "-m", "fastbp.cli"]
    proc, _ = mpirun([*launcher, "train", "--distributed", "--norm", "batch"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "fastbp train: error: --norm batch does not apply to --distributed: batch statistics would have to be summed "
        "over the ranks inside the forward pass; use --norm layer (per-row statistics), or train without "
        "--distributed (see fastbp train --help)"
    ]
    options = ["--batch-size", "5000", "--epochs", "1", "--layers", "8", "-o", "none", "--no-progress"]
    proc, _ = mpirun([*launcher, "train", "--distributed", *options], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("fastbp train: warning: batch_size=5000 is larger than") == 1, proc.stderr
    for outputs, message in (
        (["-o", "same.npz", "--json", "same.npz"], "--json same.npz names the same file as --output"),
        (["--json", "run.png", "--plot", "run"], "--json run.png names the same file as --plot"),  # plots add .png
        (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),  # found while parsing
    ):
        proc, seconds = mpirun([*launcher, "train", "--distributed", *outputs], cwd=tmp_path, timeout=60)
        assert proc.returncode == 2 and seconds < 30, proc.stderr  # every rank ends: none waits in a collective
        assert message in proc.stderr and proc.stderr.count("fastbp train: error") == 1, proc.stderr  # told once
    assert not (tmp_path / "same.npz").exists() and not (tmp_path / "run.png").exists()  # nothing written


@needs_mpi
def test_cli_distributed_equals_the_single_process_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((230, 6))
    y = (X[:, 0] > 0).astype(int) + 2 * (X[:, 1] > 0)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    options = ["--data", "d.npz", "--layers", "16", "--epochs", "3", "--batch-size", "25", "--dtype", "float64"]
    options += ["--optimizer", "nesterov", "--lr", "0.05", "--no-progress"]
    script = os.path.join(os.path.dirname(distributed.mpiexec_path()), "fastbp")
    launcher = [script] if os.path.isfile(script) else [sys.executable, "-m", "fastbp.cli"]
    proc, _ = mpirun([*launcher, "train", "--distributed", *options, "-o", "m2.npz", "--json", "h2.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy") == 1  # rank 0 prints, the others are quiet

    from fastbp import cli

    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert cli.main(["train", *options, "-o", "m1.npz", "--json", "h1.json"]) == 0
    finally:
        os.chdir(cwd)
    single = capsys.readouterr().out
    accuracy = re.compile(r"test accuracy (\d\.\d+)")
    assert accuracy.search(proc.stdout).group(1) == accuracy.search(single).group(1)
    assert rel_err(fastbp.load(tmp_path / "m2.npz").params, fastbp.load(tmp_path / "m1.npz").params) <= DIST_RTOL
    h1, h2 = (json.loads((tmp_path / f"h{i}.json").read_text())["history"] for i in (1, 2))
    assert rel_err(h2["loss"], h1["loss"]) <= DIST_RTOL


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    """The results of distributed_worker.checks on 2 ranks (one mpiexec run)."""
    out = tmp_path_factory.mktemp("mpi") / "checks.pkl"
    proc, _ = mpirun([sys.executable, "-m", "mpi4py", WORKER, "checks", str(out)])
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        return pickle.load(f)


def _raised_on_every_rank(errors, kind="ValueError"):
    """Per-rank (type, message, agreed) of one call: the same error on every rank, marked as raised everywhere."""
    assert all(e is not None for e in errors), errors
    assert {e[0] for e in errors} == {kind} and all(e[2] for e in errors), errors
    assert len({e[1] for e in errors}) == 1, errors
    return errors[0][1]


@needs_mpi
@pytest.mark.parametrize("name", list(distributed_worker.DISAGREE))
def test_settings_that_differ_between_ranks_are_named_on_every_rank(checks, name):
    message = _raised_on_every_rank(checks[f"disagree/{name}"])
    assert message.startswith(f"the ranks disagree on fit's arguments: {name} is "), message


@needs_mpi
@pytest.mark.parametrize("name", list(distributed_worker.DATA_DISAGREE))
def test_replicated_data_that_differs_between_ranks_is_caught(checks, name):
    assert distributed_worker.DATA_DISAGREE[name] in _raised_on_every_rank(checks[f"data/{name}"])


@needs_mpi
def test_sharded_validation_data_empty_on_every_rank_is_refused_before_training(checks):
    assert _raised_on_every_rank(checks["empty_validation"]) == "the validation data is empty on every rank"


@needs_mpi
def test_a_bad_constructor_argument_on_one_rank_is_raised_on_every_rank(checks):
    (kind0, message0, agreed0), (kind1, message1, agreed1) = checks["constructor"]
    assert (kind0, kind1) == ("RankFailedError", "ValueError") and agreed0 and agreed1
    assert message0 == f"rank 1 of 2 failed: ValueError: {message1}" and "batch_size" in message1


@needs_mpi
def test_evaluate_weighted_and_sharded_equals_one_process_and_gives_floats(checks):
    X, y, w = distributed_worker.checks_data()
    net = distributed_worker.checks_net(1)
    net.params[:] = checks["evaluate/params"]
    single = fastbp.Trainer(net, progress=False)
    for key, expected in (("weighted", single.evaluate(X, y, sample_weight=w)), ("sharded", single.evaluate(X, y))):
        result = checks[f"evaluate/{key}"]
        assert result.keys() == expected.keys()
        for metric in result:
            assert rel_err(result[metric], expected[metric]) <= DIST_RTOL, (key, metric)
    assert checks["evaluate/types"] == [["float"], ["float"]]  # evaluate and the history, on both ranks


@needs_mpi
def test_a_rank_s_workspace_holds_its_part_of_a_replicated_batch(checks):
    assert checks["workspace_rows"] == [8, 8]  # batch 16 over 2 ranks


@needs_mpi
def test_save_is_collective_loadable_and_its_failure_raised_on_every_rank(checks):
    net, opt = fastbp.load(checks["save/path"], return_optimizer=True)
    np.testing.assert_array_equal(net.params, checks["evaluate/params"])
    assert opt is not None and opt.t > 0
    (kind0, message0, agreed0), (kind1, message1, agreed1) = checks["save/error"]
    assert (kind0, kind1) == ("FileNotFoundError", "RankFailedError") and agreed0 and agreed1
    assert message1 == f"rank 0 could not write the checkpoint: FileNotFoundError: {message0}"


@needs_mpi
@pytest.mark.parametrize("method", ["save", "sync"])
def test_save_and_sync_refuse_ranks_with_other_networks(checks, method):
    message = _raised_on_every_rank(checks[f"{method}/disagree"])
    what = {"save": "save's network, optimizer and arguments", "sync": "sync's network and optimizer"}[method]
    assert message.startswith(f"the ranks disagree on {what}: layer_sizes is "), message


@needs_mpi
def test_save_refuses_other_paths_or_extras_and_save_and_evaluate_other_parameters(checks):
    # rank 0 wrote its own path and extras, and its own parameters, while every rank's save returned; evaluate summed
    # the losses of the ranks' different networks
    message = _raised_on_every_rank(checks["save/path_disagree"])
    assert re.match(r"the ranks disagree on save's network, optimizer and arguments: path is '.*p0\.npz' on rank 0 but "
                    r"'.*p1\.npz' on rank 1", message), message  # fmt: skip
    message = _raised_on_every_rank(checks["save/extras_disagree"])
    assert "arguments: extras is " in message, message
    for call in ("save", "evaluate"):
        message = _raised_on_every_rank(checks[f"{call}/params_differ"])
        assert message.startswith(f"{call}: the ranks hold different parameters"), message
        assert message.endswith("call sync() on every rank first, which gives every rank rank 0's"), message


@needs_mpi
def test_train_step_equals_one_process_and_broadcasts_on_its_first_call_only(checks):
    X, y, w = distributed_worker.checks_data()
    single = fastbp.Trainer(distributed_worker.checks_net(2), fastbp.SGD(0.1, momentum=0.9), progress=False)
    losses = [
        single.train_step(X[:16], y[:16]),
        single.train_step(X[16:32], y[16:32], sample_weight=w[16:32]),
        single.train_step(X[32:48], y[32:48], sample_weight=w[32:48]),  # the ranks' shards 32:40 and 40:48
    ]
    assert rel_err(checks["train_step/losses"], losses) <= DIST_RTOL
    assert rel_err(checks["train_step/params"], single.net.params) <= DIST_RTOL
    assert checks["train_step/syncs"] == [1, 1]
    assert checks["train_step/after_sync_equal"]


@needs_mpi
def test_a_cosine_schedule_counts_rank_0_s_steps(checks):
    X, y, _ = distributed_worker.checks_data()
    single = fastbp.Trainer(distributed_worker.checks_net(3), fastbp.SGD(0.1, schedule="cosine"), 16, progress=False)
    single.fit(X, y, epochs=1)
    history = single.fit(X, y, epochs=2)
    assert rel_err(checks["cosine/history"]["lr"], history["lr"]) <= DIST_RTOL
    assert rel_err(checks["cosine/params"], single.net.params) <= DIST_RTOL


@needs_mpi
def test_divergence_is_raised_on_every_rank(checks):
    assert "training diverged in epoch 1" in _raised_on_every_rank(checks["diverge"], "DivergenceError")


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """The results of distributed_worker.layers on 2 ranks (one mpiexec run): layer norm, residual connections,
    dropout; batch norm refused."""
    out = tmp_path_factory.mktemp("mpi") / "layers.pkl"
    proc, _ = mpirun([sys.executable, "-m", "mpi4py", WORKER, "layers", str(out)])
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        return pickle.load(f)


@needs_mpi
@pytest.mark.parametrize("name", list(distributed_worker.LAYER_CONFIGS))
def test_layer_norm_residual_and_dropout_train_as_in_one_process(layers, name):
    # dropout: each rank draws the masks of its rows by their indices in the whole data set, so a global batch gets
    # the masks of one process (a different mask moves the parameters by 1e-2 and more)
    net, kwargs, X, y, fit_kwargs = distributed_worker.make_layers(name)
    assert any(net.dropouts) and "batch" not in net.norms
    history = fastbp.Trainer(net, progress=False, **kwargs).fit(X, y, epochs=distributed_worker.EPOCHS, **fit_kwargs)
    rtol = DIST_RTOL if net.dtype == np.float64 else DIST_RTOL_FLOAT32
    assert layers[f"{name}/same_on_all_ranks"]
    assert rel_err(layers[f"{name}/params"], net.params) <= rtol
    assert layers[f"{name}/history"].keys() == set(history) - {"epoch_time"}
    for key, values in layers[f"{name}/history"].items():
        assert rel_err(values, history[key]) <= rtol, key


@needs_mpi
def test_train_step_with_dropout_equals_one_process(layers):
    X, y, _ = distributed_worker.checks_data()
    single = fastbp.Trainer(distributed_worker.layers_step_net(), fastbp.SGD(0.1, momentum=0.9), progress=False)
    losses = [single.train_step(X[:16], y[:16]), single.train_step(X[16:31], y[16:31])]
    losses.append(single.train_step(X[31:48], y[31:48]))  # the ranks' shards 31:38 and 38:48
    assert rel_err(layers["train_step/losses"], losses) <= DIST_RTOL
    assert rel_err(layers["train_step/params"], single.net.params) <= DIST_RTOL


@needs_mpi
@pytest.mark.parametrize("key", ["batch_norm", "batch_norm_one_layer"])
def test_batch_norm_is_refused_on_every_rank_saying_why_and_what_to_do(layers, key):
    message = _raised_on_every_rank(layers[key])
    assert message.startswith("fastbp.distributed does not support batch norm")
    assert "summed over the ranks" in message  # why: the batch statistics span the ranks' rows
    assert "norm='layer'" in message and "fastbp.Trainer" in message  # what to do


@needs_mpi
@pytest.mark.parametrize(
    "name",
    [
        "norm",
        "residual",
        "dropout",
        pytest.param(
            "matmul_precision",
            marks=pytest.mark.skipif(
                _onednn.info()["reason"] is not None, reason="bfloat16 matmul precision is not available"
            ),
        ),
    ],
)
def test_layer_options_that_differ_between_ranks_are_named_on_every_rank(layers, name):
    message = _raised_on_every_rank(layers[f"disagree/{name}s"])
    assert message.startswith(f"the ranks disagree on fit's arguments: {name} is "), message


@needs_mpi
def test_the_dropout_seed_of_rank_0_is_broadcast(layers):
    seeds = layers["seed_none/dropout_seeds"]
    assert len(seeds) == 2 and seeds[0] == seeds[1]


def test_cli_distributed_without_mpi4py_is_a_one_line_error():
    code = (
        "import sys; sys.modules['mpi4py'] = None; from fastbp import cli; "
        "sys.exit(cli.main(['train', '--distributed', '--epochs', '1']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "fastbp train: error: fastbp.distributed needs mpi4py and an MPI library: python -m pip install 'fastbp[mpi]'"
    ]


def test_importing_the_module_does_not_start_mpi():
    code = "import sys, fastbp.distributed; assert 'mpi4py' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ------------------------------------------------------------------------------------------- shards (no MPI)
def _write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("kind", ["npz", "npz_compressed", "idx", "idx_gz", "csv"])
def test_the_shards_of_a_file_make_the_whole_file_in_rank_order(tmp_path, kind):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (23, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 23).astype(np.uint8)
    X, y = images.reshape(23, -1).astype(np.float64), labels.astype(np.int64)
    labels_path = None
    if kind.startswith("npz"):
        path = str(tmp_path / "d.npz")
        (np.savez_compressed if kind == "npz_compressed" else np.savez)(path, X=X, y=y)
    elif kind.startswith("idx"):
        suffix = ".gz" if kind == "idx_gz" else ""
        path, labels_path = str(tmp_path / f"images{suffix}"), str(tmp_path / f"labels{suffix}")
        _write_idx(path, images, 0x08)
        _write_idx(labels_path, labels, 0x08)
    else:
        path = str(tmp_path / "d.csv")
        np.savetxt(path, np.column_stack([X, y]), delimiter=",", fmt="%d")
    parts = [distributed.load_shard(path, labels_path, rank=r, size=3) for r in range(3)]
    assert [p[0].shape[0] for p in parts] == [7, 8, 8]  # shard_range: sizes differ by at most one row
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), X)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    beyond = distributed.load_shard(path, labels_path, rank=0, size=31)  # more ranks than rows: an empty part
    assert beyond[0].shape == (0, 12) and beyond[1].shape == (0,)


@pytest.mark.parametrize("compressed", [False, True])
def test_a_file_whose_x_and_y_differ_in_rows_is_refused(tmp_path, compressed):
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, X=np.zeros((11, 3)), y=np.zeros(5))
    with pytest.raises(ValueError, match=r"d\.npz: X has shape \(11, 3\) and y \(5,\): one row each"):
        distributed.load_shard(str(path), rank=1, size=2)
    with pytest.raises(ValueError, match=r"d\.npz: X has shape \(11, 3\) and y \(5,\): one row each"):
        fastbp.data.load_npz(path)


@pytest.mark.parametrize("n", [0, -1, 1.5])
def test_mpirun_refuses_a_rank_count_below_one(n):
    with pytest.raises((ValueError, TypeError), match=r"\bn\b"):
        distributed.mpirun(["true"], n=n)


def test_uncompressed_files_are_memory_mapped_not_read_whole(tmp_path):
    X = np.arange(40.0).reshape(10, 4)
    np.savez(tmp_path / "a.npz", X=X, y=np.arange(10))
    np.savez_compressed(tmp_path / "b.npz", X=X, y=np.arange(10))
    mapped = distributed._npz_member(str(tmp_path / "a.npz"), "X")
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, X)
    assert distributed._npz_member(str(tmp_path / "b.npz"), "X") is None  # compressed: must be read whole
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert archive.getinfo("X.npy").compress_type == zipfile.ZIP_STORED
    _write_idx(str(tmp_path / "i"), np.arange(12, dtype=np.uint8).reshape(3, 4), 0x08)
    assert isinstance(distributed._idx_map(str(tmp_path / "i")), np.memmap)


def test_shard_range_covers_every_row_once():
    for n in (0, 1, 5, 64, 101):
        for size in (1, 2, 3, 7):
            ranges = [distributed.shard_range(n, r, size) for r in range(size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1
