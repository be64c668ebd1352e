"""The compiled path (fastbp.MLP) against the NumPy reference, for every activation, output/loss pair and dtype."""

import warnings

import numpy as np
import pytest
from conftest import DTYPES, HIDDEN, OUTPUT_ULPS, PAIRS, RTOL, SOFTMAX_LOSS_RTOL_FLOAT32, make_batch, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import fastbp
from fastbp import reference

#: Architectures covering depth 1 to 5, width 1, odd prime widths; the last size is the output.
HIDDEN_SIZES = ([], [1], [7], [13, 5], [3, 11, 2], [5, 1, 7, 3])
BATCHES = (1, 2, 17)


def _n_out(output):
    return 3 if output == "softmax" else 1


def _loss_slack(net, X, Y):
    """The absolute slack of a squared-error loss value (see conftest.OUTPUT_ULPS); 0 for the other losses."""
    if net.loss != "squared_error":
        return 0.0
    A = reference.predict(net, X).astype(np.float64)
    Y = np.asarray(Y)
    T = np.eye(A.shape[1])[Y] if Y.ndim == 1 and A.shape[1] > 1 else Y.astype(np.float64).reshape(A.shape)
    return OUTPUT_ULPS * float(np.finfo(net.dtype).eps) * float(np.abs(A * (A - T)).sum()) / X.shape[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("output", "loss"), PAIRS)
@pytest.mark.parametrize("activation", HIDDEN)
def test_value_and_grad_matches_reference(activation, output, loss, dtype, rng):
    for hidden in HIDDEN_SIZES:
        for n_out in (_n_out(output), 5):
            for n in BATCHES:
                net = fastbp.MLP([4, *hidden, n_out], activation, output, loss, l2=0.05, dtype=dtype, seed=n)
                X, Y = make_batch(net, n, rng)
                value, grads = net.value_and_grad(X, Y)
                ref_value, ref_grads = reference.value_and_grad(net, X, Y)
                assert grads.dtype == net.dtype
                assert rel_err(grads, ref_grads) <= RTOL[dtype], (hidden, n_out, n)
                assert value == pytest.approx(ref_value, rel=RTOL[dtype], abs=_loss_slack(net, X, Y))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 13), min_size=1, max_size=5),
    n=st.integers(1, 9),
    data=st.data(),
    pair=st.sampled_from(PAIRS),
    dtype=st.sampled_from(DTYPES),
    l2=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_value_and_grad_matches_reference_hypothesis(sizes, n, data, pair, dtype, l2, seed):
    output, loss = pair
    n_out = max(sizes[-1], 2) if output == "softmax" else sizes[-1]
    hidden = sizes[:-1]
    activation = [data.draw(st.sampled_from(HIDDEN)) for _ in hidden]
    net = fastbp.MLP([data.draw(st.integers(1, 9)), *hidden, n_out], activation, output, loss, l2, dtype, seed)
    X, Y = make_batch(net, n, np.random.default_rng(seed), labels=data.draw(st.booleans()))
    value, grads = net.value_and_grad(X, Y)
    ref_value, ref_grads = reference.value_and_grad(net, X, Y)
    assert rel_err(grads, ref_grads) <= RTOL[dtype]
    assert value == pytest.approx(ref_value, rel=RTOL[dtype], abs=_loss_slack(net, X, Y))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [{}, {"norm": "batch", "residual": [False, True]}], ids=["plain", "options"])
