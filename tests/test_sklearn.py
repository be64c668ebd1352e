"""fastbp.sklearn: scikit-learn's conformance suite, and the same models as scikit-learn's own estimators."""

import warnings

import numpy as np
import pytest
import scipy.optimize
from conftest import FD_RTOL, FD_STEP, SKLEARN_RTOL, rel_err
from sklearn import neural_network as skl
from sklearn.datasets import load_digits, load_iris, load_wine, make_multilabel_classification, make_regression
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import fastbp
from fastbp.flat import FlatObjective, value_and_grad_flat
from fastbp.sklearn import MLPClassifier, MLPRegressor

#: Checks of scikit-learn's suite that do not apply, and why; they are reported as skipped by the suite itself.
NOT_APPLICABLE = {
    "check_array_api_input": "scikit-learn's MLP estimators do not support the Array API",
    "check_classifiers_multilabel_output_format_decision_function": "no decision_function, as in scikit-learn's",
}


@pytest.mark.parametrize("estimator", [MLPClassifier(), MLPRegressor()], ids=type)
def test_scikit_learn_conformance(estimator):
    """scikit-learn's whole estimator suite (``check_estimator``), default parameters: every check passes except
    the listed ones that do not apply to an MLP, which the suite itself skips."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None, on_skip=None)
    assert len(results) >= 50
    problems = {r["check_name"]: repr(r["exception"]) for r in results if r["status"] != "passed"}
    assert set(problems) <= set(NOT_APPLICABLE), problems


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X)[:500], y[:500]


def _fit_both(ours_cls, theirs_cls, X, y, sample_weight=None, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = theirs_cls(**params).fit(X, y, sample_weight=sample_weight)
        ours = ours_cls(**params).fit(X, y, sample_weight=sample_weight)
    return ours, theirs


def _assert_same_model(ours, theirs, X, rtol):
    assert type(ours).__mro__[1:].count(type(theirs)) == 1  # a drop-in: an instance of scikit-learn's class
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.t_ == theirs.t_
    for name in ("coefs_", "intercepts_"):
        for a, b in zip(getattr(ours, name), getattr(theirs, name), strict=True):
            assert a.dtype == b.dtype
            assert rel_err(a, b) <= rtol, name
    if theirs.solver != "lbfgs":
        assert rel_err(ours.loss_curve_, theirs.loss_curve_) <= rtol
        if theirs.early_stopping:
            assert rel_err(ours.validation_scores_, theirs.validation_scores_) <= rtol
            assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_, rel=rtol)
        else:
            assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=rtol)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=rtol)
    out_ours = ours.predict_proba(X) if hasattr(ours, "predict_proba") else ours.predict(X)
    out_theirs = theirs.predict_proba(X) if hasattr(theirs, "predict_proba") else theirs.predict(X)
    assert out_ours.dtype == out_theirs.dtype
    assert rel_err(out_ours, out_theirs) <= rtol


SOLVERS = [
    dict(solver="adam", learning_rate_init=0.01),
    dict(solver="sgd", learning_rate_init=0.05),  # Nesterov momentum 0.9
    dict(solver="sgd", learning_rate_init=0.05, nesterovs_momentum=False, alpha=0.1),
    dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.3, momentum=0.0),
    dict(solver="sgd", learning_rate_init=0.001, momentum=1.0),  # scikit-learn's momentum is in [0, 1]
    dict(solver="sgd", learning_rate="adaptive", momentum=0.0, n_iter_no_change=1, tol=0.5),
    dict(solver="adam", early_stopping=True, validation_fraction=0.2, n_iter_no_change=2),
    dict(solver="lbfgs", alpha=0.01),
]


@pytest.mark.parametrize("params", SOLVERS, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_classifier_is_scikit_learns_model(params, digits):
    """Same hyper-parameters and random_state: the same parameters after training, up to rounding (batch 64 on
    500 rows leaves a last batch of 52, which scikit-learn gives its own penalty scale)."""
    X, y = digits
    params = {"hidden_layer_sizes": (16, 8), "batch_size": 64, "max_iter": 8, "random_state": 3, **params}
    ours, theirs = _fit_both(MLPClassifier, skl.MLPClassifier, X, y, **params)
    _assert_same_model(ours, theirs, X, SKLEARN_RTOL["float64"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_binary_multilabel_and_float32_are_scikit_learns_model(activation, dtype):
    X, Y = make_multilabel_classification(n_samples=150, n_features=7, n_classes=3, random_state=0)
    # standardised, as scikit-learn advises (unscaled data: test_unscaled_data_gives_scikit_learns_model)
    X = StandardScaler().fit_transform(X).astype(dtype)
    params = dict(hidden_layer_sizes=(9,), activation=activation, max_iter=6, random_state=0, alpha=1e-3)
    for y in (Y, Y[:, 0]):  # multi-label (3 logistic outputs), then binary (one logistic output)
        ours, theirs = _fit_both(MLPClassifier, skl.MLPClassifier, X, y, **params)
        _assert_same_model(ours, theirs, X, SKLEARN_RTOL[dtype])
        np.testing.assert_array_equal(ours.classes_, theirs.classes_)
        assert ours.coefs_[0].dtype == np.dtype(dtype)  # float32 input keeps float32


@pytest.mark.parametrize("solver", ["lbfgs", "sgd", "adam"])
def test_unscaled_data_gives_scikit_learns_model(solver):
    """The wine data as it comes (features up to 1680): confidently wrong rows, whose loss scikit-learn takes from
    the probabilities clipped at eps; its lbfgs line search and its loss curve read that loss."""
    X, y = load_wine(return_X_y=True)
    params = dict(hidden_layer_sizes=(16,), solver=solver, max_iter=30, random_state=0)
    ours, theirs = _fit_both(MLPClassifier, skl.MLPClassifier, X, y, **params)
    if solver != "lbfgs":  # the clipping is reached: a row's loss is at most -log(eps) = 36.04
        assert max(theirs.loss_curve_) > 10
    _assert_same_model(ours, theirs, X, SKLEARN_RTOL["float64"])


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("n_targets", [1, 3])
def test_regressor_is_scikit_learns_model(solver, n_targets):
    X, y = make_regression(n_samples=230, n_features=6, n_targets=n_targets, noise=0.1, random_state=1)
    y = y / y.std()
    params = dict(hidden_layer_sizes=(10, 5), solver=solver, max_iter=7, random_state=0, alpha=0.05, batch_size=50)
    ours, theirs = _fit_both(MLPRegressor, skl.MLPRegressor, X, y, **params)
    if solver == "lbfgs" and n_targets > 1:
        # scikit-learn's lbfgs objective divides the squared error by the outputs but its gradient does not;
        # fastbp minimises the objective its gradient belongs to (module docstring): different models, both fit.
        assert ours.score(X, y) >= theirs.score(X, y) - 0.05
        return
    _assert_same_model(ours, theirs, X, SKLEARN_RTOL["float64"])


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("n_targets", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_poisson_regressor_is_scikit_learns_model(solver, n_targets, weighted):
    """loss="poisson": an exp output and scikit-learn's half Poisson deviance (its constant terms included in the
    reported loss), summed over the outputs."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((230, 5))
    y = rng.poisson(np.exp(X @ (0.4 * rng.standard_normal((5, n_targets))) + 0.5)).astype(float)  # zeros included
    y = y[:, 0] if n_targets == 1 else y
    sw = rng.integers(0, 4, X.shape[0]).astype(float) if weighted else None
    params = dict(
        loss="poisson",
        hidden_layer_sizes=(10, 5),
        solver=solver,
        max_iter=7,
        random_state=0,
        alpha=0.05,
        batch_size=50,
        learning_rate_init=0.01,
    )
    ours, theirs = _fit_both(MLPRegressor, skl.MLPRegressor, X, y, sample_weight=sw, **params)
    assert ours.out_activation_ == theirs.out_activation_ == "exp"
    _assert_same_model(ours, theirs, X, SKLEARN_RTOL["float64"])
    assert (ours.predict(X) > 0).all()  # exp outputs


