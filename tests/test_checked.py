"""The checked entry points (fastbp/kernels/checked.py): the one compiled call behind value_and_grad, predict,
train_step, evaluate and FlatObjective takes the common inputs, gives exactly the results of the Python path, and
leaves everything else to the Python checks, which raise the documented errors with nothing written."""

import copy

import numpy as np
import pytest

import fastbp
from fastbp import _validation
from fastbp.trainer import Trainer

NETWORKS = {
    "softmax": dict(layer_sizes=[6, 9, 4]),
    "sigmoid": dict(layer_sizes=[6, 9, 3], output="sigmoid"),
    "identity-1": dict(layer_sizes=[6, 9, 1], output="identity", l2=0.1),
    "options": dict(layer_sizes=[6, 8, 8, 4], norm="batch", residual=[False, True], dropout=0.2),
    "frozen": dict(layer_sizes=[6, 9, 4], activation="tanh", trainable=[False, True]),
}


def _batch(kind, n_out, dtype, rng, n=12):
    """X (n, 6) of dtype and targets as the checked entry points take them: int64 labels for softmax, (n, n_out)
    of dtype otherwise, (n,) for one output."""
    X = rng.standard_normal((n, 6)).astype(dtype)
    if kind in ("softmax", "options", "frozen"):
        return X, rng.integers(0, n_out, n)
    Y = rng.random((n, n_out)).astype(dtype)
    return X, (Y[:, 0].copy() if n_out == 1 else Y)


def _as_lists(*arrays):
    """The same values as Python lists: they take the Python checks (and are converted to the same arrays)."""
    return [a.tolist() if isinstance(a, np.ndarray) else a for a in arrays]


def test_the_array_object_layout_is_known_here():
    assert _validation.ARRAY_OBJECT is not None
    assert fastbp.MLP([3, 2])._fast


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_checked_calls_give_the_results_of_the_python_path(kind, dtype, rng):
    # the same calls on two copies of a network: with arrays as the checked entry points take them, and with the
    # same values as lists, which take the Python checks
    net0 = fastbp.MLP(**NETWORKS[kind], dtype=dtype, seed=1)
    X, Y = _batch(kind, net0.n_out, dtype, rng)
    sw = rng.random(X.shape[0]).astype(dtype)
    results = []
    for a, b, w in (_as_lists(X, Y, sw), (X, Y, sw)):
        net = copy.deepcopy(net0)
        loss, g = net.value_and_grad(a, b)
        g2 = np.full_like(g, 0.5)
        loss2, _ = net.value_and_grad(a, b, out=g2, accumulate=True, scale=0.25, sample_weight=w)
        P = net.predict(a)
        trainer = Trainer(net, fastbp.SGD(0.1, momentum=0.5), progress=False)
        steps = [trainer.train_step(a, b), trainer.train_step(a, b, sample_weight=w), trainer.train_step(a, b)]
        metrics = trainer.evaluate(a, b), trainer.evaluate(a, b, sample_weight=w)
        results.append((loss, g, loss2, g2, P, steps, metrics, net.params, net.buffers))
    for python, checked in zip(*results, strict=True):
        if isinstance(python, np.ndarray):
            np.testing.assert_array_equal(checked, python)
        else:
            assert checked == python


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_flat_objective_takes_the_checked_call(dtype, rng, monkeypatch):
    net = fastbp.MLP([6, 9, 4], dtype=dtype, seed=0)
    X, y = _batch("softmax", 4, dtype, rng)
    objective = fastbp.FlatObjective(net, X, y)  # validates the data once
    theta = net.params.astype(np.float64) * 0.5
    objective(theta)  # the first call sizes the workspace through the Python path
    monkeypatch.setattr(_validation, "check_finite", lambda *args: pytest.fail("the Python checks ran"))
    loss, g = objective(theta)
    monkeypatch.undo()
    ref_loss, ref_g = copy.deepcopy(net).value_and_grad(X, y)
    assert loss == ref_loss and g.dtype == np.float64
    np.testing.assert_array_equal(g, ref_g.astype(np.float64))
    np.testing.assert_array_equal(net.params, theta.astype(dtype))
    assert objective(theta)[1] is not g  # a new array each call: scipy keeps references
    assert objective.n_calls == 3