@pytest.mark.parametrize("l2", [0.0, 1e-3])
def test_value_and_grad_of_layers_whose_products_are_paired(dtype, options, l2, rng):
    # 64 rows x 150 x 150 units is more than PAIR_MIN_MNK multiply-adds: layer 1's weight gradient and the GEMM of
    # the error below it run as one call of the batch GEMM (with the L2 term already in dW: beta 1).
    from fastbp.kernels.gemm import PAIR_MIN_MNK

    n, sizes = 64, [40, 150, 150, 6]
    assert n * sizes[1] * sizes[2] > PAIR_MIN_MNK
    net = fastbp.MLP(sizes, l2=l2, dtype=dtype, seed=0, **options)
    X, y = make_batch(net, n, rng)
    value, grads = net.value_and_grad(X, y)
    ref_value, ref_grads = reference.value_and_grad(net, X, y)
    assert rel_err(grads, ref_grads) <= RTOL[dtype]
    assert value == pytest.approx(ref_value, rel=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_labels_and_one_hot_give_the_same_gradient(dtype, rng):
    net = fastbp.MLP([6, 8, 4], dtype=dtype)
    X, y = make_batch(net, 10, rng)
    value, grads = net.value_and_grad(X, y)
    value_oh, grads_oh = net.value_and_grad(X, np.eye(4)[y])
    np.testing.assert_array_equal(grads, grads_oh)
    assert value == value_oh


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_accumulated_micro_batches_equal_the_concatenated_batch(dtype, l2, rng):
    net = fastbp.MLP([5, 9, 7, 3], "tanh", l2=l2, dtype=dtype)
    X, y = make_batch(net, 23, rng)
    full_value, full = net.value_and_grad(X, y)
    parts = np.split(np.arange(23), [4, 5, 15])  # uneven micro-batches: 4, 1, 10, 8
    acc = np.full(net.n_params, np.nan, dtype=net.dtype)  # garbage: the first call must overwrite it
    total = 0.0
    for k, idx in enumerate(parts):
        value, _ = net.value_and_grad(X[idx], y[idx], out=acc, accumulate=k > 0, scale=len(idx) / 23)
        total += value
    assert rel_err(acc, full) <= RTOL[dtype]
    assert total == pytest.approx(full_value, rel=RTOL[dtype])


def test_out_is_written_in_place_and_returned(rng):
    net = fastbp.MLP([3, 4, 2])
    X, y = make_batch(net, 5, rng)
    out = np.zeros(net.n_params, dtype=np.float32)
    _, grads = net.value_and_grad(X, y, out=out)
    assert grads is out
    assert rel_err(out, reference.value_and_grad(net, X, y)[1]) <= RTOL["float32"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_frozen_layers_get_zero_gradient_and_others_match(dtype, rng):
    net = fastbp.MLP([5, 6, 7, 3], trainable=[False, True, False], dtype=dtype, l2=0.1)
    X, y = make_batch(net, 8, rng)
    _, grads = net.value_and_grad(X, y)
    _, ref = reference.value_and_grad(net, X, y)
    dWs, dbs = net.unflatten(grads)
    for l in (0, 2):
        assert not dWs[l].any() and not dbs[l].any()
    assert rel_err(grads, ref) <= RTOL[dtype]
    # the unfrozen network's middle-layer gradient is the same
    full = fastbp.MLP([5, 6, 7, 3], dtype=dtype, l2=0.1)
    full.params[:] = net.params
    _, g_full = full.value_and_grad(X, y)
    start, stop = net.layout[1, 2], net.layout[1, 3] + net.layout[1, 1]
    np.testing.assert_allclose(grads[start:stop], g_full[start:stop], rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("output", "loss"), PAIRS)
def test_predict_matches_reference_including_chunking(output, loss, dtype, rng):
    net = fastbp.MLP([6, 9, 4], "sigmoid", output, loss, dtype=dtype)
    X = rng.standard_normal((2500, 6))  # more rows than the workspace: predicted in chunks
    P = net.predict(X)
    assert P.shape == (2500, 4) and P.dtype == net.dtype
    assert rel_err(P, reference.predict(net, X)) <= RTOL[dtype]
    if output == "softmax":
        np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=RTOL[dtype])


def test_workspace_grows_once_for_a_larger_batch(rng):
    net = fastbp.MLP([3, 4, 2])
    net.value_and_grad(*make_batch(net, 8, rng))
    acts = net._acts
    net.value_and_grad(*make_batch(net, 5, rng))
    assert net._acts is acts  # a smaller batch reuses the workspace
    X, y = make_batch(net, 30, rng)
    _, grads = net.value_and_grad(X, y)
    assert net._capacity == 30
    assert rel_err(grads, reference.value_and_grad(net, X, y)[1]) <= RTOL["float32"]


def test_extreme_logits_stay_finite():
    # Saturated softmax and sigmoid outputs: log-sum-exp and the logits form of binary CE keep the loss exact.
    for output in ("softmax", "sigmoid"):
        net = fastbp.MLP([2, 2], output=output, dtype="float64")
        net.coefs[0][...] = [[500.0, -500.0], [0.0, 0.0]]
        X = np.array([[1.0, 0.0]])
        Y = np.array([1]) if output == "softmax" else np.array([[0.0, 1.0]])
        value, grads = net.value_and_grad(X, Y)
        ref_value, ref_grads = reference.value_and_grad(net, X, Y)
        assert np.isfinite(value) and np.isfinite(grads).all()
        # the true loss is 1000 nats (softmax) or 500 + 500 (two wrong sigmoid units)
        assert value == pytest.approx(1000.0, rel=1e-12)
        assert value == pytest.approx(ref_value, rel=1e-12)
        np.testing.assert_allclose(grads, ref_grads, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_log_loss_is_scikit_learns_clipped_value_with_the_cross_entropy_gradient(output, dtype, rng):
    from sklearn.neural_network._base import binary_log_loss, log_loss

    # W = I and b = 0: the logits are X, so scikit-learn's functions get the same probabilities. Rows confidently
    # right, confidently wrong (clipped at eps) and in between, unweighted and weighted.
    n_out = 3
    loss = "log_loss" if output == "softmax" else "binary_log_loss"
    nets = [fastbp.MLP([n_out, n_out], output=output, loss=name, dtype=dtype) for name in (loss, None)]
    for net in nets:
        net.coefs[0][...] = np.eye(n_out)
        net.intercepts[0][...] = 0.0
    X = np.array([[60.0, 0, 0], [0, 60, 0], [0, 0, 3], [-40, 10, 1], [2, 1, 0]], dtype=dtype)
    if output == "softmax":
        labels = np.array([0, 2, 2, 0, 1])
        Y, targets = np.eye(n_out)[labels], [labels, np.eye(n_out, dtype=dtype)[labels]]
        P = np.exp(X - X.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        expected = log_loss
    else:
        Y = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=dtype)
        targets, P, expected = [Y], 1 / (1 + np.exp(-X)), binary_log_loss
    assert P.dtype == np.dtype(dtype)
    weights = rng.uniform(0.5, 2.0, X.shape[0]).astype(dtype)
    for sw in (None, weights):
        want = expected(Y, P, sample_weight=sw)
        for y in targets:
            value, grads = nets[0].value_and_grad(X, y, sample_weight=sw)
            unclipped, ce_grads = nets[1].value_and_grad(X, y, sample_weight=sw)
            assert value == pytest.approx(want, rel=RTOL[dtype])
            assert unclipped > value + 1.0  # the confidently wrong rows: -log(p) beyond -log(eps)
            np.testing.assert_array_equal(grads, ce_grads)  # the gradient is the cross-entropy's
            ref_value, ref_grads = reference.value_and_grad(nets[0], X, y, sample_weight=sw)
            assert ref_value == pytest.approx(want, rel=RTOL[dtype])
            assert rel_err(grads, ref_grads) <= RTOL[dtype]
    nets[0].coefs[0][0, 1] = np.inf  # infinite logits: the loss is not finite, as the unclipped losses' (divergence)
    assert not np.isfinite(nets[0].value_and_grad(X, targets[0])[0])


@pytest.mark.parametrize("loss", ["cross_entropy", "squared_error"])
@pytest.mark.parametrize("labels", [True, False])
def test_an_overflowed_logit_of_another_class_gives_a_non_finite_loss(loss, labels):
    # float32 logits [0, -inf, 0]: the -inf class has probability 0, so only "0 * inf" in the loss shows the overflow
    net = fastbp.MLP([2, 3], output="softmax", loss=loss, dtype="float32")
    net.coefs[0][...] = 0.0
    net.coefs[0][:, 1] = -1.0
    net.intercepts[0][...] = 0.0
    X = np.full((1, 2), 2e38, dtype=np.float32)
    value, _ = net.value_and_grad(X, np.array([0]) if labels else np.array([[1.0, 0.0, 0.0]]))
    assert not np.isfinite(value)


@pytest.mark.parametrize("shift", [0.0, 1e3, 1e4])
def test_float32_soft_target_cross_entropy_is_accurate_at_large_logits(shift):
    # W = I and b = 0 make the logits equal X exactly, so the loss can be computed in float64 from the same numbers.
    net = fastbp.MLP([3, 3], output="softmax", dtype="float32")
    net.coefs[0][...] = np.eye(3)
    net.intercepts[0][...] = 0.0
    X = (shift + np.array([[30.0, 0.0, -5.0]])).astype(np.float32)
    Y = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
    z = X.astype(np.float64)[0]
    lse = z.max() + np.log(np.exp(z - z.max()).sum())
    expected = float(np.dot(Y.astype(np.float64)[0], lse - z))
    value, _ = net.value_and_grad(X, Y)
    assert value == pytest.approx(expected, rel=SOFTMAX_LOSS_RTOL_FLOAT32)


@pytest.mark.parametrize("targets", ["labels", "one-hot"])
def test_float32_cross_entropy_of_a_confident_network_is_accurate(targets):
    # A confident row's loss is log(1 + tiny): the sum of its exps must not be rounded to float32 (it was, and the
    # loss of logits (12, 0, 0) for class 0 came out 0.9% off). W = I and b = 0: the logits are X exactly.
    net = fastbp.MLP([3, 3], output="softmax", dtype="float32")
    net.coefs[0][...] = np.eye(3)
    net.intercepts[0][...] = 0.0
    X = np.array([[12.0, 0.0, 0.0], [0.0, 9.0, -3.0]], dtype=np.float32)
    labels = np.array([0, 1])
    y = labels if targets == "labels" else np.eye(3, dtype=np.float32)[labels]
    z = X.astype(np.float64)
    expected = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(2), labels]))  # ~ 6e-5, exact in float64
    value, _ = net.value_and_grad(X, y)
    assert value == pytest.approx(expected, rel=SOFTMAX_LOSS_RTOL_FLOAT32)