@pytest.mark.parametrize(
    ("cls", "theirs_cls", "params"),
    [
        (MLPClassifier, skl.MLPClassifier, dict(solver="sgd", learning_rate_init=0.05)),
        (MLPClassifier, skl.MLPClassifier, dict(solver="lbfgs")),
        (MLPRegressor, skl.MLPRegressor, dict(solver="adam")),
    ],
)
def test_sample_weight_is_scikit_learns(cls, theirs_cls, params, digits):
    X, y = digits
    if cls is MLPRegressor:
        y = y / 9.0
    sw = np.random.default_rng(0).integers(0, 4, X.shape[0]).astype(float)
    params = dict(hidden_layer_sizes=(12,), max_iter=5, random_state=0, batch_size=40, **params)
    ours, theirs = _fit_both(cls, theirs_cls, X, y, sample_weight=sw, **params)
    _assert_same_model(ours, theirs, X, SKLEARN_RTOL["float64"])


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
@pytest.mark.parametrize("scale", [2.0**66, 2.0**-66])
def test_weights_beyond_the_scaling_limit_keep_scikit_learns_penalty(solver, scale, digits):
    # fastbp scales such weights by a power of two (its weighted means do not change), but scikit-learn's L2 term is
    # divided by the weights' sum as given: the penalty followed the scaled sum (sgd's coefficients reached 1e141)
    X, y = digits
    sw = np.random.default_rng(0).integers(1, 4, X.shape[0]) * scale
    params = dict(hidden_layer_sizes=(12,), max_iter=5, random_state=0, batch_size=40, solver=solver)
    ours, theirs = _fit_both(MLPClassifier, skl.MLPClassifier, X, y, sample_weight=sw, alpha=1e-2 * scale, **params)
    _assert_same_model(ours, theirs, X, SKLEARN_RTOL["float64"])


