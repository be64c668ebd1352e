"""Bad input is rejected at the boundary with an error naming the argument, and changes nothing."""

import warnings

import numpy as np
import pytest
from conftest import make_batch

import fastbp

BAD_NETWORKS = [
    (dict(layer_sizes=[3]), ValueError, "layer_sizes"),
    (dict(layer_sizes=[3, 0, 2]), ValueError, r"layer_sizes\[1\]"),
    (dict(layer_sizes=[3, -4]), ValueError, r"layer_sizes\[1\]"),
    (dict(layer_sizes=[3, 2.5]), TypeError, r"layer_sizes\[1\]"),
    (dict(layer_sizes="32"), TypeError, "layer_sizes"),
    (dict(layer_sizes=[3, 4, 2], activation="swish"), ValueError, "activation"),
    (dict(layer_sizes=[3, 4, 2], activation="softmax"), ValueError, "activation"),
    (dict(layer_sizes=[3, 4, 5, 2], activation=["relu"]), ValueError, "activation"),
    (dict(layer_sizes=[3, 4, 2], activation=3), TypeError, "activation"),
    (dict(layer_sizes=[3, 2], output="gelu"), ValueError, "output"),
    (dict(layer_sizes=[3, 2], loss="hinge"), ValueError, "loss"),
    (dict(layer_sizes=[3, 2], output="identity", loss="cross_entropy"), ValueError, "cross_entropy"),
    (dict(layer_sizes=[3, 2], output="softmax", loss="binary_cross_entropy"), ValueError, "binary_cross_entropy"),
    (dict(layer_sizes=[3, 2], output="identity", loss="poisson"), ValueError, "poisson"),
    (dict(layer_sizes=[3, 2], output="exp", loss="cross_entropy"), ValueError, "cross_entropy"),
    (dict(layer_sizes=[3, 4, 2], activation="exp"), ValueError, "activation"),
    (dict(layer_sizes=[3, 1], output="softmax"), ValueError, "softmax"),
    (dict(layer_sizes=[3, 2], l2=-1.0), ValueError, "l2"),
    (dict(layer_sizes=[3, 2], l2=float("nan")), ValueError, "l2"),
    (dict(layer_sizes=[3, 2], l2="0.1"), TypeError, "l2"),
    (dict(layer_sizes=[3, 2], dtype="float16"), ValueError, "dtype"),
    (dict(layer_sizes=[3, 2], dtype="int32"), ValueError, "dtype"),
    (dict(layer_sizes=[3, 2], seed=-1), ValueError, "seed"),
    (dict(layer_sizes=[3, 2], seed=1.5), TypeError, "seed"),
    (dict(layer_sizes=[3, 4, 2], trainable=[True]), ValueError, "trainable"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_NETWORKS)
def test_bad_network_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fastbp.MLP(**kwargs)


def _bad_batches(net, X, y):
    Xnan = X.copy()
    Xnan[1, 2] = np.nan
    Xinf = X.copy()
    Xinf[0, 0] = np.inf
    return [
        ((X[:, :3], y), ValueError, "X must have 4 columns"),
        ((X[0], y), ValueError, "X must be 2-dimensional"),
        ((X[:0], y[:0]), ValueError, "X is empty"),
        ((Xnan, y), ValueError, "X contains NaN"),
        ((Xinf, y), ValueError, "X contains NaN or infinity"),
        ((X.astype(complex), y), TypeError, "X must hold real numbers"),
        ((np.array([["a"] * 4] * 6), y), TypeError, "X must hold real numbers"),
        ((X, y[:5]), ValueError, "Y has 5 labels for 6 samples"),
        ((X, y + 3), ValueError, r"labels in \[0, 2\]"),
        ((X, y - 1), ValueError, r"labels in \[0, 2\]"),
        # uint64 labels of 2**63 and more: told as given, not as the negative int64 they would wrap to
        (
            (X, y.astype(np.uint64) + np.uint64(2**63)),
            ValueError,
            r"labels in \[92233720368547758\d\d, 92233720368547758\d\d\]",
        ),
        ((X, y + 0.5), ValueError, "integer class labels"),
        ((X, np.eye(3)[y][:, :2]), ValueError, r"Y must have shape \(6, 3\)"),
        ((X, y[:, None]), ValueError, r"got \(6, 1\); class labels are 1-D: give Y\.ravel\(\)"),
        ((X, np.eye(3)[y][:, :, None]), ValueError, "Y must be"),
        ((X, np.where(np.eye(3)[y] > 0, np.nan, 0)), ValueError, "Y contains NaN"),
        ((X, y.astype(str)), TypeError, "Y must hold"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_bad_batches_raise_and_change_nothing(case, rng):
    net = fastbp.MLP([4, 5, 3], l2=0.1)
    X, y = make_batch(net, 6, rng)
    (Xb, yb), error, match = _bad_batches(net, X, y)[case]
    params = net.params.copy()
    out = np.full(net.n_params, 7.0, dtype=np.float32)
    with pytest.raises(error, match=match):
        net.value_and_grad(Xb, yb, out=out, accumulate=True)
    np.testing.assert_array_equal(net.params, params)
    np.testing.assert_array_equal(out, 7.0)
    with pytest.raises(error, match=match):
        fastbp.reference.value_and_grad(net, Xb, yb)


def test_bad_out_buffers(rng):
    net = fastbp.MLP([4, 5, 3])
    X, y = make_batch(net, 6, rng)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        net.value_and_grad(X, y, out=np.zeros(net.n_params))
    with pytest.raises(ValueError, match="out must have shape"):
        net.value_and_grad(X, y, out=np.zeros(net.n_params + 1, dtype=np.float32))
    with pytest.raises(TypeError, match="out must be a numpy array"):
        net.value_and_grad(X, y, out=[0.0] * net.n_params)
    with pytest.raises(ValueError, match="C-contiguous"):
        net.value_and_grad(X, y, out=np.zeros(2 * net.n_params, dtype=np.float32)[::2])
    readonly = np.zeros(net.n_params, dtype=np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        net.value_and_grad(X, y, out=readonly)
    with pytest.raises(ValueError, match="accumulate=True needs an out"):
        net.value_and_grad(X, y, accumulate=True)
    with pytest.raises(ValueError, match="scale"):
        net.value_and_grad(X, y, scale=-1.0)


def test_non_softmax_targets_must_be_two_dimensional(rng):
    net = fastbp.MLP([4, 3], output="sigmoid")
    X = rng.standard_normal((5, 4))
    with pytest.raises(ValueError, match=r"Y must be \(5, 3\) targets, got shape \(5,\)"):
        net.value_and_grad(X, np.zeros(5))
    # a single-output network accepts a 1-D column of targets
    single = fastbp.MLP([4, 1], output="identity")
    np.testing.assert_array_equal(
        single.value_and_grad(X, np.arange(5.0))[1], single.value_and_grad(X, np.arange(5.0)[:, None])[1]
    )


def test_other_dtypes_are_converted_once_at_the_boundary(rng):
    net = fastbp.MLP([4, 5, 3], dtype="float64")
    X, y = make_batch(net, 6, rng)
    _, g64 = net.value_and_grad(X, y)
    _, g_from_f32 = net.value_and_grad(X.astype(np.float32).astype(np.float64), y.astype(np.int32))
    _, g_int_X = net.value_and_grad(np.round(X * 4).astype(np.int64) / 4.0, y)
    assert g64.dtype == g_from_f32.dtype == np.float64
    np.testing.assert_array_equal(net.value_and_grad(X.tolist(), y.tolist())[1], g64)
    np.testing.assert_array_equal(net.value_and_grad(np.asfortranarray(X), y)[1], g64)
    assert np.isfinite(g_int_X).all()


def test_params_cannot_be_rebound_and_layout_is_read_only():
    net = fastbp.MLP([4, 5, 3])
    with pytest.raises(AttributeError):
        net.params = np.zeros(net.n_params, dtype=np.float32)
    with pytest.raises(ValueError):
        net.layout[0, 0] = 7
    net.params[:] = 1.0  # writing into the buffer is the way to set parameters
    assert (net.coefs[0] == 1.0).all() and (net.intercepts[1] == 1.0).all()


def test_predict_validates_X():
    net = fastbp.MLP([4, 3])
    with pytest.raises(ValueError, match="X must have 4 columns"):
        net.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="X contains NaN"):
        net.predict(np.full((2, 4), np.nan))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(layer_sizes=[4, 2], activation="bogus"), ValueError, "activation"),  # checked without hidden layers
        (dict(layer_sizes={4, 3}), TypeError, "layer_sizes"),
        (dict(layer_sizes=[2**40, 2**10]), ValueError, "parameters"),
        (dict(layer_sizes=[2**62, 4]), ValueError, "parameters"),
        (dict(layer_sizes=[4, 3, 2], trainable=["False", "True"]), TypeError, r"trainable\[0\]"),
        (dict(layer_sizes=[4, 3, 2], trainable=True), TypeError, "trainable"),
        (dict(layer_sizes=[4, 2], dtype=None), TypeError, "dtype"),
    ],
)
def test_more_bad_network_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fastbp.MLP(**kwargs)