@pytest.mark.parametrize(("sizes", "n"), [([64, 128, 10], 32), ([784, 256, 256, 10], 128), ([5, 3, 9, 2], 7)])
def test_workspace_is_no_larger_than_the_reference_peak(sizes, n, rng):
    # docs/benchmarks.md: the compiled path's workspace (activations of every layer + two ping-pong delta buffers) is
    # at most the peak memory the NumPy reference allocates for the same batch (measured with tracemalloc, which
    # sees NumPy's allocations).
    import tracemalloc

    net = fastbp.MLP(sizes)
    X, y = make_batch(net, n, rng)
    X, _, _ = net.check_batch(X, y)  # converted outside the measurement, as both paths need it
    net.value_and_grad(X, y)
    workspace = sum(a.nbytes for a in net._workspace)
    tracemalloc.start()
    reference.value_and_grad(net, X, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert workspace <= peak


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("output", "loss"), PAIRS)
def test_integer_sample_weights_equal_repeated_rows(output, loss, dtype, rng):
    """Weight k on a row is the same objective as k copies of it (weight 0: the row is left out); an independent
    check of the weighted mean, with the reference's weighted path checked alongside."""
    net = fastbp.MLP([4, 6, 3], activation="tanh", output=output, loss=loss, l2=0.2, dtype=dtype, seed=2)
    X, Y = make_batch(net, 9, rng)
    w = np.array([1, 0, 2, 3, 1, 0, 1, 4, 2])
    loss_w, g_w = net.value_and_grad(X, Y, sample_weight=w)
    idx = np.repeat(np.arange(9), w)
    loss_rep, g_rep = net.value_and_grad(X[idx], Y[idx])
    assert rel_err(loss_w, loss_rep) <= RTOL[dtype]
    assert rel_err(g_w, g_rep) <= RTOL[dtype]
    loss_ref, g_ref = reference.value_and_grad(net, X, Y, sample_weight=w)
    assert rel_err(loss_w, loss_ref) <= RTOL[dtype]
    assert rel_err(g_w, g_ref) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("output", "loss"), PAIRS)
