"""The NumPy reference against central finite differences, and against networks worked out by hand."""

import math

import numpy as np
import pytest
from conftest import FD_RTOL, FD_STEP, HAND_RTOL, HIDDEN, PAIRS, make_batch, rel_err

import fastbp
from fastbp import reference


def finite_differences(net, X, Y):
    """Central differences (L(p + h e_i) - L(p - h e_i)) / 2h for every parameter, in float64."""
    grads = np.empty(net.n_params)
    for i in range(net.n_params):
        saved = net.params[i]
        net.params[i] = saved + FD_STEP
        plus, _ = reference.value_and_grad(net, X, Y)
        net.params[i] = saved - FD_STEP
        minus, _ = reference.value_and_grad(net, X, Y)
        net.params[i] = saved
        grads[i] = (plus - minus) / (2 * FD_STEP)
    return grads


@pytest.mark.parametrize(("output", "loss"), PAIRS)
@pytest.mark.parametrize("activation", HIDDEN)
def test_reference_matches_finite_differences(activation, output, loss, rng):
    net = fastbp.MLP([3, 5, 4, 3], activation, output, loss, l2=0.05, dtype="float64", seed=7)
    for b in net.intercepts:  # non-zero biases: no pre-activation sits exactly on the kink of relu at 0
        b[...] = rng.standard_normal(b.shape)
    X, Y = make_batch(net, 6, rng)
    _, grads = reference.value_and_grad(net, X, Y)
    assert rel_err(grads, finite_differences(net, X, Y)) <= FD_RTOL


def test_finite_differences_catch_a_wrong_derivative(rng, monkeypatch):
    # The check above must be able to fail: break tanh' and it does, by orders of magnitude.
    net = fastbp.MLP([3, 5, 2], "tanh", "identity", dtype="float64")
    X, Y = make_batch(net, 4, rng)
    monkeypatch.setitem(reference.DERIVATIVES, "tanh", lambda A: 1 - A)
    _, grads = reference.value_and_grad(net, X, Y)
    assert rel_err(grads, finite_differences(net, X, Y)) > 1e-2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("value_and_grad", [reference.value_and_grad, fastbp.MLP.value_and_grad])
def test_two_layer_relu_network_by_hand(value_and_grad, dtype):
    # Network 2-2-1, relu hidden, identity output, squared error C = 1/2 (a - y)^2, one sample.
    net = fastbp.MLP([2, 2, 1], "relu", "identity", dtype=dtype)
    net.coefs[0][...] = [[1.0, -1.0], [0.5, 1.0]]  # W1 (fan_in, fan_out)
    net.intercepts[0][...] = [0.5, -0.5]
    net.coefs[1][...] = [[2.0], [-1.0]]
    net.intercepts[1][...] = [0.25]
    X = np.array([[1.0, 2.0]])
    Y = np.array([[4.0]])
    # Forward: Z1 = [1*1 + 2*0.5 + 0.5, 1*(-1) + 2*1 - 0.5] = [2.5, 0.5]; A1 = relu(Z1) = [2.5, 0.5]
    #          Z2 = 2.5*2 + 0.5*(-1) + 0.25 = 4.75 = A2
    # Loss:    C = 1/2 (4.75 - 4)^2 = 1/2 * 0.5625 = 0.28125
    # BP1:     delta2 = (a - y) * 1 = 0.75
    # BP3/BP4: db2 = 0.75; dW2 = A1^T delta2 = [[2.5 * 0.75], [0.5 * 0.75]] = [[1.875], [0.375]]
    # BP2:     delta1 = (delta2 W2^T) (.) relu'(Z1) = [0.75*2, 0.75*(-1)] (.) [1, 1] = [1.5, -0.75]
    # BP3/BP4: db1 = [1.5, -0.75]; dW1 = x^T delta1 = [[1*1.5, 1*(-0.75)], [2*1.5, 2*(-0.75)]]
    loss, grads = value_and_grad(net, X, Y)
    dW, db = net.unflatten(grads)
    assert loss == 0.28125
    np.testing.assert_array_equal(dW[1], [[1.875], [0.375]])
    np.testing.assert_array_equal(db[1], [0.75])
    np.testing.assert_array_equal(dW[0], [[1.5, -0.75], [3.0, -1.5]])
    np.testing.assert_array_equal(db[0], [1.5, -0.75])


