"""The compiled epoch loop and the Trainer around it."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import RTOL, make_batch, rel_err

import fastbp
from fastbp import reference


@pytest.mark.parametrize("n", [64, 70])  # 70: the last batch of each epoch is smaller (70 = 4 * 16 + 6)
@pytest.mark.parametrize("opt", [lambda: fastbp.SGD(0.1, momentum=0.9, nesterov=True), lambda: fastbp.AdamW(0.01)])
def test_epoch_loop_equals_the_per_step_path(n, opt, rng):
    net_a = fastbp.MLP([6, 10, 4], "tanh", dtype="float64", seed=2)
    net_b = fastbp.MLP([6, 10, 4], "tanh", dtype="float64", seed=2)
    X, y = make_batch(net_a, n, rng)
    fastbp.Trainer(net_a, opt(), batch_size=16, seed=11, progress=False).fit(X, y, epochs=3)
    stepper = fastbp.Trainer(net_b, opt(), batch_size=16, seed=11, progress=False)
    perms = np.random.default_rng(11)  # the trainer's documented shuffling: rng(seed).permutation per epoch
    for _ in range(3):
        perm = perms.permutation(n)
        for start in range(0, n, 16):
            idx = perm[start : start + 16]
            stepper.train_step(X[idx], y[idx])
    assert rel_err(net_a.params, net_b.params) <= RTOL["float64"]


def test_epoch_loop_equals_numpy_sgd_with_the_reference_gradient(rng):
    net = fastbp.MLP([5, 7, 3], "sigmoid", dtype="float64", seed=4, l2=0.01)
    shadow = fastbp.MLP([5, 7, 3], "sigmoid", dtype="float64", seed=4, l2=0.01)
    X, y = make_batch(net, 45, rng)
    fastbp.Trainer(net, fastbp.SGD(0.2), batch_size=10, seed=3, progress=False).fit(X, y, epochs=2)
    perms = np.random.default_rng(3)
    for _ in range(2):
        perm = perms.permutation(45)
        for start in range(0, 45, 10):
            idx = perm[start : start + 10]
            shadow.params[:] -= 0.2 * reference.value_and_grad(shadow, X[idx], y[idx])[1]
    assert rel_err(net.params, shadow.params) <= RTOL["float64"]


# Batches of consecutive rows are taken as views of the data, the others are copied (gathered): this order has
# both kinds, runs that do not start at row 0, and a short last batch that ends at the last row.
_MIXED_ORDER = np.concatenate([np.arange(0, 8), np.arange(20, 28), [9, 1, 33, 2, 8, 17, 30, 19], np.arange(42, 48)])


@pytest.mark.parametrize(("output", "weighted"), [("softmax", False), ("identity", True)])
def test_epoch_over_consecutive_and_shuffled_batches_equals_numpy_sgd(output, weighted, rng):
    net = fastbp.MLP([5, 7, 3], "tanh", output=output, dtype="float64", seed=4)
    shadow = fastbp.MLP([5, 7, 3], "tanh", output=output, dtype="float64", seed=4)
    X, y = make_batch(net, 48, rng)
    w = rng.random(48) + 0.5 if weighted else None
    trainer = fastbp.Trainer(net, fastbp.SGD(0.2), batch_size=8, progress=False)
    Xc, Y2d, labels = net.check_batch(X, y)
    sw = w if weighted else np.zeros(0)
    status, _, steps = trainer._run(Xc, Y2d, labels, _MIXED_ORDER, 8, trainer._schedule(None), sw=sw)
    assert (status, steps) == (0, 4)
    for start in range(0, _MIXED_ORDER.size, 8):
        idx = _MIXED_ORDER[start : start + 8]
        grads = reference.value_and_grad(shadow, X[idx], y[idx], sample_weight=None if w is None else w[idx])[1]
        shadow.params[:] -= 0.2 * grads
    assert rel_err(net.params, shadow.params) <= RTOL["float64"]


def test_fit_learns_digits_and_records_history():
    X, y = fastbp.data.load_digits()
    X_train, X_test, y_train, y_test = fastbp.data.prepare(X, y, seed=0)
    net = fastbp.MLP([64, 64, 10], seed=0)
    trainer = fastbp.Trainer(net, fastbp.Adam(3e-3), batch_size=32, progress=False)
    history = trainer.fit(X_train, y_train, epochs=8, validation_data=(X_test, y_test))
    assert len(history["loss"]) == 8 and history["loss"][-1] < history["loss"][0] / 5
    assert history["val_accuracy"][-1] >= 0.94
    assert len(history["grad_norm"][0]) == 2 and all(g > 0 for g in history["grad_norm"][0])
    assert all(t > 0 for t in history["epoch_time"])
    result = trainer.evaluate(X_test, y_test)
    accuracy = np.mean(net.predict(X_test).argmax(axis=1) == y_test)
    assert result["accuracy"] == pytest.approx(accuracy)
    assert result["loss"] == pytest.approx(reference.value_and_grad(net, X_test, y_test)[0], rel=1e-5)
    assert result["accuracy"] == history["val_accuracy"][-1]


def test_evaluate_multilabel_subset_accuracy_and_regression(rng):
    net = fastbp.MLP([4, 3], output="sigmoid", dtype="float64")
    X = rng.standard_normal((50, 4))
    Y = (rng.random((50, 3)) > 0.5).astype(float)
    result = fastbp.Trainer(net, progress=False).evaluate(X, Y)
    expected = np.mean(np.all((net.predict(X) > 0.5) == (Y > 0.5), axis=1))
    assert result["accuracy"] == pytest.approx(expected)
    assert result["loss"] == pytest.approx(reference.value_and_grad(net, X, Y)[0], rel=1e-12)
    reg = fastbp.MLP([4, 2], output="identity", dtype="float64")
    Yr = rng.standard_normal((50, 2))
    result = fastbp.Trainer(reg, progress=False).evaluate(X, Yr)
    assert result["accuracy"] is None
    assert result["loss"] == pytest.approx(reference.value_and_grad(reg, X, Yr)[0], rel=1e-12)


def test_divergence_stops_with_a_clear_error_and_finite_parameters(rng):
    net = fastbp.MLP([64, 32, 10], dtype="float32")
    X, y = fastbp.data.load_digits()
    trainer = fastbp.Trainer(net, fastbp.SGD(lr=1e6), progress=False)
    with pytest.raises(fastbp.DivergenceError, match=r"diverged in epoch 1: the loss exceeded .* last step whose"):
        trainer.fit(X, y, epochs=5)
    assert np.isfinite(net.params).all()
    loss, _ = net.value_and_grad(X, y)
    assert np.isfinite(loss)


def test_the_divergence_message_counts_one_step_in_the_singular():
    # the first batch of 64 rows steps with lr = 1e6; the second batch's loss exceeds the bound
    X, y = fastbp.data.load_digits()
    trainer = fastbp.Trainer(fastbp.MLP([64, 32, 10], seed=0), fastbp.SGD(lr=1e6), batch_size=64, progress=False)
    with pytest.raises(fastbp.DivergenceError, match=r"exceeded .* after 1 step of this call \(mean loss"):
        trainer.fit(X[:128], y[:128], epochs=1)


def test_divergence_in_train_step_keeps_the_last_finite_parameters(rng):
    net = fastbp.MLP([4, 8, 3], dtype="float64")
    X, y = make_batch(net, 16, rng)
    trainer = fastbp.Trainer(net, fastbp.SGD(lr=1e30), progress=False)
    snapshots = []
    with pytest.raises(fastbp.DivergenceError):
        for _ in range(50):
            snapshots.append(net.params.copy())
            trainer.train_step(X, y)
    # the parameters kept are those of an earlier call, whose (compiled) loss was finite; with lr = 1e30 they
    # may be huge, so the loss is checked by the path that trained them, not by the NumPy reference
    assert np.isfinite(net.params).all()
    assert np.isfinite(net.value_and_grad(X, y)[0])
    assert any(np.array_equal(net.params, s) for s in snapshots[:-1])


@pytest.mark.parametrize("as_lists", [False, True])  # the compiled checked step, and the Python path
def test_repeated_diverging_train_steps_keep_the_same_parameters(as_lists, rng):
    # an outlier batch after three good steps: the first diverging call goes back to the parameters of the last
    # step whose loss was finite (before the third update); the calls after it keep those, whatever their number
    net = fastbp.MLP([4, 6, 1], output="identity", dtype="float64", seed=0)
    trainer = fastbp.Trainer(net, fastbp.SGD(0.01), progress=False)
    X, y = rng.standard_normal((8, 4)), rng.standard_normal(8)
    before = []
    for _ in range(3):
        before.append(net.params.copy())
        trainer.train_step(X, y)
    outlier = (X.tolist(), (y * 1e5).tolist()) if as_lists else (X, y * 1e5)
    for _ in range(3):
        with pytest.raises(fastbp.DivergenceError, match="exceeded"):
            trainer.train_step(*outlier)
        np.testing.assert_array_equal(net.params, before[2])
    trainer.train_step(X, y)  # and training goes on from them
    assert np.isfinite(net.params).all() and not np.array_equal(net.params, before[2])


def test_early_stopping_restores_the_best_parameters(rng):
    net = fastbp.MLP([6, 16, 3], seed=1, dtype="float64")
    X, y = make_batch(net, 60, rng)
    X_val, y_val = make_batch(net, 30, rng)  # unrelated labels: validation loss soon gets worse
    seen = []

    def remember(trainer, epoch, logs):
        seen.append((logs["val_loss"], trainer.net.params.copy()))

    trainer = fastbp.Trainer(
        net, fastbp.Adam(0.05), batch_size=8, progress=False, callbacks=[remember], early_stopping=True, patience=3
    )
    history = trainer.fit(X, y, epochs=200, validation_data=(X_val, y_val))
    assert len(history["loss"]) < 200
    best = min(range(len(seen)), key=lambda k: seen[k][0])
    assert len(seen) == best + 1 + 3  # stopped after `patience` epochs without improvement
    np.testing.assert_array_equal(net.params, seen[best][1])


def test_early_stopping_restores_the_running_statistics_of_the_best_epoch(rng):
    net = fastbp.MLP([6, 16, 16, 3], seed=1, dtype="float64", norm="batch", residual=[False, True])
    X, y = make_batch(net, 60, rng)
    X_val, y_val = make_batch(net, 30, rng)
    seen = []

    def remember(trainer, epoch, logs):
        seen.append((logs["val_loss"], trainer.net.params.copy(), trainer.net.buffers.copy()))

    trainer = fastbp.Trainer(
        net, fastbp.Adam(0.05), batch_size=8, progress=False, callbacks=[remember], early_stopping=True, patience=3
    )
    trainer.fit(X, y, epochs=200, validation_data=(X_val, y_val))
    best = min(range(len(seen)), key=lambda k: seen[k][0])
    assert best < len(seen) - 1
    np.testing.assert_array_equal(net.params, seen[best][1])
    np.testing.assert_array_equal(net.buffers, seen[best][2])
    assert not np.array_equal(net.buffers, seen[-1][2])


@pytest.mark.parametrize("lr", [1e30, 1e300])
def test_a_diverged_step_leaves_the_running_statistics_finite_and_as_before_it(rng, lr):
    # lr 1e30: the loss diverges; 1e300: the gradient overflows first (no update is made)
    net = fastbp.MLP([4, 8, 8, 3], dtype="float64", norm="batch")
    X, y = make_batch(net, 16, rng)
    trainer = fastbp.Trainer(net, fastbp.SGD(lr=lr), progress=False)
    snapshots = []
    with pytest.raises(fastbp.DivergenceError):
        for _ in range(50):
            snapshots.append(net.buffers.copy())
            trainer.train_step(X, y)
    assert np.isfinite(net.buffers).all()
    np.testing.assert_array_equal(net.buffers, snapshots[-1])  # the call that diverged changed nothing


def test_callback_can_stop_and_validation_split_is_held_out(rng):
    net = fastbp.MLP([6, 5, 3])
    X, y = make_batch(net, 100, rng)
    history = fastbp.Trainer(net, progress=False, callbacks=[lambda tr, epoch, logs: epoch == 2]).fit(
        X, y, epochs=10, validation_split=0.25
    )
    assert len(history["loss"]) == 3 and len(history["val_loss"]) == 3


@pytest.mark.parametrize("labels", [True, False])
def test_validation_split_holds_out_the_rows_of_split_indices(rng, labels):
    # one split for the command line, fastbp.data.prepare and fit: the held-out rows are those of split_indices
    net = fastbp.MLP([6, 5, 3])
    X, y = make_batch(net, 40, rng, labels=labels)
    trainer = fastbp.Trainer(net, batch_size=8, progress=False, seed=5)
    history = trainer.fit(X, y, epochs=1, validation_split=0.3)
    classes = y if labels else y.argmax(axis=1)  # one-hot rows are split as their labels
    _, held = fastbp.data.split_indices(40, 0.3, seed=5, labels=fastbp.data.stratification(classes))
    assert history["val_loss"][0] == trainer.evaluate(X[held], y[held])["loss"]


def test_a_classifier_s_one_hot_targets_are_split_as_its_labels(rng):
    # one-hot rows were split at random: a class could miss from the held-out part
    net = fastbp.MLP([6, 5, 3], seed=0)
    X = rng.standard_normal((40, 6))
    y = np.repeat([0, 1, 2], [30, 5, 5])
    histories = []
    for targets in (y, np.eye(3)[y]):
        trainer = fastbp.Trainer(fastbp.MLP([6, 5, 3], seed=0), batch_size=8, progress=False, seed=5)
        histories.append(trainer.fit(X, targets, epochs=2, validation_split=0.25))
    assert histories[0]["val_loss"] == histories[1]["val_loss"] and histories[0]["loss"] == histories[1]["loss"]
    # targets that are not one-hot (a regression's, soft labels) are split at random, as before
    assert net.output == "softmax"
    soft = np.full((40, 3), 1 / 3)
    fastbp.Trainer(net, batch_size=8, progress=False).fit(X, soft, epochs=1, validation_split=0.25)


def test_what_a_callback_sets_on_the_optimizer_applies_from_the_next_epoch(rng):
    # a schedule set from a callback was ignored for the rest of the fit, another optimizer's rate logged as the old
    net = fastbp.MLP([6, 5, 3], seed=0)
    X, y = make_batch(net, 32, rng)

    def run(callback, opt):
        trainer = fastbp.Trainer(fastbp.MLP([6, 5, 3], seed=0), opt, batch_size=32, progress=False)
        trainer.callbacks = [callback] if callback else []
        history = trainer.fit(X, y, epochs=3)
        return history["lr"], trainer.net.params

    def set_schedule(trainer, epoch, logs):
        if epoch == 0:
            trainer.optimizer.schedule = fastbp.optim.StepDecay(1, 0.1)

    lrs, _ = run(set_schedule, fastbp.SGD(0.1))
    assert lrs == pytest.approx([0.1, 0.1 * 0.1, 0.1 * 0.01])  # steps 0, 1, 2 of StepDecay(1, 0.1)

    def swap(trainer, epoch, logs):
        if epoch == 0:
            trainer.optimizer = fastbp.SGD(0.5)

    lrs, _ = run(swap, fastbp.Adam(0.01))
    assert lrs == [0.01, 0.5, 0.5]


def test_an_optimizer_state_or_step_count_set_by_hand_is_checked_before_a_step(rng):
    # a Fortran-ordered state was read as C-ordered (parameters NaN, no error), a read-only one written, a negative
    # step count divided by zero in Adam's bias correction
    net = fastbp.MLP([6, 5, 3], seed=0)
    X, y = make_batch(net, 8, rng)
    opt = fastbp.Adam()
    trainer = fastbp.Trainer(net, opt, batch_size=8, progress=False)
    trainer.train_step(X, y)
    trainer.train_step(X, y)  # the compiled fast path from here on
    before, state = net.params.copy(), opt.state.copy()
    read_only = opt.state.copy()
    read_only.flags.writeable = False
    cases = [
        ("state", np.asfortranarray(state), ValueError, "C-contiguous"),
        ("state", read_only, ValueError, "not writeable"),
        ("state", [[0.0]], TypeError, "2-D NumPy array"),
        ("t", -1, ValueError, r"optimizer.t must be >= 0"),
        ("t", 2**63, ValueError, r"optimizer.t must be <= "),
        ("t", None, TypeError, "optimizer.t must be an integer"),
        ("t", 2.0, TypeError, "optimizer.t must be an integer"),
    ]
    for name, value, error, message in cases:
        setattr(opt, name, value)
        for step in (lambda: trainer.train_step(X, y), lambda: trainer.fit(X, y, epochs=1)):
            with pytest.raises(error, match=message):
                step()
            np.testing.assert_array_equal(net.params, before)
        opt.state, opt.t = state.copy(), 2
    np.testing.assert_array_equal(read_only, state)  # never written
    opt.t = np.int64(2)  # a NumPy integer is an integer
    trainer.train_step(X, y)
    assert opt.t == 3 and type(opt.t) is int


def test_the_network_of_a_trainer_cannot_be_replaced_and_batch_size_is_checked_at_fit(rng):
    # a larger network set as trainer.net was trained in the buffers of the first: a segmentation fault
    net = fastbp.MLP([4, 3], dtype="float64")
    trainer = fastbp.Trainer(net, fastbp.SGD(0.1), progress=False)
    with pytest.raises(AttributeError):
        trainer.net = fastbp.MLP([4, 2000, 3], dtype="float64")
    assert trainer.net is net
    X, y = make_batch(net, 8, rng)
    for bad, error in ((0, ValueError), (-3, ValueError), (2.5, TypeError)):
        trainer.batch_size = bad
        with pytest.raises(error, match="batch_size"):
            trainer.fit(X, y, epochs=1)


def test_fit_rejects_bad_arguments(rng):
    net = fastbp.MLP([3, 2])
    X, y = make_batch(net, 10, rng)
    trainer = fastbp.Trainer(net, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        trainer.fit(X, y, epochs=0)
    with pytest.raises(ValueError, match="validation_split"):
        trainer.fit(X, y, validation_split=1.0)
    with pytest.raises(ValueError, match="not both"):
        trainer.fit(X, y, validation_data=(X, y), validation_split=0.2)
    # a stratified split needs a row of each of the 2 classes in each part; told in fastbp's words
    stratified = np.tile([0, 1], 5)
    for fraction, held, kept in ((0.01, 1, 9), (0.95, 10, 0)):
        with pytest.raises(
            ValueError,
            match=rf"validation_split={fraction} of 10 rows holds out {held} and trains on "
            rf"{kept}: each part needs at least 2 rows, one per class \(stratified\)",
        ):
            trainer.fit(X, stratified, validation_split=fraction)
    with pytest.raises(TypeError, match="validation_data"):
        trainer.fit(X, y, validation_data=X)
    with pytest.raises(ValueError, match="batch_size"):
        fastbp.Trainer(net, batch_size=0)
    with pytest.raises(TypeError, match="optimizer"):
        fastbp.Trainer(net, optimizer="adam")


def test_frozen_layers_keep_their_values_exactly(rng):
    net = fastbp.MLP([8, 16, 16, 4], seed=0)
    net.set_trainable(0, False)
    frozen = net.coefs[0].copy(), net.intercepts[0].copy()
    X, y = make_batch(net, 200, rng)
    fastbp.Trainer(net, fastbp.AdamW(0.01, weight_decay=0.1), progress=False).fit(X, y, epochs=3)
    np.testing.assert_array_equal(net.coefs[0], frozen[0])
    np.testing.assert_array_equal(net.intercepts[0], frozen[1])
    assert not np.array_equal(net.coefs[1], fastbp.MLP([8, 16, 16, 4], seed=0).coefs[1])


EPOCH_ALLOCATIONS = textwrap.dedent(
    """
    import numpy as np
    import fastbp
    from fastbp import _onednn
    from numba.core.runtime import rtsys

    X, y = fastbp.data.load_digits()
    precisions = ["float32"] + (["bfloat16"] if _onednn.info()["reason"] is None else [])
    counts = []
    options = ({}, {"norm": "batch", "residual": [False, True], "dropout": 0.1},
               {"norm": ["layer", "batch"], "residual": [False, True], "dropout": [0.0, 0.3]})
    for precision in precisions:
        for opt, option in zip((fastbp.SGD(0.01, momentum=0.9), fastbp.Adam(), fastbp.SGD(0.1)), options):
            net = fastbp.MLP([64, 32, 32, 10], matmul_precision=precision, **option)
            trainer = fastbp.Trainer(net, opt, batch_size=50, progress=False)
            # X[:50] takes the Python path (float64 data, a float32 network); Xb the checked entry points
            Xb, yb = np.ascontiguousarray(X[:50], dtype=net.dtype), y[:50]

            def calls(Xs):
                trainer.train_step(Xs, yb)
                net.value_and_grad(Xs, yb, out=trainer._grads)
                net.predict(Xs)
                trainer.evaluate(Xs, yb)

            trainer.fit(X, y, epochs=1)  # warm-up
            calls(Xb)
            calls(Xb)
            before = rtsys.get_allocation_stats()
            trainer.fit(X, y, epochs=3)
            calls(X[:50])
            calls(Xb)
            counts.append(rtsys.get_allocation_stats().alloc - before.alloc)
    print(sum(counts), len(counts))
    """
)


def test_a_full_epoch_makes_no_runtime_allocation():
    # ... nor a train_step, value_and_grad or predict, in every matmul precision available here, with and without
    # layer options (batch and layer norm, residual connections, dropout)
    env = {**os.environ, "NUMBA_NRT_STATS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", EPOCH_ALLOCATIONS], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    allocations, runs = map(int, proc.stdout.split())
    assert allocations == 0 and runs in (3, 6)


def test_divergence_without_a_factor_and_optimizer_reset(rng):
    X, y = fastbp.data.load_digits()
    net = fastbp.MLP([64, 16, 10])
    opt = fastbp.SGD(lr=1e30, momentum=0.9)
    trainer = fastbp.Trainer(net, opt, divergence_factor=None, progress=False)
    with pytest.raises(fastbp.DivergenceError, match="NaN or infinite"):
        trainer.fit(X, y, epochs=3)
    assert np.isfinite(net.params).all()
    assert opt.t == 0 and opt.state is None  # reset: a retry with a lower rate starts clean
    opt.lr = 1e-3
    history = trainer.fit(X, y, epochs=2)
    assert history["loss"][-1] < history["loss"][0]


def test_sorted_data_does_not_trigger_a_false_divergence(rng):
    # A regression target sorted ascending: the first rows have far smaller losses than the rest; the divergence
    # reference loss is taken over rows spread across the data, not the first ones.
    X = np.sort(rng.standard_normal((5000, 3)), axis=0)
    y = np.concatenate([rng.random(1024), 1e2 * np.arange(3976.0)])[:, None]
    net = fastbp.MLP([3, 8, 1], output="identity", dtype="float64")
    history = fastbp.Trainer(net, fastbp.Adam(1e-3), progress=False).fit(X, y, epochs=1)
    assert np.isfinite(history["loss"][0])


def test_train_step_applies_the_divergence_factor(rng):
    X, y = fastbp.data.load_digits()
    trainer = fastbp.Trainer(fastbp.MLP([64, 16, 10]), fastbp.SGD(1e6), progress=False)
    with pytest.raises(fastbp.DivergenceError, match="exceeded"):
        for _ in range(10):
            trainer.train_step(X[:64], y[:64])


def test_every_callback_sees_every_epoch_and_history_is_per_fit(rng):
    net = fastbp.MLP([6, 5, 3])
    X, y = make_batch(net, 40, rng)
    seen = []
    trainer = fastbp.Trainer(
        net, progress=False, callbacks=[lambda t, e, logs: e == 1, lambda t, e, logs: seen.append(e)]
    )
    with pytest.warns(UserWarning, match="batch_size=32 is larger than the 30 training rows"):
        first = trainer.fit(X, y, epochs=5, validation_split=0.25)
    assert seen == [0, 1]
    second = trainer.fit(X, y, epochs=3)
    assert first is not second and len(first["loss"]) == 2 and "val_loss" in first
    assert len(second["loss"]) == 2 and "val_loss" not in second  # stopped by the callback at epoch 1 again


def test_float32_gradient_norm_does_not_overflow(rng):
    # gradients around 1e20 are finite in float32, their squares are not: the norm is summed in float64
    X = rng.standard_normal((32, 4)) * 1e10
    y = rng.standard_normal((32, 1)) * 1e10
    net = fastbp.MLP([4, 1], output="identity")
    trainer = fastbp.Trainer(net, fastbp.SGD(1e-3, clip_norm=1.0), progress=False, divergence_factor=None)
    history = trainer.fit(X, y, epochs=1)
    assert np.isfinite(history["grad_norm"][0]).all() and history["grad_norm"][0][0] > 1e18


def test_freezing_a_layer_between_epochs_keeps_it_fixed(rng):
    # The update ping-pongs between two buffers; a layer frozen by a callback must be equal in both from then on.
    net = fastbp.MLP([6, 8, 3], seed=0)
    X, y = make_batch(net, 64, rng)
    snapshots = []

    def freeze_then_watch(trainer, epoch, logs):
        if epoch == 0:
            trainer.net.set_trainable(0, False)
        snapshots.append(trainer.net.coefs[0].copy())

    fastbp.Trainer(net, fastbp.SGD(0.1), batch_size=13, progress=False, callbacks=[freeze_then_watch]).fit(
        X, y, epochs=4
    )
    for later in snapshots[1:]:
        np.testing.assert_array_equal(later, snapshots[0])


def test_changing_momentum_after_creation_resizes_the_state(rng):
    net = fastbp.MLP([4, 5, 3], dtype="float64")
    X, y = make_batch(net, 16, rng)
    opt = fastbp.SGD(0.1)
    trainer = fastbp.Trainer(net, opt, progress=False)
    trainer.train_step(X, y)
    opt.momentum = 0.9  # the state grows a velocity row at the next step
    trainer.train_step(X, y)
    assert opt.state.shape == (1, net.n_params) and np.abs(opt.state).max() > 0
    assert opt.t == 2  # the step count (and a schedule's progress) goes on
    fastbp.Trainer(fastbp.MLP([4, 6, 3], dtype="float64"), opt, progress=False).train_step(X, y)
    assert opt.t == 1  # another network: its steps are counted anew


@pytest.mark.parametrize("optimizer", [lambda: fastbp.SGD(lr=0.1, momentum=0.9), lambda: fastbp.Adam(lr=0.01)])
def test_sample_weights_in_training_equal_repeated_rows(optimizer, rng):
    """A batch with integer weights trains exactly like the batch with each row repeated that many times (a
    weighted mean is a mean over the repeated rows); evaluate weighs loss and accuracy the same way."""
    X = rng.standard_normal((10, 4))
    y = rng.integers(0, 3, 10)
    w = np.array([2, 0, 1, 3, 1, 1, 0, 2, 1, 1])
    idx = np.repeat(np.arange(10), w)
    weighted = fastbp.Trainer(fastbp.MLP([4, 5, 3], dtype="float64", seed=0), optimizer(), progress=False)
    repeated = fastbp.Trainer(fastbp.MLP([4, 5, 3], dtype="float64", seed=0), optimizer(), progress=False)
    for _ in range(3):
        loss_w = weighted.train_step(X, y, sample_weight=w)
        loss_r = repeated.train_step(X[idx], y[idx])
        assert loss_w == pytest.approx(loss_r, rel=1e-12)
    np.testing.assert_allclose(weighted.net.params, repeated.net.params, rtol=1e-12)
    ev_w, ev_r = weighted.evaluate(X, y, sample_weight=w), repeated.evaluate(X[idx], y[idx])
    assert ev_w["loss"] == pytest.approx(ev_r["loss"], rel=1e-12)
    assert ev_w["accuracy"] == pytest.approx(ev_r["accuracy"], rel=1e-12)
    with pytest.warns(UserWarning, match="larger than the 10 training rows"):
        history = weighted.fit(X, y, epochs=2, sample_weight=w)
    assert len(history["loss"]) == 2
    with pytest.raises(ValueError, match="sample_weight"):
        weighted.fit(X, y, sample_weight=-np.ones(10))


def test_a_mini_batch_of_zero_weights_is_skipped(rng):
    """Rows masked by weight 0 can fill a whole mini-batch: its weighted mean is 0/0, so fit takes no step there (as
    fastbp.sklearn and scikit-learn), and equals train_step over the other batches of the same shuffled order."""
    X, y = rng.standard_normal((24, 4)), rng.integers(0, 3, 24)
    w = np.zeros(24)
    w[rng.choice(24, 5, replace=False)] = rng.uniform(0.5, 2.0, 5)
    fitted = fastbp.Trainer(fastbp.MLP([4, 5, 3], dtype="float64", seed=0), fastbp.SGD(0.1), batch_size=3, seed=7)
    fitted.progress = False
    history = fitted.fit(X, y, epochs=1, sample_weight=w)
    stepped = fastbp.Trainer(fastbp.MLP([4, 5, 3], dtype="float64", seed=0), fastbp.SGD(0.1), progress=False)
    perm = np.random.default_rng(7).permutation(24)  # the trainer's order of its first epoch
    losses, rows = [], 0
    for start in range(0, 24, 3):
        idx = perm[start : start + 3]
        if w[idx].sum() > 0:
            losses.append(stepped.train_step(X[idx], y[idx], sample_weight=w[idx]) * 3)
            rows += 3
    assert 0 < len(losses) < 8 and stepped.optimizer.t == fitted.optimizer.t == len(losses)  # some skipped
    np.testing.assert_allclose(fitted.net.params, stepped.net.params, rtol=1e-12)
    assert history["loss"][0] == pytest.approx(sum(losses) / rows, rel=1e-12)  # the mean over the steps' rows


def test_a_deep_copy_of_a_trainer_trains_in_its_own_buffers(rng):
    # The trainer caches its buffers' addresses; a deep copy must not inherit them (it trained in the original's
    # buffers, and could write into freed memory once the original was gone).
    import copy

    net = fastbp.MLP([4, 5, 3], seed=0)
    X = rng.standard_normal((40, 4))
    y = rng.integers(0, 3, 40)
    first = fastbp.Trainer(net, fastbp.SGD(0.1), batch_size=8, progress=False)
    first.fit(X, y, epochs=1)
    second = copy.deepcopy(first)
    before = [a.copy() for a in (first._grads, first._spare, first.net.params)]
    second.fit(X, y, epochs=1)
    for old, now in zip(before, (first._grads, first._spare, first.net.params), strict=True):
        np.testing.assert_array_equal(old, now)
    first.fit(X, y, epochs=1)  # the same epoch (the shuffling generator was copied too): the same parameters
    np.testing.assert_array_equal(first.net.params, second.net.params)


def test_a_last_mini_batch_of_one_row_under_batch_norm_says_what_to_change(rng):
    net = fastbp.MLP([4, 5, 3], norm="batch", seed=0)
    trainer = fastbp.Trainer(net, batch_size=32, progress=False)
    with pytest.raises(ValueError, match=r"\(33 rows in batches of 32\): choose a batch_size that leaves no batch"):
        trainer.fit(rng.standard_normal((33, 4)), rng.integers(0, 3, 33), epochs=1)


def test_one_row_under_batch_norm_gives_no_batch_size_advice(rng):
    # one row is one batch of one row whatever the batch size: the message must not send the user to batch_size
    net = fastbp.MLP([4, 5, 3], norm="batch", seed=0)
    trainer = fastbp.Trainer(net, batch_size=1, progress=False)
    X, y = rng.standard_normal((1, 4)), np.array([1])
    for call in (lambda: trainer.train_step(X, y), lambda: trainer.fit(X, y, epochs=1)):
        with pytest.raises(ValueError, match="has 1 row, but batch norm in training needs batches of at least 2") as e:
            call()
        assert "batch_size" not in str(e.value) and "1 rows" not in str(e.value)


def test_a_copy_of_a_trainer_takes_steps_in_its_own_buffers_and_carries_no_training_rows(rng):
    # train_step's compiled path reads a table of buffer addresses: a copy (deep copy, pickle) that kept the
    # original's table read the original's buffers, or another process's memory after unpickling.
    import copy
    import pickle

    net = fastbp.MLP([4, 5, 3], seed=0)
    X = rng.standard_normal((16, 4)).astype(np.float32)  # the network's dtype: what the compiled path takes
    y = rng.integers(0, 3, 16)
    first = fastbp.Trainer(net, fastbp.SGD(0.1), batch_size=8, progress=False)
    first.train_step(X[:8], y[:8])
    first.train_step(X[8:], y[8:])  # the compiled path, with its table filled
    blob = pickle.dumps(first)
    assert X[:8].tobytes() not in blob and X[8:].tobytes() not in blob
    for second in (copy.deepcopy(first), pickle.loads(blob)):
        before = [a.copy() for a in (first._grads, first._spare, first.net.params, first._Xb)]
        loss = second.train_step(X[:8], y[:8])
        for old, now in zip(before, (first._grads, first._spare, first.net.params, first._Xb), strict=True):
            np.testing.assert_array_equal(old, now)
        expected = copy.deepcopy(first)._train_step(X[:8], y[:8], None)  # the Python path, from the same state
        assert loss == expected


def test_objects_reloaded_as_read_only_memory_maps_write_their_own_copies(rng, tmp_path):
    # joblib sends large arrays to its worker processes as read-only memory maps (joblib.load(mmap_mode="r") does
    # the same here): the buffers that compiled code writes through their addresses were written in place, a
    # segmentation fault. The reloaded objects own writeable copies, and compute what the originals compute.
    import copy

    joblib = pytest.importorskip("joblib")
    X = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    for optimizer in (fastbp.SGD(0.1, momentum=0.9), fastbp.Adam()):
        trainer = fastbp.Trainer(fastbp.MLP([4, 5, 3], seed=0), optimizer, batch_size=8, progress=False)
        trainer.train_step(X[:8], y[:8])
        objective = fastbp.FlatObjective(trainer.net, X, y)
        expected = (copy.deepcopy(trainer).train_step(X[8:], y[8:]), copy.deepcopy(objective)(trainer.net.params))
        joblib.dump((trainer, objective), tmp_path / "objects.joblib")
        trainer2, objective2 = joblib.load(tmp_path / "objects.joblib", mmap_mode="r")
        buffers = (trainer2._spare, trainer2._grads, trainer2._sq_norms, trainer2.optimizer.state)
        assert all(b.flags.writeable for b in (*buffers, objective2._grad))
        assert trainer2.train_step(X[8:], y[8:]) == expected[0]
        loss, grad = objective2(trainer.net.params)
        assert loss == expected[1][0]
        np.testing.assert_array_equal(grad, expected[1][1])