def test_weights_near_the_smallest_float_give_the_weighted_mean(output, loss, dtype, rng):
    """The weighted mean does not depend on the weights' scale: equal weights of any magnitude, subnormal ones
    included (their sum's reciprocal overflows), give the unweighted loss and gradient; in training too."""
    net = fastbp.MLP([4, 6, 3], activation="tanh", output=output, loss=loss, dtype=dtype, seed=2)
    X, Y = make_batch(net, 32, rng)
    loss_1, g_1 = net.value_and_grad(X, Y)
    tiny = np.finfo(dtype).smallest_subnormal * 3
    weights = [np.full(32, scale, dtype=dtype) for scale in (tiny, np.finfo(dtype).tiny, 1e30, np.finfo(dtype).max)]
    weights += [np.full(32, 1e-300), np.full(32, 1e300)]  # float64, beyond float32's range either way
    for w in weights:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow in a sum of the weights either
            loss_w, g_w = net.value_and_grad(X, Y, sample_weight=w)
        assert rel_err(g_w, g_1) <= RTOL[dtype], w[0]
        assert rel_err(loss_w, loss_1) <= RTOL[dtype], w[0]
    trainer = fastbp.Trainer(net, fastbp.SGD(0.1), batch_size=8, progress=False)
    trainer.fit(X, Y, epochs=1, sample_weight=np.full(32, tiny))
    assert np.isfinite(net.params).all()