@pytest.mark.parametrize("value_and_grad", [reference.value_and_grad, fastbp.MLP.value_and_grad])
def test_lecture_example_sigmoid_unit_with_weight_decay(value_and_grad):
    # The worked example of docs/background.md: f(w, b) = 1/2 (sigma(w x + b) - y)^2 + 1/2 w^2, which is a 1-1 network
    # with a sigmoid output, squared error and l2 = 1. With x = 1.5, y = 0.2, w = 0.8, b = -0.3:
    #   z = 0.8 * 1.5 - 0.3 = 0.9;  s = sigma(0.9) = 1 / (1 + e^-0.9)
    #   df/dw = x s (1 - s) (s - y) + w;   df/db = s (1 - s) (s - y)
    x, y, w, b = 1.5, 0.2, 0.8, -0.3
    s = 1.0 / (1.0 + math.exp(-0.9))
    net = fastbp.MLP([1, 1], output="sigmoid", loss="squared_error", l2=1.0, dtype="float64")
    net.coefs[0][...] = w
    net.intercepts[0][...] = b
    loss, grads = value_and_grad(net, [[x]], [[y]])
    assert loss == pytest.approx(0.5 * (s - y) ** 2 + 0.5 * w**2, rel=HAND_RTOL)
    assert grads[0] == pytest.approx(x * s * (1 - s) * (s - y) + w, rel=HAND_RTOL)
    assert grads[1] == pytest.approx(s * (1 - s) * (s - y), rel=HAND_RTOL)


@pytest.mark.parametrize("value_and_grad", [reference.value_and_grad, fastbp.MLP.value_and_grad])
def test_softmax_cross_entropy_gradient_is_p_minus_y(value_and_grad):
    # One sample, logits z = [log 1, log 3] = [0, log 3] (no hidden layer, W = 0, b = z): p = [1/4, 3/4].
    # Label 0: C = -log(1/4) = log 4; dC/db = p - y = [1/4 - 1, 3/4] = [-0.75, 0.75]; dC/dW = x^T (p - y).
    net = fastbp.MLP([2, 2], output="softmax", dtype="float64")
    net.coefs[0][...] = 0.0
    net.intercepts[0][...] = [0.0, math.log(3.0)]
    loss, grads = value_and_grad(net, [[2.0, -1.0]], [0])
    dW, db = net.unflatten(grads)
    assert loss == pytest.approx(math.log(4.0), rel=HAND_RTOL)
    np.testing.assert_allclose(db[0], [-0.75, 0.75], rtol=HAND_RTOL)
    np.testing.assert_allclose(dW[0], [[-1.5, 1.5], [0.75, -0.75]], rtol=HAND_RTOL)


@pytest.mark.parametrize("targets", ["soft", "multi_hot", "zero_rows"])
def test_softmax_cross_entropy_with_targets_that_are_not_distributions(targets, rng):
    # -sum_j y_j log p_j has gradient P sum(y) - Y wrt the logits; P - Y holds only when each row sums to 1.
    net = fastbp.MLP([3, 5, 4], "tanh", "softmax", dtype="float64", seed=2)
    for b in net.intercepts:
        b[...] = rng.standard_normal(b.shape)
    X = rng.standard_normal((6, 3))
    Y = {
        "soft": rng.random((6, 4)) * 2,
        "multi_hot": (rng.random((6, 4)) > 0.5).astype(float),
        "zero_rows": np.zeros((6, 4)),
    }[targets]
    fd = finite_differences(net, X, Y)
    _, ref = reference.value_and_grad(net, X, Y)
    _, compiled = net.value_and_grad(X, Y)
    assert rel_err(ref, fd) <= FD_RTOL or np.abs(ref - fd).max() <= 1e-9  # zero rows: gradient exactly 0
    assert rel_err(compiled, ref) <= 1e-12 or np.abs(compiled - ref).max() <= 1e-15


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0, 2.0], "has 2 weights for 3 samples"), ([1.0, -1.0, 2.0], "must be >= 0"), ([0.0, 0.0, 0.0], "positive")],
)
def test_sample_weights_are_checked_as_the_engine_checks_them(weights, message):
    # the oracle took any weights: too few broadcast into an error of its own, a zero sum gave NaN without a word
    net = fastbp.MLP([4, 3, 2], dtype=np.float64, seed=0)
    X, y = np.ones((3, 4)), np.array([0, 1, 1])
    for value_and_grad in (
        net.value_and_grad,
        lambda X, y, sample_weight: reference.value_and_grad(net, X, y, sample_weight),
    ):
        with pytest.raises(ValueError, match=message):
            value_and_grad(X, y, sample_weight=weights)
