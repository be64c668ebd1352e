"""fastbp.gradcheck and ``fastbp gradcheck``: correct gradients pass, broken ones fail, per layer."""

import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import GRADCHECK_THRESHOLD, GRADCHECK_THRESHOLD_FLOAT32, WRONG_GRADIENT_MIN_ERROR, make_batch

import fastbp
import fastbp.diagnose
from fastbp import reference


def reference_grad(net, X, Y):
    return reference.value_and_grad(net, X, Y)[1]


def zeroed_layer(layer):
    """A wrong gradient callable: the compiled gradient with layer ``layer``'s W and b set to zero."""

    def grad_fn(net, X, Y):
        grads = net.value_and_grad(X, Y)[1]
        start, stop = net.layer_range(layer)
        grads[start:stop] = 0.0
        return grads

    return grad_fn


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("activation", "output"), [("tanh", "softmax"), ("sigmoid", "sigmoid"), ("relu", "identity"), ("tanh", "tanh")]
)
def test_correct_gradients_pass_and_the_network_is_untouched(activation, output, dtype, rng):
    net = fastbp.MLP([6, 9, 7, 3], activation, output, l2=0.01, dtype=dtype, seed=3)
    X, Y = make_batch(net, 8, rng)
    before = net.params.copy()
    result = fastbp.gradcheck(net, X, Y)
    assert result.passed and result.worst <= GRADCHECK_THRESHOLD, str(result)
    assert not result.unresolved
    assert [c.layer for c in result.layers] == [0, 1, 2]
    assert [(c.checked_W, c.checked_b) for c in result.layers] == [(54, 9), (63, 7), (21, 3)]
    np.testing.assert_array_equal(net.params, before)  # the check ran on a float64 copy
    assert net.params.dtype == dtype
    # The NumPy reference passes the same check.
    assert fastbp.gradcheck(net, X, Y, grad_fn=reference_grad).passed


def test_a_broken_derivative_fails(rng, monkeypatch):
    net = fastbp.MLP([5, 8, 6, 3], "tanh", dtype="float64", seed=1)
    X, y = make_batch(net, 8, rng)
    assert fastbp.gradcheck(net, X, y, grad_fn=reference_grad).passed
    monkeypatch.setitem(reference.DERIVATIVES, "tanh", lambda A: 1 - A)  # tanh' is 1 - A^2
    result = fastbp.gradcheck(net, X, y, grad_fn=reference_grad)
    assert not result.passed and result.worst > WRONG_GRADIENT_MIN_ERROR
    # The output layer's gradient does not involve tanh'; the hidden layers' do.
    assert result.layers[2].worst <= GRADCHECK_THRESHOLD
    assert result.layers[0].worst > WRONG_GRADIENT_MIN_ERROR and result.layers[1].worst > WRONG_GRADIENT_MIN_ERROR
    assert "FAIL" in str(result)


def test_a_gradient_missing_the_l2_term_fails_on_the_weights_only(rng):
    net = fastbp.MLP([4, 6, 3], "sigmoid", l2=0.1, dtype="float64", seed=2)
    twin = fastbp.MLP([4, 6, 3], "sigmoid", l2=0.0, dtype="float64", seed=2)
    X, y = make_batch(net, 6, rng)

    def without_l2(net_, X_, Y_):  # a wrong gradient callable: the penalty's l2 * W is missing
        twin.params[:] = net_.params
        return twin.value_and_grad(X_, Y_)[1]

    result = fastbp.gradcheck(net, X, y, grad_fn=without_l2)
    assert not result.passed
    for layer in result.layers:
        assert layer.error_W > WRONG_GRADIENT_MIN_ERROR  # the weights' gradient is wrong
        assert layer.error_b <= GRADCHECK_THRESHOLD  # biases are not penalised: theirs is right
    worst = max(result.layers, key=lambda layer: layer.error_W)  # the summary names where the worst error is
    assert f"worst relative error {result.worst:.3g} at layer {worst.layer + 1} W (threshold" in str(result)


