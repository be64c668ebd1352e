"""bfloat16 matmul precision (``MLP(..., matmul_precision="bfloat16")``): gradients against the float64 reference and
against an exact emulation of the bfloat16 products, training, checkpoints, the command line, and the errors where
bfloat16 is not available."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import BF16_EMULATION_RTOL, BF16_RTOL, HIDDEN, PAIRS, make_batch, rel_err

import fastbp
from fastbp import _onednn, reference

_STATUS = _onednn.info()
needs_bf16 = pytest.mark.skipif(
    _STATUS["reason"] is not None, reason=f"bfloat16 matmul precision is not available: {_STATUS['reason']}"
)

#: Depths 1 to 5 (hidden layers 0 to 4), widths that are not multiples of any vector length.
HIDDEN_SIZES = ([], [17], [33, 9], [24, 31, 7], [40, 5, 19, 12])


def _copy(net, dtype):
    copy = fastbp.MLP(net.layer_sizes, list(net.activations), net.output, net.loss, net.l2, dtype)
    copy.params[:] = net.params
    return copy


def _float64_copy(net):
    """The same network in float64 (its products too): the oracle of the true gradient."""
    return _copy(net, "float64")


def _float32_copy(net):
    """The same network with float32 products."""
    return _copy(net, "float32")


@needs_bf16
@pytest.mark.parametrize(("output", "loss"), PAIRS)
@pytest.mark.parametrize("activation", HIDDEN)
def test_gradients_are_those_of_the_bfloat16_products(activation, output, loss, rng):
    # The reference computing the same products exactly (operands rounded to bfloat16, summed in float64), which
    # the float32 products of the same network miss by far more: every operand of every GEMM is rounded, none is
    # stale, none is transposed wrongly.
    for hidden in HIDDEN_SIZES:
        n_out = 3 if output == "softmax" else 4
        net = fastbp.MLP(
            [29, *hidden, n_out], activation, output, loss, 0.01, seed=len(hidden), matmul_precision="bfloat16"
        )
        X, Y = make_batch(net, 64, rng)
        value, grads = net.value_and_grad(X, Y)
        value16, grads16 = reference.value_and_grad(net, X, Y)
        float32 = reference.value_and_grad(_float32_copy(net), X, Y)[1]
        assert rel_err(grads, grads16) <= min(BF16_EMULATION_RTOL, rel_err(float32, grads16) / 5), hidden
        assert abs(value - value16) <= BF16_EMULATION_RTOL * abs(value16), hidden


#: Hidden activations and output/loss pairs without a kink (relu and leaky relu have one at 0).
SMOOTH = ("identity", "sigmoid", "tanh")
SMOOTH_PAIRS = [pair for pair in PAIRS if pair[0] not in ("relu", "leaky_relu")]


@needs_bf16
@pytest.mark.parametrize(("output", "loss"), SMOOTH_PAIRS)
@pytest.mark.parametrize("activation", SMOOTH)
def test_gradients_agree_with_the_float64_reference(activation, output, loss, rng):
    # bfloat16 operands carry 8 significant bits (2^-9 relative), which moves the gradient by about 5e-3 (measured
    # at most 9e-3 on these networks): within BF16_RTOL at every depth from 1 to 5. Networks with relu or leaky relu
    # units are not held to it: a pre-activation within bfloat16's rounding of 0 takes the other side of the kink, its
    # derivative changes from 1 to 0 (or 0.01), and the gradient moves by the square root of the fraction of units that
    # flip, 1e-2 to 8e-2 in the worst of the networks measured (docs/measurements.md); the test above shows that the
    # compiled gradient is still exactly that of the bfloat16 products.
    for depth in range(5):
        for seed in range(2):
            hidden = [48, 40, 56, 32][:depth]
            n_out = 10 if output == "softmax" else 4
            net = fastbp.MLP(
                [32, *hidden, n_out], activation, output, loss, 0.01, seed=seed, matmul_precision="bfloat16"
            )
            X, Y = make_batch(net, 128, rng)
            value, grads = net.value_and_grad(X, Y)
            value64, grads64 = reference.value_and_grad(_float64_copy(net), X, Y)
            assert rel_err(grads, grads64) <= BF16_RTOL, (depth, seed)
            assert abs(value - value64) <= BF16_RTOL * abs(value64), (depth, seed)


@needs_bf16
def test_predict_and_frozen_layers_and_micro_batches(rng):
    net = fastbp.MLP([20, 30, 25, 4], "tanh", trainable=[False, True, True], matmul_precision="bfloat16", seed=3)
    X, y = make_batch(net, 45, rng)
    assert rel_err(net.predict(X), reference.predict(net, X)) <= BF16_EMULATION_RTOL
    _, grads = net.value_and_grad(X, y)
    start, stop = net.layer_range(0)
    assert not grads[start:stop].any()  # the frozen layer gets no gradient
    assert rel_err(grads, reference.value_and_grad(net, X, y)[1]) <= BF16_EMULATION_RTOL
    acc = np.empty_like(net.params)
    for k, idx in enumerate(np.array_split(np.arange(45), 3)):
        net.value_and_grad(X[idx], y[idx], out=acc, accumulate=k > 0, scale=len(idx) / 45)
    assert rel_err(acc, grads) <= BF16_EMULATION_RTOL


@needs_bf16
def test_the_weights_twin_follows_the_parameters(rng):
    # The bfloat16 copy of W is refreshed by the update and at every call: parameters written by the user in
    # between must be used, not the copy of the previous step.
    net = fastbp.MLP([12, 16, 3], matmul_precision="bfloat16", seed=0)
    X, y = make_batch(net, 32, rng)
    trainer = fastbp.Trainer(net, fastbp.SGD(0.1), batch_size=8, progress=False)
    trainer.fit(X, y, epochs=2)
    assert rel_err(net.value_and_grad(X, y)[1], reference.value_and_grad(net, X, y)[1]) <= BF16_EMULATION_RTOL
    net.params[:] *= -0.5
    assert rel_err(net.predict(X), reference.predict(net, X)) <= BF16_EMULATION_RTOL
    assert rel_err(net.value_and_grad(X, y)[1], reference.value_and_grad(net, X, y)[1]) <= BF16_EMULATION_RTOL


@needs_bf16
@pytest.mark.parametrize("optimizer", [fastbp.SGD(0.05, momentum=0.9), fastbp.Adam(1e-3)])
def test_training_ends_within_half_a_point_of_float32_on_digits(optimizer):
    # fastbp train's defaults: 64-128-10 relu, batch 32, 40 epochs, 20% held out, seed 0.
    X, y = fastbp.data.load_digits()
    X_train, X_test, y_train, y_test = fastbp.data.prepare(X, y, test_size=0.2, seed=0)
    accuracy = {}
    for precision in ("float32", "bfloat16"):
        net = fastbp.MLP([64, 128, 10], seed=0, matmul_precision=precision)
        opt = type(optimizer)(**optimizer.config())
        fastbp.Trainer(net, opt, batch_size=32, seed=0, progress=False).fit(X_train, y_train, epochs=40)
        accuracy[precision] = fastbp.Trainer(net, progress=False).evaluate(X_test, y_test)["accuracy"]
    assert accuracy["float32"] > 0.95
    assert abs(accuracy["bfloat16"] - accuracy["float32"]) <= 0.005, accuracy


@needs_bf16
def test_checkpoints_keep_the_precision_and_float32_parameters(tmp_path, rng):
    net = fastbp.MLP([6, 9, 3], matmul_precision="bfloat16", seed=2)
    path = net.save(tmp_path / "m.npz")
    back = fastbp.load(path)
    assert back.matmul_precision == "bfloat16" and back.params.dtype == np.float32
    np.testing.assert_array_equal(back.params, net.params)
    X, _ = make_batch(net, 5, rng)
    np.testing.assert_array_equal(back.predict(X), net.predict(X))
    as_float32 = fastbp.load(path, matmul_precision="float32")
    assert as_float32.matmul_precision == "float32"
    assert rel_err(as_float32.predict(X), reference.predict(_float64_copy(net), X)) <= 1e-5
    # a float64 checkpoint asked for in bfloat16: the argument's fault, a ValueError that is not a CheckpointError
    fastbp.MLP([6, 9, 3], dtype="float64").save(tmp_path / "f64.npz")
    with pytest.raises(
        ValueError, match=r"matmul_precision='medium' needs a float32 network; .*f64\.npz holds a fl"
    ) as e:
        fastbp.load(tmp_path / "f64.npz", matmul_precision="medium")
    assert not isinstance(e.value, fastbp.CheckpointError)


def test_float32_is_the_default_and_its_results_do_not_change_beside_bfloat16(rng):
    net = fastbp.MLP([10, 20, 3], seed=1)
    assert net.matmul_precision == "float32" and fastbp.MLP([3, 2], matmul_precision="highest").matmul_precision == (
        "float32"
    )
    X, y = make_batch(net, 16, rng)
    before = net.value_and_grad(X, y)[1].copy()
    if _STATUS["reason"] is None:  # the same compiled specialization runs both precisions
        twin = fastbp.MLP([10, 20, 3], seed=1, matmul_precision="bfloat16")
        assert rel_err(twin.value_and_grad(X, y)[1], before) > 0  # it did compute in bfloat16
    np.testing.assert_array_equal(net.value_and_grad(X, y)[1], before)


def test_bad_precisions_are_refused():
    with pytest.raises(ValueError, match="matmul_precision"):
        fastbp.MLP([3, 2], matmul_precision="float16")
    with pytest.raises(TypeError, match="matmul_precision"):
        fastbp.MLP([3, 2], matmul_precision=16)
    with pytest.raises(ValueError, match="dtype='float32'"):
        fastbp.MLP([3, 2], dtype="float64", matmul_precision="bfloat16")


def test_without_the_extra_bfloat16_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_onednn, "_library_path", lambda: None)
    _onednn.info.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"not installed.*pip install 'fastbp\[bf16\]'"):
            fastbp.MLP([3, 2], matmul_precision="bfloat16")
    finally:
        monkeypatch.undo()
        _onednn.info.cache_clear()


@pytest.mark.skipif(not _STATUS["installed"], reason="oneDNN (the bf16 extra) is not installed")
def test_on_a_cpu_without_bfloat16_arithmetic_it_is_a_clear_error():
    # oneDNN limited to AVX2 behaves as on a CPU without AVX512_BF16 or AMX.
    code = "import fastbp; fastbp.MLP([3, 2], matmul_precision='bfloat16')"
    env = {**os.environ, "DNNL_MAX_CPU_ISA": "AVX2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "RuntimeError: matmul_precision='bfloat16' is not available: this CPU has no bfloat16" in proc.stderr
    assert "Use matmul_precision='float32'" in proc.stderr


@needs_bf16
def test_the_command_line_trains_in_bfloat16(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastbp.cli",
            "train",
            "--epochs",
            "3",
            "--matmul-precision",
            "bfloat16",
            "--no-progress",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bfloat16 matmul precision" in proc.stdout
    assert fastbp.load(tmp_path / "fastbp-model.npz").matmul_precision == "bfloat16"


@needs_bf16
def test_fastbp_info_reports_bfloat16_and_set_num_threads_reaches_onednn(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fastbp.cli", "info"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert f"bfloat16 matmul precision: accelerated (oneDNN {_STATUS['version']}, {_STATUS['isa']}" in proc.stdout
    # set before oneDNN is loaded, the count reaches its OpenMP runtime too
    code = (
        "import fastbp, threadpoolctl; fastbp.set_num_threads(1); fastbp.MLP([3, 2], matmul_precision='bfloat16');"
        "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'openmp'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1]"


@needs_bf16
def test_gradcheck_compares_a_bfloat16_gradient_with_its_emulation(rng, monkeypatch):
    # against float64 a correct bfloat16 gradient is 5e-3 off; against the emulated products it is not
    net = fastbp.MLP([12, 16, 16, 4], "tanh", matmul_precision="bfloat16", l2=0.01, seed=0)
    X, y = make_batch(net, 32, rng)
    result = fastbp.gradcheck(net, X, y)
    assert result.passed and result.threshold_float32 == 1e-3
    assert "bfloat16 gradient vs its NumPy emulation" in str(result)

    from fastbp import checking

    def off_by_one_percent(n, X_, Y_):  # the built-in gradient, wrong in the network's own (bfloat16) one only
        return n.value_and_grad(X_, Y_)[1] * (1.01 if n.dtype == np.float32 else 1.0)

    monkeypatch.setattr(checking, "_compiled_grad", off_by_one_percent)
    wrong = fastbp.gradcheck(net, X, y)
    monkeypatch.undo()
    assert wrong.passed_float64 and not wrong.passed_float32

    def weighted_grad(n, X_, Y_):  # a custom objective: its products have no emulation to compare with
        return n.value_and_grad(X_, Y_, sample_weight=np.arange(1.0, 33.0))[1]

    def weighted_loss(n, X_, Y_):
        return n.value_and_grad(X_, Y_, sample_weight=np.arange(1.0, 33.0))[0]

    custom = fastbp.gradcheck(net, X, y, grad_fn=weighted_grad, loss_fn=weighted_loss)
    assert custom.passed and custom.worst_float32 is None and not custom.compared_float32
    assert "bfloat16 gradient: not compared" in str(custom)


@needs_bf16
def test_without_bfloat16_the_command_line_says_so_and_predicts_in_float32(tmp_path, monkeypatch, capsys):
    from fastbp import cli

    monkeypatch.chdir(tmp_path)
    train = ["train", "--epochs", "1", "--no-progress", "--matmul-precision", "bfloat16", "--output", "m.npz"]
    assert cli.main(train) == 0
    capsys.readouterr()
    monkeypatch.setattr(_onednn, "_library_path", lambda: None)  # as on a machine without the bf16 extra
    _onednn.info.cache_clear()
    try:
        assert cli.main(train) == 2
        assert "--matmul-precision bfloat16 is not available here: oneDNN is not installed" in capsys.readouterr().err
        assert cli.main(["predict", "m.npz", "--output", "p.txt"]) == 0
        err = capsys.readouterr().err
        assert "m.npz was trained in bfloat16 matmul precision, not available here" in err
        assert "predicting in float32" in err and "accuracy" in err
    finally:
        monkeypatch.undo()
        _onednn.info.cache_clear()


def test_without_bfloat16_fastbp_bench_says_so(monkeypatch, capsys):
    from fastbp import bench, cli

    monkeypatch.setattr(_onednn, "_library_path", lambda: None)  # as on a machine without the bf16 extra
    _onednn.info.cache_clear()
    try:
        assert cli.main(["bench", "--shapes", "S", "--dtypes", "bfloat16"]) == 2
        assert "--dtypes bfloat16 is not available here: oneDNN is not installed" in capsys.readouterr().err

        def stop(*args, **kwargs):  # the note comes before the measurements, which are not wanted here
            raise KeyboardInterrupt

        monkeypatch.setattr(bench, "run", stop)
        cli.main(["bench", "--quick"])
        out = capsys.readouterr().out
        assert "note: the bfloat16 cells are skipped: bfloat16 matmul precision is not available here (oneDNN" in out
    finally:
        monkeypatch.undo()
        _onednn.info.cache_clear()