def test_a_copy_of_a_flat_objective_reads_its_own_data(rng):
    # The checked call takes the batch and the float32 gradient buffer by address: a copy (deep copy, pickle) that
    # kept the original's addresses read the original's data and wrote its buffer, or freed memory.
    import pickle

    net = fastbp.MLP([6, 9, 4], seed=0)
    X, y = _batch("softmax", 4, "float32", rng)
    original = fastbp.FlatObjective(net, X, y)
    theta = net.params.astype(np.float64)
    original(theta)
    for copied in (copy.deepcopy(original), pickle.loads(pickle.dumps(original))):
        copied(theta)  # sizes the copied network's workspace (the Python path)
        copied.X[...] = 0.0  # its own data, now different from the original's
        grad_before = original._grad.copy()
        loss, g = copied(theta)
        np.testing.assert_array_equal(original._grad, grad_before)
        ref_loss, ref_g = copy.deepcopy(net).value_and_grad(np.zeros_like(X), y)
        assert loss == ref_loss
        np.testing.assert_array_equal(g, ref_g.astype(np.float64))


def test_a_flat_objectives_data_cannot_be_replaced(rng):
    # the compiled call reads the data at the addresses taken once: another array there (float32 in a float64
    # network, fewer columns, labels out of range) would be read as the old one's shape and dtype
    net = fastbp.MLP([6, 9, 4], dtype="float64", seed=0)
    X, y = _batch("softmax", 4, "float64", rng)
    objective = fastbp.FlatObjective(net, X, y)
    others = (("X", X[:, :3].astype(np.float32)), ("labels", np.full(12, 7)), ("Y2d", X), ("sw", y))
    for name, other in (*others, ("net", fastbp.MLP([6, 9, 4], dtype="float32"))):
        with pytest.raises(AttributeError):
            setattr(objective, name, other)
    theta = net.params.astype(np.float64)
    assert objective(theta)[0] == copy.deepcopy(net).value_and_grad(X, y)[0]