def test_the_summary_names_an_unresolved_part_whose_error_is_the_worst(rng):
    # layer 1's weights get a gradient within the differences' noise (the layer above zeroed) and a wrong one
    net = fastbp.MLP([5, 6, 3], "tanh", dtype="float64", seed=0)
    net.coefs[1][...] = 0.0
    X, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)

    def off(net_, X_, Y_):
        grads = net_.value_and_grad(X_, Y_)[1]
        grads[: 5 * 6] += 1e-11
        return grads

    result = fastbp.gradcheck(net, X, y, grad_fn=off)
    worst = max(result.layers, key=lambda layer: max(layer.error_W, layer.error_b))
    assert worst.layer == 0 and not worst.resolved_W and result.worst == worst.error_W
    assert f"worst relative error {result.worst:.3g} at layer 1 W (unresolved) (threshold" in str(result)


def test_a_wrong_gradient_of_a_layer_with_a_tiny_gradient_is_not_passed(rng):
    # A deep sigmoid network: the first layers' gradients (~1e-11) are below the finite differences' own noise
    # (~1e-10 with eps = 1e-5). A fixed absolute floor passed a zeroed first layer (worst 2.9e-8, PASS).
    net = fastbp.diagnose.plain_network("sigmoid", depth=16, width=16, n_in=8, n_out=3)
    X, y = rng.standard_normal((8, 8)), rng.integers(0, 3, 8)
    result = fastbp.gradcheck(net, X, y, grad_fn=zeroed_layer(0))
    assert not result.passed, str(result)
    assert (0, "W") in result.unresolved and (0, "b") in result.unresolved
    assert "unresolved" in str(result) and "FAIL" in str(result)
    # The correct gradient is no more checkable there at this step: not passed either, for the same reason ...
    correct = fastbp.gradcheck(net, X, y)
    assert not correct.passed and correct.unresolved == result.unresolved
    assert correct.worst <= GRADCHECK_THRESHOLD  # ... while every resolved layer agrees
    # A larger step resolves every layer: then the correct gradient passes and the zeroed layer fails.
    assert fastbp.gradcheck(net, X, y, eps=1e-3).passed
    wrong = fastbp.gradcheck(net, X, y, eps=1e-3, grad_fn=zeroed_layer(0))
    assert not wrong.passed and wrong.layers[0].worst > GRADCHECK_THRESHOLD
    # Zeroing a deeper layer whose gradient is small (~1e-9 .. 1e-7) but above the noise fails at eps = 1e-5.
    assert {layer for layer, _ in correct.unresolved} <= {0, 1, 2}
    for layer in (3, 5, 10):
        wrong = fastbp.gradcheck(net, X, y, grad_fn=zeroed_layer(layer))
        assert not wrong.passed and wrong.unresolved == correct.unresolved
        assert wrong.layers[layer].error_W > GRADCHECK_THRESHOLD and wrong.layers[layer].error_b > GRADCHECK_THRESHOLD


def test_the_error_is_scale_aware_a_large_loss_passes_and_small_relative_errors_fail(rng):
    # Targets of order 1e4: the loss is ~1e8 and the finite differences' absolute noise ~1e-2. A fixed floor on the
    # denominator failed this correct gradient (worst 1.6e-4, FAIL).
    net = fastbp.MLP([6, 9, 3], "tanh", "identity", dtype="float64")
    X, Y = rng.standard_normal((8, 6)), 1e4 * rng.standard_normal((8, 3))
    result = fastbp.gradcheck(net, X, Y)
    assert result.loss > 1e7
    assert result.passed and result.worst <= GRADCHECK_THRESHOLD, str(result)
    # The same loss scaled down by 1e8 gives the same verdict.
    assert fastbp.gradcheck(net, X, Y * 1e-4).passed
    # A gradient off by a relative 1e-5 everywhere is still caught at this scale.
    off = fastbp.gradcheck(net, X, Y, grad_fn=lambda net_, X_, Y_: net_.value_and_grad(X_, Y_)[1] * (1 + 1e-5))
    assert not off.passed and off.worst > GRADCHECK_THRESHOLD
    assert fastbp.gradcheck(net, X, Y, grad_fn=zeroed_layer(1)).layers[1].worst > WRONG_GRADIENT_MIN_ERROR