def test_partial_fit_and_warm_start_are_scikit_learns(digits):
    X, y = digits
    params = dict(hidden_layer_sizes=(12,), random_state=0, batch_size=100)
    ours, theirs = MLPClassifier(**params), skl.MLPClassifier(**params)
    for start in (0, 200, 100):
        ours.partial_fit(X[start : start + 300], y[start : start + 300], classes=np.arange(10))
        theirs.partial_fit(X[start : start + 300], y[start : start + 300], classes=np.arange(10))
    _assert_same_model(ours, theirs, X, SKLEARN_RTOL["float64"])
    params = dict(params, warm_start=True, max_iter=3)
    ours, theirs = MLPClassifier(**params), skl.MLPClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for model in (ours, theirs):
            model.fit(X, y)
            model.coefs_[0][:2] = 0.5  # a user's edit of the fitted parameters is seen by the next fit
            model.fit(X, y)
    _assert_same_model(ours, theirs, X, SKLEARN_RTOL["float64"])


def test_pickle_and_assigned_coefficients_predict_like_scikit_learn(digits):
    import pickle

    X, y = digits
    ours, theirs = _fit_both(
        MLPClassifier, skl.MLPClassifier, X, y, hidden_layer_sizes=(8,), max_iter=3, random_state=0
    )
    ours = pickle.loads(pickle.dumps(ours))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=SKLEARN_RTOL["float64"])
    ours.coefs_[1] = theirs.coefs_[1] * 2  # replaced arrays, not views into fastbp's buffer
    theirs.coefs_[1] = theirs.coefs_[1] * 2
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=SKLEARN_RTOL["float64"])
    # what scikit-learn's NumPy pass also takes: coefs_ as a tuple, integer weights, an intercept shaped (1, fan_out)
    # (on inputs scaled so that no probability is subnormal: fastbp's softmax flushes those to 0)
    edits = (
        lambda model: setattr(model, "coefs_", tuple(model.coefs_)),
        lambda model: setattr(model, "coefs_", [np.round(c * 4).astype(np.int64) for c in model.coefs_]),
        lambda model: model.intercepts_.__setitem__(-1, model.intercepts_[-1].reshape(1, -1)),
    )
    ours, theirs = _fit_both(
        MLPClassifier, skl.MLPClassifier, X, y, hidden_layer_sizes=(8,), max_iter=3, random_state=0
    )
    for edit in edits:
        for model in (ours, theirs):
            edit(model)
        assert_close = np.testing.assert_allclose
        assert_close(ours.predict_proba(X / 16), theirs.predict_proba(X / 16), rtol=SKLEARN_RTOL["float64"])