@pytest.mark.parametrize("bad", [[1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, np.nan, 1.0], [1.0, 1.0]])
def test_bad_sample_weights_are_refused(bad, rng):
    net = fastbp.MLP([2, 3, 2], seed=0)
    with pytest.raises(ValueError, match="sample_weight"):
        net.value_and_grad(rng.standard_normal((3, 2)), [0, 1, 1], sample_weight=bad)


def test_seeds_beyond_int64_work_everywhere(rng, tmp_path):
    # NumPy's generators take any non-negative seed (a SeedSequence's entropy has 128 bits); the compiled code
    # takes the dropout seed as an int64, where 2**63 and more failed to type or overflowed
    X = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    for seed in (2**63, 2**64, 2**127 + 3):
        net = fastbp.MLP([5, 6, 3], seed=seed, dropout=0.1)
        np.testing.assert_array_equal(net.params, fastbp.MLP([5, 6, 3], seed=seed).params)
        assert net.dropout_seed == seed % 2**63
        fastbp.Trainer(net, batch_size=8, progress=False).train_step(X, y)
        assert np.isfinite(net.predict(X)).all()
        net.save(tmp_path / "net.npz")
        assert fastbp.load(tmp_path / "net.npz").dropout_seed == net.dropout_seed


def test_per_layer_views_are_written_into_and_never_replaced():
    net = fastbp.MLP([3, 4, 4, 2], norm=["batch", None], dtype="float64")
    W = np.arange(12.0).reshape(3, 4)
    net.coefs[0] = W  # copied into the view: the network computes with it
    np.testing.assert_array_equal(net.params[:12], W.ravel())
    net.running_means[0] = np.full(4, 2.0)
    np.testing.assert_array_equal(net.buffers[:4], 2.0)
    with pytest.raises(ValueError, match=r"coefs\[1\] has shape \(4, 4\), got an array of shape \(3, 4\)"):
        net.coefs[1] = W
    with pytest.raises(TypeError, match=r"norm_scales\[1\] is None: that layer has none"):
        net.norm_scales[1] = np.ones(4)
    with pytest.raises(ValueError, match=r"running_vars\[0\] has shape \(4,\), got a scalar \(to fill the view"):
        net.running_vars[0] = 2.0
    with pytest.raises(TypeError, match=r"norm_shifts\[0\] is layer 0's view and cannot be None"):
        net.norm_shifts[0] = None
    np.testing.assert_array_equal(net.norm_shifts[0], 0.0)  # refused: the view unchanged
    with pytest.raises(TypeError, match=r"intercepts holds one view per layer .* not added or removed"):
        net.intercepts.append(np.zeros(2))
    with pytest.raises(AttributeError, match=r"coefs cannot be replaced: .*net\.coefs\[l\] = array"):
        net.coefs = [W]
    assert [view.shape for view in net.coefs] == [(3, 4), (4, 4), (4, 2)] and type(list(net.coefs)) is list


class DigitsNet(fastbp.MLP):
    """A subclass with a constructor of its own (module level: pickle finds it)."""

    def __init__(self, hidden=32, note="mine"):
        super().__init__([64, hidden, 10], seed=0)
        self.note = note


def test_a_subclass_with_its_own_constructor_is_copied_with_its_attributes(rng):
    # A copy was rebuilt by calling type(net).__init__ with fastbp.MLP's arguments: a subclass whose constructor
    # takes others could not be copied, pickled or sent to a worker process (as a torch.nn.Module subclass can).
    import copy
    import pickle

    net = DigitsNet(hidden=16, note="theirs")
    net.params[:] = rng.standard_normal(net.n_params)
    X = rng.standard_normal((5, 64)).astype(np.float32)
    for copied in (copy.copy(net), copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert type(copied) is DigitsNet and copied.note == "theirs"
        np.testing.assert_array_equal(copied.params, net.params)
        np.testing.assert_array_equal(copied.predict(X), net.predict(X))
        copied.params[:] = 0.0  # a copy of its own
        assert np.any(net.params != 0.0)
        assert not set(vars(copied)) - set(vars(net)) - {"note"}  # no workspace addresses carried as attributes