def test_numpy_string_activations_are_accepted():
    net = fastbp.MLP([4, 3, 2], activation=np.array(["tanh"]))
    assert net.activations == ("tanh",)


def test_out_may_not_alias_params_and_flags_must_be_booleans(rng):
    net = fastbp.MLP([4, 3, 2])
    X, y = make_batch(net, 5, rng)
    params = net.params.copy()
    with pytest.raises(ValueError, match=r"share memory with net\.params"):
        net.value_and_grad(X, y, out=net.params)
    np.testing.assert_array_equal(net.params, params)
    with pytest.raises(TypeError, match="accumulate"):
        net.value_and_grad(X, y, out=np.zeros(net.n_params, np.float32), accumulate="no")
    with pytest.raises(TypeError, match="flag"):
        net.set_trainable(0, "False")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_out_may_not_alias_the_batch(rng, dtype):
    # the backward pass reads X after it has written gradients: a buffer shared by both gave a wrong gradient
    net = fastbp.MLP([5, 7, 3], activation="tanh", dtype=dtype, seed=0)
    X, y = make_batch(net, 8, rng)
    Y = np.eye(3)[y]
    params = net.params.copy()
    for name, (Xb, Yb, swb) in {"X": (0, 1, None), "Y": (1, 0, None), "sample_weight": (1, 1, 0)}.items():
        buf = np.zeros(net.n_params + 20, dtype)
        out = buf[: net.n_params]
        tail = buf[-40:]  # overlaps the last entries of out
        Xv = tail.reshape(8, 5) if Xb == 0 else X.astype(dtype)
        Yv = tail[:24].reshape(8, 3) if Yb == 0 else Y.astype(dtype)
        sw = tail[:8] if swb == 0 else None
        Xv[...], Yv[...] = X, Y
        if sw is not None:
            sw[...] = 1.0
        with pytest.raises(ValueError, match=f"out must not share memory with {name} "):
            net.value_and_grad(Xv, Yv, out=out, sample_weight=sw)
    size = net.n_params * np.dtype(dtype).itemsize  # class labels (int64) in the bytes of out's tail
    raw = np.zeros(size + 32, np.uint8)
    out, labels = raw[:size].view(dtype), raw[size - 32 :].view(np.int64)
    with pytest.raises(ValueError, match="out must not share memory with Y "):
        net.value_and_grad(X.astype(dtype), labels, out=out)
    np.testing.assert_array_equal(net.params, params)