def test_a_pickled_model_carries_no_training_rows(digits):
    import pickle

    X, y = digits
    model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, batch_size=len(X), random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    blob = pickle.dumps(model)
    assert not any(row.tobytes() in blob for row in X[:50])  # the compiled epoch's mini-batch buffers held them
    np.testing.assert_array_equal(pickle.loads(blob).predict_proba(X), model.predict_proba(X))


def test_lbfgs_convergence_warnings_and_non_finite_steps_are_scikit_learns(digits):
    """A stop at max_iter, at max_fun, and L-BFGS-B stopping ABNORMAL on data so large that the loss is not finite
    (scikit-learn's objective computes through NaN; FlatObjective refuses a non-finite theta): the same
    ConvergenceWarning text, iteration count and loss as scikit-learn's."""
    X, y = digits
    X_reg, y_reg = make_regression(n_samples=60, n_features=5, random_state=0)
    cases = [
        (MLPClassifier, skl.MLPClassifier, X[:100], y[:100], dict(max_iter=3)),
        (MLPClassifier, skl.MLPClassifier, X[:100], y[:100], dict(max_iter=50, max_fun=5)),
        (MLPClassifier, skl.MLPClassifier, X[:100] * 1e200, y[:100], dict(max_iter=5)),
        (MLPRegressor, skl.MLPRegressor, X_reg, y_reg * 1e160, dict(max_iter=5)),
    ]
    for ours_cls, theirs_cls, X_, y_, params in cases:
        fitted = []
        for cls in (theirs_cls, ours_cls):
            model = cls(hidden_layer_sizes=(5,), solver="lbfgs", random_state=0, **params)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.fit(X_, y_)
            texts = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
            fitted.append((model, texts))
        (theirs, their_texts), (ours, our_texts) = fitted
        assert our_texts == their_texts and len(their_texts) == 1
        assert ours.n_iter_ == theirs.n_iter_
        assert type(ours.loss_) is type(theirs.loss_)
        if np.isfinite(theirs.loss_):
            assert ours.loss_ == pytest.approx(theirs.loss_, rel=SKLEARN_RTOL["float64"])
        else:
            assert np.isnan(ours.loss_) and np.isnan(theirs.loss_)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_the_stochastic_solvers_warn_from_scikit_learn_s_module_as_it_does(digits, solver):
    # they pointed at fastbp/sklearn.py, so that a filter by module="sklearn" let them through
    X, y = digits
    for cls in (skl.MLPClassifier, MLPClassifier):
        model = cls(hidden_layer_sizes=(5,), solver=solver, max_iter=1, batch_size=500, random_state=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(X[:100], y[:100])
        modules = sorted({(w.category.__name__, w.filename.rsplit("sklearn", 1)[-1]) for w in caught})
        expected = [
            ("ConvergenceWarning", "/neural_network/_multilayer_perceptron.py"),
            ("UserWarning", "/neural_network/_multilayer_perceptron.py"),
        ]
        assert modules == expected, cls
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", module="sklearn")
            cls(hidden_layer_sizes=(5,), solver=solver, max_iter=1, batch_size=500, random_state=0).fit(
                X[:100], y[:100]
            )
        assert caught == [], cls


def test_a_warm_start_with_other_hidden_layers_is_refused(digits):
    # scikit-learn continues from coefs_ and fails on the mismatched shapes; fastbp trained the old layers
    X, y = digits
    for solver in ("adam", "lbfgs"):
        model = MLPClassifier(hidden_layer_sizes=(5,), solver=solver, max_iter=2, warm_start=True, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)
        model.set_params(hidden_layer_sizes=(5, 5))
        with pytest.raises(ValueError, match=r"hidden_layer_sizes=\(5, 5\) does not match .* \(5,\)"):
            model.fit(X, y)
        assert [c.shape for c in model.coefs_] == [(64, 5), (5, 10)]
    model = MLPClassifier(hidden_layer_sizes=(5,), random_state=0).partial_fit(X, y, classes=np.unique(y))
    model.set_params(hidden_layer_sizes=(7,))
    with pytest.raises(ValueError, match="partial_fit continues from coefs_"):
        model.partial_fit(X, y)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_size", ["auto", 64])
def test_losses_are_scikit_learns_type(solver, dtype, batch_size, digits):
    # np.float64 for a classifier's log-loss (its binarized targets are integers), the data's type for a regressor;
    # a batch_size given makes the stochastic solvers' losses float64 (scikit-learn multiplies each by an np.int64)
    X, y = digits
    X = X.astype(dtype)
    # a fixed initialisation: from some random ones scikit-learn's own Poisson SGD fit diverges and raises
    params = dict(hidden_layer_sizes=(5,), max_iter=2, solver=solver, batch_size=batch_size, random_state=0)
    for ours_cls, theirs_cls, target in ((MLPClassifier, skl.MLPClassifier, y), (MLPRegressor, skl.MLPRegressor, X)):
        for loss in [{"loss": "squared_error"}, {"loss": "poisson"}] if ours_cls is MLPRegressor else [{}]:
            targets = np.abs(target[:, :3]) if loss else target
            for weights in (None, np.ones(X.shape[0])):  # float64 weights make scikit-learn's losses float64
                ours, theirs = _fit_both(ours_cls, theirs_cls, X, targets, sample_weight=weights, **params, **loss)
                for name in ("loss_", "best_loss_"):  # lbfgs: best_loss_ None in both
                    assert type(getattr(ours, name, None)) is type(getattr(theirs, name, None)), (loss, name)
                assert {type(v) for v in getattr(ours, "loss_curve_", [])} == {
                    type(v) for v in getattr(theirs, "loss_curve_", [])
                }


def test_a_hidden_layer_is_read_as_with_scikit_learn(digits):
    # the known recipe: keep the first layer's coefs_, and make its activation the output
    X, y = digits
    models = _fit_both(MLPClassifier, skl.MLPClassifier, X, y, hidden_layer_sizes=(8, 4), max_iter=3, random_state=0)
    hidden = []
    for model in models:
        model.coefs_, model.intercepts_ = model.coefs_[:1], model.intercepts_[:1]
        model.n_layers_, model.out_activation_ = 2, model.activation
        hidden.append(model._forward_pass_fast(X[:20]))
    assert hidden[0].shape == (20, 8)
    assert rel_err(*hidden) <= SKLEARN_RTOL["float64"]
    # the other recipe: lower n_layers_ alone, coefs_ kept, with an activation fastbp has as an output (it ran the
    # whole network)
    models = _fit_both(
        MLPClassifier,
        skl.MLPClassifier,
        X,
        y,
        hidden_layer_sizes=(8, 4),
        activation="logistic",
        max_iter=3,
        random_state=0,
    )
    hidden = []
    for model in models:
        model.n_layers_, model.out_activation_ = 3, "logistic"
        hidden.append(model._forward_pass_fast(X[:20]))
    assert hidden[0].shape == (20, 4)
    assert rel_err(*hidden) <= SKLEARN_RTOL["float64"]


def test_a_warm_start_with_other_outputs_says_so(digits):
    X, y = digits
    Y = np.stack([y, -y], axis=1).astype(float)
    for continued in ("warm_start", "partial_fit"):
        model = MLPRegressor(hidden_layer_sizes=(6,), max_iter=2, warm_start=True, random_state=0)
        fit = model.partial_fit if continued == "partial_fit" else model.fit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit(X, Y[:, 0])
        with pytest.raises(ValueError, match=r"y has 2 outputs, but the fitted coefs_ give 1: a warm start"):
            fit(X, Y)


def test_bad_input_raises_as_scikit_learn_does(digits):
    X, y = digits
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        MLPClassifier().fit(bad, y)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :5])
    with pytest.raises(ValueError, match="hidden_layer_sizes must be > 0"):
        MLPClassifier(hidden_layer_sizes=(0,)).fit(X, y)
    with pytest.raises(ValueError, match="sample_weight"):
        MLPClassifier().fit(X, y, sample_weight=np.ones(3))