def test_a_float32_network_own_gradient_is_compared_with_float64(rng):
    net = fastbp.MLP([6, 9, 7, 3], "tanh", l2=0.1, dtype="float32", seed=3)
    X, y = make_batch(net, 8, rng)
    result = fastbp.gradcheck(net, X, y)
    assert result.passed and result.passed_float32 and result.dtype == "float32"
    assert 0 < result.worst_float32 <= GRADCHECK_THRESHOLD_FLOAT32
    assert all(c.error32_W is not None and c.error32_b is not None for c in result.layers)
    assert "float32 gradient vs float64" in str(result) and "f32 W" in str(result)
    assert result.to_dict()["worst_float32"] == result.worst_float32

    # A gradient that is wrong in float32 only (here: the float32 path drops the L2 term): the finite differences,
    # which check the float64 path, pass, and the float32 comparison fails, on the weights only.
    twin = fastbp.MLP([6, 9, 7, 3], "tanh", l2=0.0, dtype="float32", seed=3)

    def float32_without_l2(net_, X_, Y_):
        if net_.dtype != np.float32:
            return net_.value_and_grad(X_, Y_)[1]
        twin.params[:] = net_.params
        return twin.value_and_grad(X_, Y_)[1]

    result = fastbp.gradcheck(net, X, y, grad_fn=float32_without_l2)
    assert result.passed_float64 and not result.passed_float32 and not result.passed
    assert all(c.error32_W > WRONG_GRADIENT_MIN_ERROR for c in result.layers)
    assert all(c.error32_b <= GRADCHECK_THRESHOLD_FLOAT32 for c in result.layers)
    # float64 networks have no float32 part.
    result = fastbp.gradcheck(fastbp.MLP([3, 4, 2], dtype="float64"), X[:, :3], y % 2)
    assert result.worst_float32 is None and result.layers[0].error32_W is None and result.passed_float32


@pytest.mark.parametrize("case", ["minimum", "batch_norm_two_rows"])
def test_a_correct_float32_gradient_that_cancels_passes(case, rng):
    # delta cancels: near a minimum (P - Y ~ 0) and through batch norm on two rows (x_hat = +-1): float32 resolves
    # the gradient only to the size of the terms it sums, which the float32 error is measured against
    X, y = rng.standard_normal((16, 10)), rng.integers(0, 4, 16)
    if case == "minimum":
        net = fastbp.MLP([10, 16, 16, 4], "tanh", seed=0)
        fastbp.Trainer(net, fastbp.Adam(lr=0.01), batch_size=16, progress=False).fit(X, y, epochs=3000)
        assert net.value_and_grad(X, y)[0] < 1e-4
        nets = [net]
    else:
        X, y = X[:2], y[:2] % 3
        nets = [fastbp.MLP([10, 5, 5, 3], "tanh", norm="batch", seed=seed) for seed in range(15)]
    for net in nets:
        result = fastbp.gradcheck(net, X, y)
        assert result.passed_float32 and result.worst_float32 <= GRADCHECK_THRESHOLD_FLOAT32, str(result)


def test_large_layers_are_sampled_and_frozen_layers_skipped(rng):
    net = fastbp.MLP([40, 50, 3], "tanh", dtype="float64", seed=0, trainable=[True, False])
    X, y = make_batch(net, 4, rng)
    result = fastbp.gradcheck(net, X, y, max_coords=30, seed=5)
    assert result.passed
    assert len(result.layers) == 1  # layer 1 is frozen
    (layer,) = result.layers
    assert (layer.checked_W, layer.size_W, layer.checked_b, layer.size_b) == (30, 2000, 30, 50)
    assert result.to_dict()["layers"][0]["checked_W"] == 30