def test_dropout_seed_is_checked_when_set():
    # it reaches compiled code as an int64: a float compiled a new specialization, a string gave Numba's typing error
    net = fastbp.MLP([3, 4, 2], dropout=0.1, seed=1)
    for value, error in ((1.5, TypeError), ("abc", TypeError), (None, TypeError), (True, TypeError), (-1, ValueError)):
        with pytest.raises(error, match="dropout_seed"):
            net.dropout_seed = value
    assert net.dropout_seed == 1
    net.dropout_seed = np.uint64(2**63 + 5)  # reduced as the constructor reduces its seed
    assert net.dropout_seed == 5 and type(net.dropout_seed) is int


def test_inputs_that_do_not_fit_the_dtype_or_are_malformed(rng):
    net = fastbp.MLP([2, 3])
    with pytest.raises(ValueError, match="too large for float32"):
        net.value_and_grad(np.array([[1e39, 0.0]]), [0])
    regressor = fastbp.MLP([2, 1], output="identity")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cast's overflow warning came first, then "Y contains NaN or infinity"
        with pytest.raises(ValueError, match=r"Y holds values too large for float32"):
            regressor.value_and_grad(np.zeros((1, 2)), np.array([[1e39]]))
    with pytest.raises(ValueError, match=r"X cannot be read as an array"):
        net.value_and_grad([[1.0, 2.0], [3.0]], [0, 1])
    with pytest.raises(TypeError, match="masked array"):
        net.value_and_grad(np.ma.masked_array([[1.0, 2.0]], mask=[[0, 1]]), [0])
    with pytest.raises(ValueError, match=r"labels in \[0, 1e\+20\]"):
        net.value_and_grad(np.zeros((2, 2)), np.array([0.0, 1e20]))


def test_networks_can_be_copied_and_pickled(rng):
    import copy
    import pickle

    net = fastbp.MLP([4, 5, 3], l2=0.1, trainable=[False, True], dtype="float64")
    net.params[:] = rng.standard_normal(net.n_params)
    X, y = make_batch(net, 6, rng)
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert other.trainable == net.trainable and other.l2 == net.l2
        np.testing.assert_array_equal(other.value_and_grad(X, y)[1], net.value_and_grad(X, y)[1])
        other.params[:] = 0.0  # a copy owns its buffers
        assert net.params.any()


@pytest.mark.parametrize("shape", [(7,), (7, 3), (7, 2, 2)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row", [0, 3, 6])
def test_all_finite_tests_every_block(monkeypatch, shape, bad, row):
    """The finite test runs block by block over the first axis: a bad value in the first, a middle or the last
    row is found with blocks of one row, of several and of the whole array, also in a strided view."""
    from fastbp import _tuning, _validation

    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    a.reshape(shape[0], -1)[row, -1] = bad
    for block in (1, 4, 10**6):
        monkeypatch.setattr(_tuning, "FINITE_BLOCK", block)
        assert _validation.all_finite(a) is False
        assert _validation.all_finite(np.delete(a, row, axis=0)) is True
        assert _validation.all_finite(a[::2]) is (row % 2 == 1)