def test_flat_gradient_matches_finite_differences(rng):
    net = fastbp.MLP([5, 4, 3], activation="tanh", l2=0.1, dtype="float64", seed=1)
    X, y = rng.standard_normal((11, 5)), rng.integers(0, 3, 11)
    theta = net.params.copy()
    _loss, grad = value_and_grad_flat(net, theta, X, y)
    assert grad.dtype == np.float64 and grad.shape == theta.shape
    fd = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = FD_STEP
        fd[i] = (value_and_grad_flat(net, theta + e, X, y)[0] - value_and_grad_flat(net, theta - e, X, y)[0]) / (
            2 * FD_STEP
        )
    assert rel_err(grad, fd) <= FD_RTOL
    with pytest.raises(ValueError, match="theta"):
        value_and_grad_flat(net, theta[:-1], X, y)


def test_scipy_minimize_converges_on_digits():
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    net = fastbp.MLP([64, 32, 10], activation="tanh", l2=1e-3, dtype="float64", seed=0)
    objective = FlatObjective(net, X, y)
    start, _ = objective(net.params.copy())
    result = scipy.optimize.minimize(
        objective, net.params.astype(np.float64), jac=True, method="L-BFGS-B", options={"maxiter": 5000}
    )
    assert result.success, result.message
    assert result.fun < start / 20
    assert np.linalg.norm(result.jac) <= 1e-3
    net.params[:] = result.x
    assert np.mean(net.predict(X).argmax(1) == y) >= 0.99