@pytest.mark.parametrize("seed", range(6))
def test_a_sampled_batch_norm_layer_is_resolved(seed, rng):
    # a batch-norm layer's biases have a zero gradient: a draw of only biases would be unresolved
    net = fastbp.MLP([5, 8, 3], "tanh", norm="batch", dtype="float64", seed=0)
    X, y = make_batch(net, 6, rng)
    result = fastbp.gradcheck(net, X, y, max_coords=2, seed=seed)
    assert result.passed, result.unresolved
    assert result.layers[0].checked_b == 2


def test_a_network_with_every_layer_frozen_is_an_error_not_a_pass(rng):
    net = fastbp.MLP([4, 5, 3], dtype="float64", trainable=[False, False])
    X, y = make_batch(net, 4, rng)
    with pytest.raises(ValueError, match="every layer of net is frozen"):
        fastbp.gradcheck(net, X, y)


def test_gradcheck_is_the_function_and_its_module_is_fastbp_checking():
    import fastbp.checking

    assert callable(fastbp.gradcheck) and fastbp.gradcheck is fastbp.checking.gradcheck
    assert importlib.util.find_spec("fastbp.gradcheck") is None  # no submodule to shadow the function
    from fastbp.checking import GradcheckResult, LayerCheck

    assert isinstance(GradcheckResult(), GradcheckResult) and LayerCheck.__module__ == "fastbp.checking"


def test_rejects_bad_arguments(rng):
    net = fastbp.MLP([3, 2], dtype="float64")
    X, y = make_batch(net, 2, rng)
    with pytest.raises(ValueError, match="eps"):
        fastbp.gradcheck(net, X, y, eps=0.0)
    with pytest.raises(ValueError, match="threshold"):
        fastbp.gradcheck(net, X, y, threshold=0.0)
    with pytest.raises(TypeError, match=r"fastbp\.MLP"):
        fastbp.gradcheck("net", X, y)
    with pytest.raises(ValueError, match="grad_fn must return"):
        fastbp.gradcheck(net, X, y, grad_fn=lambda *_: np.zeros(3))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastbp.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_default_network_passes_and_an_unresolved_gradient_fails():
    proc = run_cli("gradcheck")
    assert proc.returncode == 0, proc.stderr
    worst = float(re.search(r"worst relative error (\S+) ", proc.stdout).group(1))
    assert worst <= GRADCHECK_THRESHOLD
    assert len(re.findall(r"^\s+\d+\s+\d+x\d+", proc.stdout, re.M)) == 3  # one row per layer
    # The default network is float32: its own gradient is compared with float64 too.
    worst32 = float(re.search(r"float32 gradient vs float64: worst relative error (\S+) ", proc.stdout).group(1))
    assert worst32 <= GRADCHECK_THRESHOLD_FLOAT32
    # 16 sigmoid layers: the first layers' gradients are below the finite differences' noise: exit code 1 and a
    # message; a larger step resolves them.
    deep = ("--activation", "sigmoid", "--layers", ",".join(["16"] * 16), "--max-coords", "32")
    proc = run_cli("gradcheck", *deep)
    assert proc.returncode == 1
    assert "unresolved" in proc.stderr and "FAIL" in proc.stdout
    assert run_cli("gradcheck", *deep, "--eps", "1e-3").returncode == 0


def test_cli_checks_the_exp_output_with_the_poisson_loss():
    proc = run_cli("gradcheck", "--output", "exp", "--dtype", "float64")
    assert proc.returncode == 0, proc.stderr
    assert "exp + poisson" in proc.stdout
    worst = float(re.search(r"worst relative error (\S+) ", proc.stdout).group(1))
    assert worst <= GRADCHECK_THRESHOLD
