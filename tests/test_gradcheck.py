"""fastbp.gradcheck and ``fastbp gradcheck``: correct gradients pass, broken ones fail, per layer."""

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import GRADCHECK_THRESHOLD, make_batch

import fastbp
from fastbp import reference


def reference_grad(net, X, Y):
    return reference.value_and_grad(net, X, Y)[1]


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
    assert not result.passed and result.worst > 1e-2
    # The output layer's gradient does not involve tanh'; the hidden layers' do.
    assert result.layers[2].worst <= GRADCHECK_THRESHOLD
    assert result.layers[0].worst > 1e-2 and result.layers[1].worst > 1e-2
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
        assert layer.worst_W > 1e-2  # the weights' gradient is wrong
        assert layer.worst_b <= GRADCHECK_THRESHOLD  # biases are not penalised: theirs is right


def test_large_layers_are_sampled_and_frozen_layers_skipped(rng):
    net = fastbp.MLP([40, 50, 3], "tanh", dtype="float64", seed=0, trainable=[True, False])
    X, y = make_batch(net, 4, rng)
    result = fastbp.gradcheck(net, X, y, max_coords=30, seed=5)
    assert result.passed
    assert len(result.layers) == 1  # layer 1 is frozen
    (layer,) = result.layers
    assert (layer.checked_W, layer.size_W, layer.checked_b, layer.size_b) == (30, 2000, 30, 50)
    assert result.to_dict()["layers"][0]["checked_W"] == 30


def test_rejects_bad_arguments(rng):
    net = fastbp.MLP([3, 2], dtype="float64")
    X, y = make_batch(net, 2, rng)
    with pytest.raises(ValueError, match="eps"):
        fastbp.gradcheck(net, X, y, eps=0.0)
    with pytest.raises(TypeError, match=r"fastbp\.MLP"):
        fastbp.gradcheck("net", X, y)
    with pytest.raises(ValueError, match="grad_fn must return"):
        fastbp.gradcheck(net, X, y, grad_fn=lambda *_: np.zeros(3))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastbp.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_default_network_passes_and_a_tiny_threshold_fails():
    proc = run_cli("gradcheck")
    assert proc.returncode == 0, proc.stderr
    worst = float(re.search(r"worst relative error (\S+) ", proc.stdout).group(1))
    assert worst <= GRADCHECK_THRESHOLD
    assert len(re.findall(r"^\s+\d+\s+\d+x\d+", proc.stdout, re.M)) == 3  # one row per layer
    # The same network with a threshold below the finite differences' own noise: exit code 1 and a message.
    proc = run_cli("gradcheck", "--threshold", "1e-14", "--activation", "sigmoid", "--layers", "8")
    assert proc.returncode == 1
    assert "exceeds 1e-14" in proc.stderr and "FAIL" in proc.stdout