def test_refits_and_shallow_copies_do_not_write_into_earlier_arrays(digits):
    """A new fit gets a new parameter buffer: arrays handed out by an earlier fit, and a shallow copy of the
    estimator, are left alone (as with scikit-learn, whose fits make new arrays)."""
    import copy

    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)
        W = model.coefs_[0]
        W0, P0 = W.copy(), model.predict_proba(X)
        model.set_params(random_state=1).fit(X, y)
        np.testing.assert_array_equal(W, W0)
        twin = copy.copy(model)
        P1 = model.predict_proba(X)
        twin.set_params(random_state=5).fit(X[:30], y[:30])
    np.testing.assert_array_equal(model.predict_proba(X), P1)
    assert not np.array_equal(P1, P0)


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_assigned_coefs_do_not_write_into_the_fitted_arrays(digits, solver):
    """Assigning coefs_ and predicting leaves the arrays of the fit alone (fastbp's fitted coefs_ are views into its
    network, into which a predict copied the assigned values): prune, predict, restore gives scikit-learn's scores."""
    import copy

    X, y = digits
    scores = []
    for cls in (MLPClassifier, skl.MLPClassifier):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = cls(hidden_layer_sizes=(16,), max_iter=20, random_state=0, solver=solver).fit(X, y)
        saved, P = list(model.coefs_), model.predict_proba(X)
        model.coefs_ = [w * (np.abs(w) > 0.2) for w in saved]
        model.intercepts_ = [np.zeros_like(b) for b in model.intercepts_]
        pruned = model.score(X, y)
        model.coefs_ = saved
        restored = model.score(X, y)
        twin = copy.copy(model)
        twin.coefs_ = [w * 0.5 for w in model.coefs_]
        twin.predict_proba(X)
        scores.append((pruned, restored, model.predict_proba(X)))
    assert scores[0][:2] == scores[1][:2]
    assert rel_err(scores[0][2], scores[1][2]) <= SKLEARN_RTOL["float64"]
    assert not np.array_equal(scores[0][2], P)  # the intercepts stayed zero: the restore is of coefs_ only


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_a_fitted_estimator_does_not_keep_a_workspace_sized_to_its_batch(solver):
    # L-BFGS takes the whole set as one batch: 100000 rows kept 822 MB of workspace in the fitted estimator
    from fastbp import _tuning

    rng = np.random.default_rng(0)
    X = rng.standard_normal((3 * _tuning.CHUNK_ROWS, 4))
    model = MLPRegressor(hidden_layer_sizes=(8,), solver=solver, batch_size=len(X), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, X[:, 0])
    net = model._fastbp_net
    assert net._capacity == _tuning.CHUNK_ROWS and net._acts.size == _tuning.CHUNK_ROWS * 9
    before = model.predict(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = skl.MLPRegressor(**model.get_params()).fit(X, X[:, 0])
    assert rel_err(before, theirs.predict(X)) <= SKLEARN_RTOL["float64"]


def test_dtypes_follow_scikit_learn_across_predict_and_warm_start(digits):
    X, y = digits
    params = dict(hidden_layer_sizes=(8,), max_iter=2, random_state=0, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = _fit_both(MLPClassifier, skl.MLPClassifier, X.astype(np.float32), y, **params)
        assert ours.predict_proba(X).dtype == theirs.predict_proba(X).dtype == np.float64  # promoted, as NumPy does
        ours.fit(X, y)  # a warm start on float64 data keeps the float32 parameters
        theirs.fit(X, y)
    assert ours.coefs_[0].dtype == theirs.coefs_[0].dtype == np.float32
    assert rel_err(ours.coefs_[0], theirs.coefs_[0]) <= SKLEARN_RTOL["float32"]


def test_verbose_prints_scikit_learns_progress_lines(digits, capsys):
    X, y = digits
    for solver in ("adam", "lbfgs"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            MLPClassifier(hidden_layer_sizes=(4,), solver=solver, max_iter=2, verbose=True).fit(X[:50], y[:50])
        assert "Iteration 1, loss = " in capsys.readouterr().out


def _assert_same_curve(ours, theirs, rtol):
    """Equal to rtol where scikit-learn's values are finite, and the same non-finite values (NaN, or inf of the same
    sign) at the same epochs."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert a.shape == b.shape
    finite = np.isfinite(b)
    np.testing.assert_array_equal(np.isfinite(a), finite)
    np.testing.assert_array_equal(a[~finite], b[~finite])  # NaN equals NaN here
    np.testing.assert_allclose(a[finite], b[finite], rtol=rtol)  # elementwise: a norm of 1e200 values overflows


@pytest.mark.parametrize("early_stopping", [True, False])
@pytest.mark.parametrize("estimator", ["regressor", "classifier"])
def test_diverging_fit_is_scikit_learns(estimator, early_stopping, digits, monkeypatch):
    """scikit-learn's steps go on through inf and NaN, which its loss curve, validation scores and stopping rule
    see; with early stopping the fit returns the best epoch's parameters, without it ``_fit`` raises ValueError after
    the last epoch. fastbp's compiled steps stop at a diverged step, and the epoch starts again in scikit-learn's
    NumPy arithmetic, so the whole run is scikit-learn's."""
    if estimator == "regressor":  # scikit-learn's own test_mlp_diverging_loss, shorter
        X, y = load_iris(return_X_y=True)
        cls, theirs_cls = MLPRegressor, skl.MLPRegressor
        params = dict(hidden_layer_sizes=(30,), activation="identity", learning_rate_init=1.0, momentum=0.9)
    else:
        X, y = digits
        cls, theirs_cls = MLPClassifier, skl.MLPClassifier
        params = dict(hidden_layer_sizes=(16,), learning_rate_init=50.0, batch_size=64)
    params.update(solver="sgd", max_iter=12, early_stopping=early_stopping, n_iter_no_change=10, random_state=3)
    numpy_epochs = []
    numpy_epoch = cls._numpy_epoch
    monkeypatch.setattr(cls, "_numpy_epoch", lambda *args: numpy_epochs.append(1) or numpy_epoch(*args))
    models = []
    for model in (cls(**params), theirs_cls(**params)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow in scikit-learn's NumPy steps
            warnings.simplefilter("ignore", ConvergenceWarning)
            if early_stopping:
                model.fit(X, y)
            else:
                with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
                    model.fit(X, y)
        models.append(model)
    ours, theirs = models
    assert ours.n_iter_ == theirs.n_iter_ == 12
    assert np.isnan(theirs.loss_curve_[-1])  # the fit diverged
    assert 1 <= len(numpy_epochs) <= 12 - np.isfinite(theirs.loss_curve_).sum() + 1  # compiled until it diverged
    if estimator == "regressor":
        _assert_same_curve(ours.loss_curve_, theirs.loss_curve_, SKLEARN_RTOL["float64"])
    else:  # the reported log-loss of huge logits is unclipped in fastbp (a documented difference): where it diverged
        np.testing.assert_array_equal(np.isfinite(ours.loss_curve_), np.isfinite(theirs.loss_curve_))
    if early_stopping:
        if estimator == "regressor":  # R^2 of non-finite predictions (a classifier's accuracy of its labels is not)
            assert str(ours.validation_scores_[-1]) == "nan" and isinstance(ours.validation_scores_[-1], float)
        _assert_same_curve(ours.validation_scores_, theirs.validation_scores_, SKLEARN_RTOL["float64"])
        assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_, rel=SKLEARN_RTOL["float64"])
        for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
            assert rel_err(a, b) <= SKLEARN_RTOL["float64"]
        assert rel_err(ours.predict(X), theirs.predict(X)) <= SKLEARN_RTOL["float64"]


def _assert_same_optimizer(ours, theirs, rtol):
    """Every attribute of scikit-learn's optimizer, with its value: scalars exactly, arrays to rtol."""
    assert vars(theirs)
    for name, value in vars(theirs).items():
        mine = getattr(ours, name)
        if isinstance(value, list):
            if name == "velocities" and theirs.momentum == 0:
                continue  # scikit-learn's last update, which no step reads without momentum; fastbp keeps zeros
            assert len(mine) == len(value), name
            for a, b in zip(mine, value, strict=True):
                assert a.dtype == b.dtype and a.shape == b.shape, name
                assert rel_err(a, b) <= rtol, name
        else:
            assert mine == value, name


@pytest.mark.parametrize(
    "params",
    [
        dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.3),  # Nesterov momentum 0.9
        dict(
            solver="sgd", learning_rate="adaptive", momentum=0.5, nesterovs_momentum=False, n_iter_no_change=1, tol=0.5
        ),
        dict(solver="sgd", learning_rate_init=0.05, momentum=0.0),
        dict(solver="adam", learning_rate_init=0.01),
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_optimizer_attributes_are_scikit_learns(params, digits):
    """``_optimizer`` has every attribute of scikit-learn's, in step with training: after fit, partial_fit (the same
    optimizer goes on) and a warm start (a new one)."""
    X, y = digits
    params = {"hidden_layer_sizes": (12,), "batch_size": 64, "max_iter": 6, "random_state": 0, **params}
    ours, theirs = MLPClassifier(**params), skl.MLPClassifier(**params)
    for step in ("fit", "partial_fit", "warm start"):
        for model in (ours, theirs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                if step == "partial_fit":
                    model.partial_fit(X, y)
                else:
                    model.set_params(warm_start=step == "warm start").fit(X, y)
        _assert_same_optimizer(ours._optimizer, theirs._optimizer, SKLEARN_RTOL["float64"])
    assert ours._optimizer.params[0] is not None and ours._optimizer.fastbp_optimizer.lr > 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_probabilities_below_the_smallest_normal_float_are_scikit_learns(dtype):
    # logits far apart (unscaled inputs): softmax gives subnormal probabilities, which NumPy's exp keeps and whose
    # log scikit-learn's predict_log_proba returns finite
    X = np.random.default_rng(0).standard_normal((20, 3)).astype(dtype)
    y = np.arange(20) % 3
    models = []
    for cls in (skl.MLPClassifier, MLPClassifier):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = cls(hidden_layer_sizes=(4,), max_iter=1, random_state=0).fit(X, y)
        model.coefs_[-1][:] = 0.0
        # the logs of the smallest normal and the smallest subnormal float: -708.4 and -744.4 in float64
        normal, subnormal = np.log(np.finfo(dtype).tiny), np.log(np.finfo(dtype).smallest_subnormal)
        # the last: below the log of the smallest subnormal, which exp still rounds up to it
        model.intercepts_[-1][:] = [0.0, (normal + subnormal) / 2, subnormal - 0.45]
        models.append(model)
    theirs, ours = (m.predict_proba(X[:2]) for m in models)
    assert ours.dtype == theirs.dtype and (ours[:, 1:] > 0).all() and (theirs[:, 1:] > 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no log of 0
        ours_log = models[1].predict_log_proba(X[:2])
    np.testing.assert_allclose(ours_log, models[0].predict_log_proba(X[:2]), rtol=SKLEARN_RTOL[np.dtype(dtype).name])
