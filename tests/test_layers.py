"""The hidden-layer options (batch norm, layer norm, residual connections, dropout): the compiled kernels against the
NumPy reference (fastbp.reference) and the graph engine (fastbp.graph, the layers composed of elementary operations),
the reference against central differences, and training: a compiled SGD step against the reference's gradient with
the same dropout masks, the running statistics, the compiled dropout mask bit for bit and its kept fraction, and
evaluation with the running statistics and no dropout."""

import itertools

import numpy as np
import pytest
from conftest import (
    BATCH_NORM_MIN_ROWS_FLOAT32,
    DROPOUT_KEPT_ATOL,
    DTYPES,
    FD_RTOL,
    FD_STEP,
    FLOAT32_NORM_MAX_DEPTH,
    GRAPH_RTOL,
    HAND_RTOL,
    HIDDEN,
    INDEPENDENT_MASKS_DISAGREE,
    LAYERS_MUST_DIFFER,
    LAYERS_RTOL,
    NORM_MIN_WIDTH,
    PAIRED_UNITS_ATOL,
    REASSEMBLY_RTOL,
    rel_err,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_graph import graph_value_and_grad

import fastbp
from fastbp import reference
from fastbp.kernels.layout import DROPOUT

NORMS = (None, "batch", "layer")
#: The output activation x loss pairs the graph's MLPs write (tests/test_graph.py).
OUTPUTS = (("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("identity", "squared_error"))
#: (depth, batch size) of the networks of each combination: every depth from 1 to 6 hidden layers, batches of 2 to 257
#: rows (one row: test_one_row_*).
SHAPES = ((1, 2), (2, 257), (3, 3), (4, 16), (5, 64), (6, 5))


def build(sizes, activation, norm, residual, dropout=0.0, dtype="float64", seed=0, pair=OUTPUTS[0], l2=0.05):
    """A network with non-trivial parameters and statistics: random biases, gammas around 1, betas around 0, and
    running statistics that are neither 0 nor 1 (so a mix-up of any of them shows)."""
    output, loss = pair
    net = fastbp.MLP(
        sizes, activation, output, loss, l2=l2, dtype=dtype, seed=seed, norm=norm, residual=residual, dropout=dropout
    )
    rng = np.random.default_rng(seed + 1)
    for b in net.intercepts:
        b[...] = 0.3 * rng.standard_normal(b.shape)
    for gamma, beta in zip(net.norm_scales, net.norm_shifts, strict=True):
        if gamma is not None:
            gamma[...] = 1.0 + 0.3 * rng.standard_normal(gamma.shape)
            beta[...] = 0.3 * rng.standard_normal(beta.shape)
    for mean, var in zip(net.running_means, net.running_vars, strict=True):
        if mean is not None:
            mean[...] = 0.5 * rng.standard_normal(mean.shape)
            var[...] = rng.uniform(0.5, 2.0, var.shape)
    return net


def batch(net, n, rng):
    """Inputs (n, n_in) and targets suited to the output: class labels, values in (0, 1), or standard normal."""
    X = rng.standard_normal((n, net.n_in))
    if net.output == "softmax":
        return X, rng.integers(0, net.n_out, n)
    if net.output == "sigmoid":
        return X, rng.random((n, net.n_out))
    return X, rng.standard_normal((n, net.n_out))


def masks_of(net, step, rows):
    """The dropout factors of each hidden layer at a step: 0, or 2^32 / (2^32 - threshold) (the kernels' 1 / (1 -
    p)) for a kept unit, from reference.dropout_mask; None for a layer without dropout."""
    out = []
    for l, p in enumerate(net.dropouts[: net.n_layers - 1]):
        if p == 0:
            out.append(None)
            continue
        threshold = float(net.layout[l, DROPOUT])
        out.append(reference.dropout_mask(net, l, step, rows) * (2.0**32 / (2.0**32 - threshold)))
    return out


def check_against_reference_and_graph(net, X, Y):
    """The compiled gradient and loss against the reference (the network's dtype) and, in float64, the graph; the
    running statistics untouched."""
    dtype = net.dtype.name
    buffers = net.buffers.copy()
    value, grads = net.value_and_grad(X, Y)
    np.testing.assert_array_equal(net.buffers, buffers)  # value_and_grad does not update them (nor reads them: see
    # the reference, which never does, with statistics set apart from the batch's)
    ref_value, ref = reference.value_and_grad(net, X, Y)
    assert grads.dtype == net.dtype
    assert rel_err(grads, ref) <= LAYERS_RTOL[dtype]
    assert value == pytest.approx(ref_value, rel=LAYERS_RTOL[dtype])
    if dtype == "float64":
        graph_value, graph = graph_value_and_grad(net, X, Y)
        assert rel_err(graph, ref) <= GRAPH_RTOL
        assert rel_err(grads, graph) <= GRAPH_RTOL
        assert graph_value == pytest.approx(value, rel=GRAPH_RTOL)


# ------------------------------------------------------------------------------------------ gradients
def widths(rng, count, norm):
    """``count`` random widths: from 1 (plain layers) or NORM_MIN_WIDTH (when the network normalizes) to 9."""
    low = NORM_MIN_WIDTH if any(k is not None for k in np.atleast_1d(norm)) else 1
    return rng.integers(low, 10, count).tolist()


def dtypes_for(norm, depth):
    """The dtypes a network is compared in: float32 up to FLOAT32_NORM_MAX_DEPTH hidden layers when it normalizes."""
    normalized = any(k is not None for k in np.atleast_1d(norm))
    return DTYPES if not normalized or depth <= FLOAT32_NORM_MAX_DEPTH else ("float64",)


@pytest.mark.parametrize("activation", HIDDEN)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", NORMS)
def test_every_combination_matches_reference_and_graph(norm, residual, activation):
    # each combination at every depth from 1 to 6, across the output/loss pairs, in float64 and float32
    rng = np.random.default_rng(NORMS.index(norm) * 100 + residual * 10 + HIDDEN.index(activation))
    for k, (depth, n) in enumerate(SHAPES):
        if residual:  # every hidden layer keeps its width, the first one's input included
            sizes = widths(rng, 1, norm) * (depth + 1)
        else:
            sizes = widths(rng, depth + 1, norm)
        for dtype in dtypes_for(norm, depth):
            rows = max(n, BATCH_NORM_MIN_ROWS_FLOAT32) if norm == "batch" and dtype == "float32" else n
            net = build([*sizes, 3], activation, norm, residual, dtype=dtype, seed=k, pair=OUTPUTS[k % 3])
            check_against_reference_and_graph(net, *batch(net, rows, rng))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    depth=st.integers(1, 6),
    n=st.integers(2, 257),
    data=st.data(),
    pair=st.sampled_from(OUTPUTS),
    dtype=st.sampled_from(DTYPES),
    l2=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_mixed_layer_options_match_reference_and_graph(depth, n, data, pair, dtype, l2, seed):
    # per-layer lists: norm=["batch", None, "layer", ...], residual where the widths allow it, activations mixed.
    # Derandomized: the float32 bound has a rare tail (conftest.FLOAT32_NORM_MAX_DEPTH), so the examples are fixed.
    norm = data.draw(st.lists(st.sampled_from(NORMS), min_size=depth, max_size=depth))
    if dtype not in dtypes_for(norm, depth):
        dtype = "float64"
    activation = data.draw(st.lists(st.sampled_from(HIDDEN), min_size=depth, max_size=depth))
    low = NORM_MIN_WIDTH if any(k is not None for k in norm) else 1
    sizes = data.draw(st.lists(st.integers(low, 8), min_size=depth + 1, max_size=depth + 1))
    residual = [sizes[l] == sizes[l + 1] and data.draw(st.booleans()) for l in range(depth)]
    if dtype == "float32" and "batch" in norm:
        n = max(n, BATCH_NORM_MIN_ROWS_FLOAT32)
    net = build([*sizes, 4], activation, norm, residual, dtype=dtype, seed=seed, pair=pair, l2=l2)
    check_against_reference_and_graph(net, *batch(net, n, np.random.default_rng(seed)))


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(1, 4), n=st.integers(2, 40), data=st.data(), seed=st.integers(0, 2**16))
def test_reference_dropout_gradient_equals_the_graph_with_the_same_masks(depth, n, data, seed):
    # the reference's dropout (its masks from dropout_mask, its backward pass) against the graph multiplying by the
    # same constant factors; rows with ids other than 0..n-1, a step other than 0
    norm = data.draw(st.lists(st.sampled_from(NORMS), min_size=depth, max_size=depth))
    width = data.draw(st.integers(NORM_MIN_WIDTH if any(k is not None for k in norm) else 1, 8))
    residual = data.draw(st.lists(st.booleans(), min_size=depth, max_size=depth))
    dropout = data.draw(st.lists(st.sampled_from([0.0, 0.1, 0.5, 0.8]), min_size=depth, max_size=depth))
    activation = data.draw(st.lists(st.sampled_from(HIDDEN), min_size=depth, max_size=depth))
    pair = data.draw(st.sampled_from(OUTPUTS))
    net = build([width] * (depth + 1) + [3], activation, norm, residual, dropout, seed=seed, pair=pair)
    rng = np.random.default_rng(seed)
    X, Y = batch(net, n, rng)
    step, rows = int(rng.integers(0, 1000)), rng.permutation(10 * n)[:n]
    value, grads = reference.value_and_grad(net, X, Y, dropout_step=step, row_ids=rows)
    graph_value, graph = graph_value_and_grad(net, X, Y, masks_of(net, step, rows))
    assert rel_err(grads, graph) <= GRAPH_RTOL
    assert value == pytest.approx(graph_value, rel=GRAPH_RTOL)


def finite_differences(net, X, Y, **dropout):
    """Central differences of the reference's loss (training mode; a fixed dropout mask when given) for every
    parameter, float64."""
    grads = np.empty(net.n_params)
    for i in range(net.n_params):
        saved = net.params[i]
        net.params[i] = saved + FD_STEP
        plus, _ = reference.value_and_grad(net, X, Y, **dropout)
        net.params[i] = saved - FD_STEP
        minus, _ = reference.value_and_grad(net, X, Y, **dropout)
        net.params[i] = saved
        grads[i] = (plus - minus) / (2 * FD_STEP)
    return grads


@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", NORMS)
def test_reference_matches_finite_differences(norm, residual, dropout):
    # smooth activations (no kink for a difference to straddle), 2 and 5 rows, a mixed network too
    rng = np.random.default_rng(7)
    for n, activation in ((2, ["tanh", "sigmoid"]), (5, ["identity", "tanh"])):
        for pair in OUTPUTS[::2]:
            net = build([4, 4, 4, 3], activation, norm, residual, dropout, seed=n, pair=pair)
            X, Y = batch(net, n, rng)
            _, grads = reference.value_and_grad(net, X, Y, dropout_step=3)
            assert rel_err(grads, finite_differences(net, X, Y, dropout_step=3)) <= FD_RTOL
    mixed = build([3, 4, 4, 4, 2], "tanh", ["batch", None, "layer"], [False, True, True], [0.3, 0.0, 0.5], seed=2)
    X, Y = batch(mixed, 6, rng)
    _, grads = reference.value_and_grad(mixed, X, Y, dropout_step=1, row_ids=[5, 4, 3, 2, 1, 0])
    assert rel_err(grads, finite_differences(mixed, X, Y, dropout_step=1, row_ids=[5, 4, 3, 2, 1, 0])) <= FD_RTOL


def test_finite_differences_catch_a_wrong_normalization_gradient(monkeypatch):
    # the check above must be able to fail: drop the last term of the normalization's backward pass and it does
    net = build([3, 4, 2], "tanh", "batch", False)
    X, Y = batch(net, 5, np.random.default_rng(0))
    hidden_delta = reference._delta_through_hidden

    def constant_statistics(net, l, layer, G, grads):  # the mean and variance taken as constants: a common slip
        hidden_delta(net, l, layer, G, grads)  # gamma's and beta's gradients
        return G * reference.DERIVATIVES[net.activations[l]](layer["H"]) * net.norm_scales[l] * layer["inv"]

    monkeypatch.setattr(reference, "_delta_through_hidden", constant_statistics)
    _, grads = reference.value_and_grad(net, X, Y)
    assert rel_err(grads, finite_differences(net, X, Y)) > LAYERS_MUST_DIFFER


# ------------------------------------------------------------------------------------------ one row
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_row_with_batch_norm_raises_and_layer_norm_works(dtype):
    rng = np.random.default_rng(3)
    net = build([3, 4, 4, 3], "tanh", [None, "batch"], [False, True], dtype=dtype)
    X, Y = batch(net, 1, rng)
    with pytest.raises(ValueError, match="at least 2 rows"):
        net.value_and_grad(X, Y)
    with pytest.raises(ValueError, match="at least 2 rows"):
        reference.value_and_grad(net, X, Y)
    trainer = fastbp.Trainer(net, fastbp.SGD(0.1), progress=False)
    with pytest.raises(ValueError, match="at least 2 rows"):
        trainer.train_step(X, Y)
    X2, Y2 = batch(net, 5, rng)
    with pytest.raises(ValueError, match="at least 2 rows"):  # 5 rows in batches of 2 leave one row
        fastbp.Trainer(net, fastbp.SGD(0.1), batch_size=2, progress=False).fit(X2, Y2, epochs=1)
    # evaluation takes the running statistics: one row is fine
    assert rel_err(net.predict(X), reference.predict(net, X)) <= LAYERS_RTOL[dtype]
    # layer norm (and no norm) normalizes a row by itself: one row is fine in training too
    for norm in ("layer", None):
        one = build([4, 4, 4, 3], "sigmoid", norm, True, dtype=dtype)
        check_against_reference_and_graph(one, *batch(one, 1, rng))


# ------------------------------------------------------------------------------------------ training with dropout
def sgd_step_expected(net, X, Y, step, rows, lr):
    """(loss, parameters after one SGD step, running statistics after it) by the reference: the gradient with the
    dropout masks of ``step`` for rows with ids ``rows``, and the statistics of that forward pass."""
    value, grads = reference.value_and_grad(net, X, Y, dropout_step=step, row_ids=rows)
    means, variances = reference.updated_running_stats(net, X, dropout_step=step, row_ids=rows)
    return value, net.params - lr * grads, means, variances


def assert_stats_equal(net, means, variances, rtol):
    for l in range(net.n_layers - 1):
        if net.norms[l] == "batch":
            assert rel_err(net.running_means[l], means[l]) <= rtol
            assert rel_err(net.running_vars[l], variances[l]) <= rtol
        else:
            assert net.running_means[l] is None and means[l] is None


#: Networks of the training tests: (sizes, activation, norm, residual, dropout).
TRAINED = (
    ([5, 6, 6, 3], "tanh", "batch", [False, True], 0.3),
    ([6, 6, 6, 6, 3], ["relu", "sigmoid", "leaky_relu"], ["batch", None, "layer"], True, [0.5, 0.2, 0.0]),
    ([4, 7, 7, 2], "identity", "layer", [False, True], [0.0, 0.6]),
    ([4, 8, 5, 3], "sigmoid", [None, "batch"], False, 0.25),
)


@pytest.mark.parametrize("spec", TRAINED)
def test_train_steps_equal_sgd_on_the_reference_gradient_with_the_same_masks(spec):
    # two train_steps (dropout steps 0 and 1, rows 0..m-1): parameters (gamma and beta too: never decayed, l2 on W
    # only), the returned loss and the running statistics as the reference computes them
    lr, m = 0.1, 12
    net = build(*spec, seed=4, l2=0.1)
    X, Y = batch(net, m, np.random.default_rng(5))
    trainer = fastbp.Trainer(net, fastbp.SGD(lr, momentum=0.0), progress=False)
    for step in (0, 1):
        value, params, means, variances = sgd_step_expected(net, X, Y, step, np.arange(m), lr)
        _, no_dropout = reference.value_and_grad(net, X, Y)
        before = net.params.copy()
        loss = trainer.train_step(X, Y)
        assert rel_err(net.params - before, params - before) <= LAYERS_RTOL["float64"]
        assert rel_err(net.params - before, -lr * no_dropout) > LAYERS_MUST_DIFFER  # the masks matter
        assert loss == pytest.approx(value, rel=LAYERS_RTOL["float64"])
        assert_stats_equal(net, means, variances, LAYERS_RTOL["float64"])


def test_fit_takes_the_row_ids_of_the_data_and_the_step_count():
    # one epoch of shuffled mini-batches (10, 10, 4 rows): each step's masks are those of its step (0, 1, 2) and of
    # its rows' indices in X
    lr, m, size = 0.05, 24, 10
    net = build([5, 6, 6, 6, 3], "tanh", ["batch", "layer", "batch"], [False, True, True], [0.3, 0.5, 0.1], seed=8)
    X, Y = batch(net, m, np.random.default_rng(9))
    expected = build([5, 6, 6, 6, 3], "tanh", ["batch", "layer", "batch"], [False, True, True], [0.3, 0.5, 0.1], seed=8)
    perm = np.random.default_rng(11).permutation(m)  # the trainer's shuffle of its first epoch (seed 11)
    for step, start in enumerate(range(0, m, size)):
        rows = perm[start : start + size]
        _, params, means, variances = sgd_step_expected(expected, X[rows], Y[rows], step, rows, lr)
        expected.params[:] = params
        for l, (mean, var) in enumerate(zip(means, variances, strict=True)):
            if mean is not None:
                expected.running_means[l][...] = mean
                expected.running_vars[l][...] = var
    fastbp.Trainer(net, fastbp.SGD(lr), batch_size=size, seed=11, progress=False).fit(X, Y, epochs=1)
    assert rel_err(net.params, expected.params) <= LAYERS_RTOL["float64"]
    assert rel_err(net.buffers, expected.buffers) <= LAYERS_RTOL["float64"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_compiled_dropout_mask_is_the_numpy_mask_and_keeps_one_minus_p(p, dtype):
    # A train_step leaves each layer's output A in the network's workspace: with a sigmoid (H > 0) and no residual
    # connection, A = 0 exactly where a unit was dropped. The compiled masks of two layers (1024 rows x 1024 units and
    # x 64 units) equal reference.dropout_mask bit for bit, the kept units carry H / (1 - p), and the kept fraction
    # over the 2^20 units of the first layer is 1 - p.
    n, widths = 1024, (1024, 64)
    net = build([8, *widths, 2], "sigmoid", [None, "layer"], False, [p, 0.3], dtype=dtype, seed=12)
    X, Y = batch(net, n, np.random.default_rng(13))
    training = reference.forward(net, X, training=True, dropout_step=0)
    fastbp.Trainer(net, fastbp.SGD(0.01), progress=False).train_step(X, Y)
    start = 0
    for l, width in enumerate(widths):
        A = net._acts[start : start + n * width].reshape(n, width)
        start += n * width
        keep = reference.dropout_mask(net, l, 0, np.arange(n))
        np.testing.assert_array_equal(A != 0, keep)
        assert rel_err(A, training[l + 1]) <= LAYERS_RTOL[dtype]
        if l == 0:  # the kept fraction of the compiled mask
            assert abs(np.mean(A != 0) - (1 - p)) <= DROPOUT_KEPT_ATOL


def test_dropout_mask_depends_on_seed_step_layer_row_and_unit_only():
    net = fastbp.MLP([3, 64, 64, 2], dropout=0.5, seed=5)
    rows = np.array([7, 0, 123456789, 3])
    mask = reference.dropout_mask(net, 1, 2, rows)
    assert mask.shape == (4, 64) and mask.dtype == bool
    for k, row in enumerate(rows):  # a row's mask is the same in any batch, at any position
        np.testing.assert_array_equal(reference.dropout_mask(net, 1, 2, [row])[0], mask[k])
    np.testing.assert_array_equal(reference.dropout_mask(net, 1, 2, rows, seed=5), mask)  # net.dropout_seed
    others = [
        reference.dropout_mask(net, 1, 3, rows),
        reference.dropout_mask(net, 0, 2, rows),
        reference.dropout_mask(net, 1, 2, rows + 1),
        reference.dropout_mask(net, 1, 2, rows, seed=6),
    ]
    for other in others:  # independent draws: about half the units differ
        low, high = INDEPENDENT_MASKS_DISAGREE
        assert low < (other != mask).mean() < high
    # units 2h and 2h + 1 read the two halves of one hash: they are kept together as often as independent units
    many = reference.dropout_mask(net, 1, 2, np.arange(8192))
    assert abs((many[:, 0::2] & many[:, 1::2]).mean() - 0.25) <= PAIRED_UNITS_ATOL
    assert reference.dropout_mask(fastbp.MLP([3, 64, 2], seed=5), 0, 2, rows).all()  # no dropout: every unit
    with pytest.raises(ValueError, match="hidden layer"):
        reference.dropout_mask(net, 2, 0, rows)  # the output layer has none


# ------------------------------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_and_evaluate_use_running_statistics_and_no_dropout(dtype):
    net = build([5, 6, 6, 6, 3], "tanh", ["batch", "layer", "batch"], [False, True, True], [0.5, 0.2, 0.3], dtype=dtype)
    X, y = batch(net, 40, np.random.default_rng(14))
    buffers = net.buffers.copy()
    P = net.predict(X)
    assert rel_err(P, reference.predict(net, X)) <= LAYERS_RTOL[dtype]
    # not the batch statistics, not dropout
    assert rel_err(P, reference.forward(net, X, training=True)[-1]) > LAYERS_MUST_DIFFER
    np.testing.assert_array_equal(net.predict(X[:7]), P[:7])  # no statistics of the batch: rows are independent
    trainer = fastbp.Trainer(net, fastbp.SGD(0.1), progress=False)
    result = trainer.evaluate(X, y)
    penalty = 0.5 * net.l2 * sum(float((W.astype(np.float64) ** 2).sum()) for W in net.coefs)
    Q = reference.predict(net, X).astype(np.float64)
    assert result["loss"] == pytest.approx(-np.log(Q[np.arange(40), y]).mean() + penalty, rel=LAYERS_RTOL[dtype])
    assert result["accuracy"] == np.mean(P.argmax(axis=1) == y)
    np.testing.assert_array_equal(net.buffers, buffers)  # neither changes the running statistics
    # after training steps, evaluation follows the updated statistics
    trainer.train_step(X, y)
    assert not np.array_equal(net.buffers, buffers)
    assert rel_err(net.predict(X), reference.predict(net, X)) <= LAYERS_RTOL[dtype]


def test_updated_running_stats_is_pytorchs_momentum_update():
    # by hand: one batch-norm layer with identity weights, so the batch statistics are those of X's columns
    net = fastbp.MLP([3, 3, 2], "identity", norm="batch", dtype="float64")
    net.coefs[0][...] = np.eye(3)
    net.intercepts[0][...] = 0.0
    net.running_means[0][...] = [1.0, 2.0, 3.0]
    net.running_vars[0][...] = [4.0, 5.0, 6.0]
    X = np.array([[0.0, 1.0, 2.0], [2.0, 5.0, 2.0], [4.0, 0.0, 8.0]])
    means, variances = reference.updated_running_stats(net, X)
    # column means [2, 2, 4], unbiased variances [4, 7, 12]; PyTorch's momentum 0.1
    np.testing.assert_allclose(means[0], [0.9 * 1 + 0.2, 0.9 * 2 + 0.2, 0.9 * 3 + 0.4], rtol=HAND_RTOL)
    np.testing.assert_allclose(variances[0], [0.9 * 4 + 0.4, 0.9 * 5 + 0.7, 0.9 * 6 + 1.2], rtol=HAND_RTOL)
    np.testing.assert_array_equal(net.running_means[0], [1.0, 2.0, 3.0])  # the network is not changed
    _, y = batch(net, 3, np.random.default_rng(0))
    fastbp.Trainer(net, fastbp.SGD(0.1), progress=False).train_step(X, y)
    assert rel_err(net.running_means[0], means[0]) <= LAYERS_RTOL["float64"]
    assert rel_err(net.running_vars[0], variances[0]) <= LAYERS_RTOL["float64"]


def test_plain_networks_are_unchanged_by_the_options_code():
    # norm=None, residual=False, dropout=0 given explicitly: the same network and gradient as without them
    rng = np.random.default_rng(15)
    for activation, n in itertools.product(("relu", "tanh"), (1, 9)):
        plain = fastbp.MLP([4, 6, 5, 3], activation, dtype="float64", seed=n)
        explicit = fastbp.MLP([4, 6, 5, 3], activation, dtype="float64", seed=n, norm=None, residual=False, dropout=0.0)
        X, y = batch(plain, n, rng)
        np.testing.assert_array_equal(explicit.params, plain.params)
        np.testing.assert_array_equal(explicit.value_and_grad(X, y)[1], plain.value_and_grad(X, y)[1])
        np.testing.assert_array_equal(
            reference.value_and_grad(explicit, X, y, dropout_step=4)[1], reference.value_and_grad(plain, X, y)[1]
        )


def test_deltas_reassemble_the_gradient_with_layer_options():
    # reference.deltas with options: dW[l] = A[l-1].T @ delta[l] + l2 W[l], db[l] = sum of delta[l], A from the
    # training-mode forward pass with the same dropout
    net = build([5, 6, 6, 6, 3], "tanh", ["batch", None, "layer"], [False, True, True], [0.3, 0.0, 0.5], l2=0.1)
    X, Y = batch(net, 9, np.random.default_rng(16))
    A = reference.forward(net, X, training=True, dropout_step=2)
    deltas = reference.deltas(net, X, Y, dropout_step=2)
    _, grads = reference.value_and_grad(net, X, Y, dropout_step=2)
    dWs, dbs = net.unflatten(grads)
    assert [d.shape for d in deltas] == [(9, 6), (9, 6), (9, 6), (9, 3)]
    for l, delta in enumerate(deltas):
        assert rel_err(A[l].T @ delta + net.l2 * net.coefs[l], dWs[l]) <= REASSEMBLY_RTOL
        if net.norms[l] == "batch":  # the batch mean cancels the bias: its gradient is 0 (up to rounding)
            assert np.linalg.norm(dbs[l]) <= REASSEMBLY_RTOL * np.linalg.norm(grads)
        else:
            assert rel_err(delta.sum(axis=0), dbs[l]) <= REASSEMBLY_RTOL


@pytest.mark.parametrize("dtype", DTYPES)
def test_frozen_layers_and_sample_weights_with_layer_options(dtype):
    # a frozen normalized layer gets no gradient (gamma and beta neither); sample weights reach through the options
    net = build([5, 6, 6, 6, 3], "tanh", ["batch", "layer", "batch"], [False, True, True], dtype=dtype)
    net.set_trainable(0, False)
    net.set_trainable(2, False)
    X, y = batch(net, 23, np.random.default_rng(17))
    w = np.random.default_rng(18).random(23)
    for sample_weight in (None, w):
        _, grads = net.value_and_grad(X, y, sample_weight=sample_weight)
        _, ref = reference.value_and_grad(net, X, y, sample_weight=sample_weight)
        assert rel_err(grads, ref) <= LAYERS_RTOL[dtype]
        for l in (0, 2):
            start, stop = net.layer_range(l)
            assert not grads[start:stop].any()


@pytest.mark.parametrize("p", [1 - 2**-34, 0.9999999999])
def test_a_dropout_rate_next_to_one_keeps_one_unit_in_two_to_the_32(p):
    # round(p * 2^32) is 2^32 for these rates: the threshold is capped at 2^32 - 1, so that the kernels' 32-bit cut
    # and their scale 2^32 / (2^32 - threshold) stay finite, and the reference computes the same network
    net = build([4, 6, 3], "tanh", [None], False, [p], dtype="float64", seed=2)
    assert net.layout[0, DROPOUT] == 2**32 - 1
    X, Y = batch(net, 5, np.random.default_rng(3))
    value, grads = reference.value_and_grad(net, X, Y, dropout_step=0)
    assert np.isfinite(value) and np.all(np.isfinite(grads))
    trainer = fastbp.Trainer(net, fastbp.SGD(0.1), progress=False)
    before = net.params.copy()
    loss = trainer.train_step(X, Y)
    assert loss == pytest.approx(value, rel=LAYERS_RTOL["float64"])
    assert rel_err(before - net.params, 0.1 * grads) <= LAYERS_RTOL["float64"]


def test_a_dropout_rate_that_rounds_to_no_threshold_is_no_dropout():
    # round(p * 2^32) is 0 up to 2^-33: no unit is ever dropped, and the network says so (as PyTorch's bridge and the
    # repr read net.dropouts)
    net = build([4, 6, 6, 3], "tanh", [None, None], False, [1e-12, 2**-32], dtype="float64", seed=2)
    assert net.layout[0, DROPOUT] == 0 and net.layout[1, DROPOUT] == 1
    assert net.dropouts == (0.0, 2**-32, 0.0)
    assert build([4, 6, 3], "tanh", [None], False, [2**-33], dtype="float64", seed=2).dropouts == (0.0, 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_new_trainer_mid_run_updates_the_running_statistics_bit_for_bit(dtype):
    # a trainer's first train_step takes the Python path into the epoch loop, its later ones the checked entry
    # point: the running statistics' update, contracted differently by LLVM in the two, came out 1 ulp apart
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((256, 12)), rng.integers(0, 4, 256)

    def run(new_at):
        batches = np.random.default_rng(5)
        net = fastbp.MLP([12, 16, 16, 4], dtype=dtype, seed=1, norm="batch")
        optimizer = fastbp.SGD(lr=0.05)
        trainer = fastbp.Trainer(net, optimizer, progress=False)
        for step in range(10):
            if step in new_at:
                trainer = fastbp.Trainer(net, optimizer, progress=False)
            rows = batches.choice(256, 32, replace=False)
            trainer.train_step(X[rows], y[rows])
        return net

    one = run(())
    other = run(range(1, 10))  # every step a new trainer's first
    np.testing.assert_array_equal(other.params, one.params)
    np.testing.assert_array_equal(other.buffers, one.buffers)