def test_a_label_changed_after_a_flat_objective_is_built_does_not_reach_it(rng):
    # the labels index the outputs in compiled code: one set out of range in the caller's array read outside the
    # buffers (a segmentation fault at 10**12); the objective keeps a read-only copy
    net = fastbp.MLP([6, 9, 4], dtype="float64", seed=0)
    X, y = _batch("softmax", 4, "float64", rng)
    y = y.astype(np.int64)
    objective = fastbp.FlatObjective(net, X, y)
    theta = net.params.astype(np.float64)
    expected = objective(theta)
    y[:] = 10**12
    loss, g = objective(theta)
    assert loss == expected[0]
    np.testing.assert_array_equal(g, expected[1])
    assert not objective.labels.flags.writeable and not np.shares_memory(objective.labels, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_flat_objective_refuses_theta_it_cannot_cast_exactly_as_the_python_checks(dtype, rng):
    net = fastbp.MLP([6, 9, 4], dtype=dtype, seed=0)
    X, y = _batch("softmax", 4, dtype, rng)
    objective = fastbp.FlatObjective(net, X, y)
    before = net.params.copy()
    complex_theta = net.params.astype(np.complex128)
    with pytest.raises(TypeError, match="theta must hold real numbers"):
        objective(complex_theta)
    if dtype == "float32":  # finite in float64, infinite in the network's dtype
        with pytest.raises(ValueError, match="theta holds values too large for float32"):
            objective(np.full(net.n_params, 1e39))
    np.testing.assert_array_equal(net.params, before)
    assert objective.n_calls == 0


def test_the_common_calls_take_no_python_checks(rng, monkeypatch):
    net = fastbp.MLP([6, 9, 4], seed=0)
    X, y = _batch("softmax", 4, "float32", rng)
    trainer = Trainer(net, fastbp.Adam(), progress=False)
    trainer.train_step(X, y)  # the first step sets the divergence limit and sizes the buffers, in Python

    def refuse(*args, **kwargs):
        raise AssertionError("the Python checks ran")

    for name in ("check_X", "check_targets", "check_sample_weight", "check_out", "check_finite", "as_array"):
        monkeypatch.setattr(_validation, name, refuse)
    g = np.empty_like(net.params)
    net.value_and_grad(X, y, out=g)
    net.value_and_grad(X, y, sample_weight=np.ones(12, np.float32))
    net.predict(X)
    trainer.evaluate(X, y)
    trainer.train_step(X, y)
    with pytest.raises(AssertionError, match="Python checks"):  # and the others do take them
        net.predict(X.astype(np.float64))


def test_the_python_layer_passes_each_entry_point_its_declared_types(rng, monkeypatch):
    # The entry points are called through their compiled functions (kernels/checked.py, Entries), which convert an
    # argument of another type silently (a float to an int64) instead of compiling for it: every argument of every
    # call must have the declared type.
    import numba

    from fastbp.kernels import checked

    seen = set()

    class Checking:
        def __init__(self, entries):
            self.entries = entries

        def __getattr__(self, name):
            function = getattr(self.entries, name)
            declared = (self.entries._marker_type, *checked._ARGUMENTS[name][1])

            def call(*args):
                assert tuple(numba.typeof(a) for a in args) == declared, name
                seen.add(name)
                return function(*args)

            return call

    for dtype, options in (("float32", {}), ("float64", dict(norm="layer", dropout=0.1))):
        net = fastbp.MLP([6, 9, 4], dtype=dtype, seed=0, **options)
        monkeypatch.setattr(net, "_entries", Checking(net._entries))
        X, y = _batch("softmax", 4, dtype, rng)
        trainer = Trainer(net, fastbp.SGD(0.1, momentum=0.9, clip_norm=1.0), progress=False)
        for _ in range(3):  # the first step takes the Python path
            trainer.train_step(X, y, sample_weight=np.ones(12, dtype))
        trainer.evaluate(X, y)
        net.value_and_grad(X, y, out=np.empty_like(net.params), scale=0.5)
        net.predict(X)
        objective = fastbp.FlatObjective(net, X, y)
        objective(net.params.astype(np.float64))
        objective(net.params.astype(np.float64))
    assert seen == set(checked._ARGUMENTS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_finite_test_of_the_entry_points_finds_every_non_finite_value(dtype):
    # _all_finite sums x * 0 with the kernels' fastmath flags: were x * 0 folded to 0, nothing would be found
    from numba import njit

    from fastbp._config import FASTMATH
    from fastbp.kernels.checked import _all_finite

    all_finite = njit(fastmath=set(FASTMATH), error_model="numpy")(lambda a: _all_finite(a, a))
    big = np.finfo(dtype).max
    for n in (0, 1, 15, 16, 17, 33, 2049):  # around the vector widths and their remainders
        assert all_finite(np.full(n, big, dtype)) and all_finite(np.full(n, -big, dtype))  # no overflow
        for bad in (np.nan, np.inf, -np.inf):
            for i in {0, n // 2, n - 1} if n else ():
                a = np.ones(n, dtype)
                a[i] = bad
                assert not all_finite(a), (n, bad, i)
    # float64 values checked for a float32 network: one that the cast makes infinite is not finite there
    as_float32 = njit(fastmath=set(FASTMATH), error_model="numpy")(lambda a: _all_finite(a, np.float32(0)))
    assert as_float32(np.full(33, 3e38)) and not as_float32(np.where(np.arange(33) == 20, 1e39, 1.0))


def _error(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return type(info.value), str(info.value)


def _strided(a):
    """The same values, not C-contiguous: they take the Python checks."""
    if a.ndim == 2:
        return np.asfortranarray(a) if a.shape[1] > 1 else np.repeat(a, 2, axis=0)[::2]
    return np.repeat(a, 2)[::2]


BAD_BATCHES = {
    "nan in X": lambda X, y, w: (np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X), y, w),
    "inf in X": lambda X, y, w: (np.where(np.arange(X.size).reshape(X.shape) == 3, -np.inf, X), y, w),
    "label too large": lambda X, y, w: (X, np.where(np.arange(y.size) == 2, 4, y), w),
    "negative label": lambda X, y, w: (X, np.where(np.arange(y.size) == 2, -1, y), w),
    "too few labels": lambda X, y, w: (X, y[:-1], w),
    "too few rows": lambda X, y, w: (X[:-1], y, w),
    "wrong width": lambda X, y, w: (np.hstack([X, X[:, :1]]), y, w),
    "negative weight": lambda X, y, w: (X, y, np.where(np.arange(w.size) == 0, -1.0, w).astype(w.dtype)),
    "zero weights": lambda X, y, w: (X, y, np.zeros_like(w)),
    "nan weight": lambda X, y, w: (X, y, np.where(np.arange(w.size) == 0, np.nan, w).astype(w.dtype)),
    "too few weights": lambda X, y, w: (X, y, w[:-1]),
    "empty X": lambda X, y, w: (X[:0], y[:0], w[:0]),
}


@pytest.mark.parametrize("bad", sorted(BAD_BATCHES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bad_batches_raise_as_the_python_checks_and_write_nothing(bad, dtype, rng):
    net = fastbp.MLP([6, 9, 4], dtype=dtype, seed=0)
    X, y = _batch("softmax", 4, dtype, rng)
    w = rng.random(X.shape[0]).astype(dtype)
    trainer = Trainer(net, fastbp.SGD(0.1), progress=False)
    trainer.train_step(X, y)  # the checked step is ready from the second call
    g = np.full_like(net.params, 7.0)
    before = net.params.copy()
    Xb, yb, wb = BAD_BATCHES[bad](X, y, w)
    calls = {
        "value_and_grad": lambda a, b, c: net.value_and_grad(a, b, out=g, sample_weight=c),
        "train_step": lambda a, b, c: trainer.train_step(a, b, sample_weight=c),
        "evaluate": lambda a, b, c: trainer.evaluate(a, b, sample_weight=c),
    }
    if "X" in bad or "width" in bad:
        calls["predict"] = lambda a, b, c: net.predict(a)
    for name, call in calls.items():
        expected = _error(lambda: call(_strided(Xb), _strided(yb), _strided(wb)))  # noqa: B023
        assert _error(lambda: call(Xb, yb, wb)) == expected, name  # noqa: B023
        np.testing.assert_array_equal(net.params, before)
        assert (g == 7.0).all()
    assert trainer.optimizer.t == 1


def test_bad_out_arrays_raise_as_the_python_checks(rng):
    net = fastbp.MLP([6, 9, 4], seed=0)
    X, y = _batch("softmax", 4, "float32", rng)
    net.value_and_grad(X, y)
    frozen = np.zeros_like(net.params)
    frozen.flags.writeable = False
    outs = {
        "the parameters": net.params,
        "a view of them": net.params[:],
        "read-only": frozen,
        "another dtype": np.zeros(net.n_params),
        "too short": np.zeros(net.n_params - 1, np.float32),
        "2-D": np.zeros((1, net.n_params), np.float32),
        "strided": np.zeros(2 * net.n_params, np.float32)[::2],
        "a list": [0.0] * net.n_params,
    }
    before = net.params.copy()
    for name, out in outs.items():
        kind, message = _error(lambda: net.value_and_grad(X, y, out=out))  # noqa: B023
        assert (kind, message) == _error(lambda: net.value_and_grad(X.tolist(), y, out=out)), name  # noqa: B023
        np.testing.assert_array_equal(net.params, before)


def test_batch_norm_refuses_one_row_in_training_as_the_python_checks(rng):
    net = fastbp.MLP([6, 8, 4], norm="batch", seed=0)
    X, y = _batch("softmax", 4, "float32", rng)
    trainer = Trainer(net, fastbp.SGD(0.1), progress=False)
    trainer.train_step(X, y)
    for call in (lambda a, b: net.value_and_grad(a, b), lambda a, b: trainer.train_step(a, b)):
        assert _error(lambda: call(X[:1], y[:1])) == _error(lambda: call(X[:1].tolist(), y[:1].tolist()))  # noqa: B023
    assert net.predict(X[:1]).shape == (1, 4)  # evaluation uses the running statistics: one row is fine


def test_flat_objective_refuses_bad_theta_as_the_python_checks(rng):
    net = fastbp.MLP([6, 9, 4], seed=0)
    objective = fastbp.FlatObjective(net, *_batch("softmax", 4, "float32", rng))
    theta = net.params.astype(np.float64)
    objective(theta)
    before = net.params.copy()
    for bad in (np.where(np.arange(theta.size) == 5, np.nan, theta), theta[:-1], np.vstack([theta, theta])):
        assert _error(lambda: objective(bad)) == _error(lambda: objective(bad.tolist()))  # noqa: B023
        np.testing.assert_array_equal(net.params, before)
    assert objective.n_calls == 1


def test_train_step_follows_changes_of_the_optimizer_between_calls(rng):
    X, y = _batch("softmax", 4, "float32", rng)
    runs = []
    for data in ((X, y), _as_lists(X, y)):
        net = fastbp.MLP([6, 9, 4], seed=0)
        opt = fastbp.SGD(0.1)
        trainer = Trainer(net, opt, progress=False)
        losses = [trainer.train_step(*data), trainer.train_step(*data)]
        opt.lr = 0.05
        losses.append(trainer.train_step(*data))
        opt.momentum = 0.9  # a state row appears: allocated by the Python path, and the step count restarts
        losses += [trainer.train_step(*data), trainer.train_step(*data)]
        opt.weight_decay = 0.01
        opt.schedule = fastbp.optim.StepDecay(1, gamma=0.5)
        losses.append(trainer.train_step(*data))
        opt.schedule.gamma = 0.1
        losses.append(trainer.train_step(*data))
        trainer.optimizer = fastbp.Adam(0.01)
        losses += [trainer.train_step(*data), trainer.train_step(*data)]
        net.set_trainable(0, False)
        losses.append(trainer.train_step(*data))
        runs.append((losses, net.params.copy(), trainer.optimizer.t))
    assert runs[0][0] == runs[1][0] and runs[0][2] == runs[1][2]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_a_cosine_schedule_without_length_is_refused_by_every_train_step(rng):
    X, y = _batch("softmax", 4, "float32", rng)
    trainer = Trainer(fastbp.MLP([6, 9, 4]), fastbp.SGD(0.1, schedule="cosine"), progress=False)
    for _ in range(2):
        with pytest.raises(ValueError, match="Cosine"):
            trainer.train_step(X, y)


def test_divergence_in_a_checked_step_is_handled_as_in_the_python_path(rng):
    X, y = _batch("softmax", 4, "float32", rng)
    outcomes = []
    for data in ((X, y), _as_lists(X, y)):
        net = fastbp.MLP([6, 9, 4], seed=0)
        trainer = Trainer(net, fastbp.SGD(1e4), progress=False)
        trainer.train_step(*data)
        with pytest.raises(fastbp.DivergenceError) as info:
            for _ in range(20):
                trainer.train_step(*data)
        outcomes.append((str(info.value), net.params.copy(), trainer.optimizer.t))
    assert outcomes[0][0] == outcomes[1][0] and outcomes[0][2] == outcomes[1][2] == 0
    np.testing.assert_array_equal(outcomes[0][1], outcomes[1][1])


def test_subclasses_that_override_a_step_method_keep_it(rng):
    class Counting(Trainer):
        calls = 0

        def _before_step(self):
            Counting.calls += 1

    X, y = _batch("softmax", 4, "float32", rng)
    trainer = Counting(fastbp.MLP([6, 9, 4]), fastbp.SGD(0.1), progress=False)
    for _ in range(3):
        trainer.train_step(X, y)
    assert Counting.calls == 3 and not trainer._checked_step and Trainer(fastbp.MLP([6, 3]))._checked_step
