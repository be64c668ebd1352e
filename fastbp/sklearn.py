"""scikit-learn's ``MLPClassifier`` and ``MLPRegressor`` with fastbp's compiled kernels doing the numerical work.

Drop-in: ``from fastbp.sklearn import MLPClassifier`` instead of ``from sklearn.neural_network import
MLPClassifier``. The classes subclass scikit-learn's, so the constructor parameters, their defaults and
validation, input checks, label handling, fitted attributes, warm start, ``partial_fit`` and the scoring methods
are scikit-learn's own. What changes is the numerical core:

- ``sgd`` and ``adam`` run fastbp's compiled epoch loop (gather, forward, backward, update without returning to
  Python; one or two calls per epoch); ``_optimizer`` offers scikit-learn's optimizer attributes over fastbp's
  optimizer (``SGDOptimizer``, ``AdamOptimizer``); a diverging fit goes on as scikit-learn's does
  (``_fit_stochastic``);
- ``lbfgs`` runs ``scipy.optimize.minimize(method="L-BFGS-B")`` on ``fastbp.flat.FlatObjective``;
- ``predict``/``predict_proba`` run the compiled forward pass.

The objective is scikit-learn's exactly: the mean loss over the mini-batch (log-loss for softmax,
binary log-loss for logistic outputs, half squared error for regression, the half Poisson deviance of an exp output
for ``loss="poisson"``; weighted means with
``sample_weight``) plus ``alpha / (2 * batch weight) * sum(W**2)``, the batch weight being the batch size or the
sum of its sample weights; the last, smaller batch of an epoch gets its own penalty scale as in scikit-learn.
Initialisation (scikit-learn's, from ``random_state``), shuffling, early stopping, the ``tol`` /
``n_iter_no_change`` rule and the learning-rate schedules follow scikit-learn's code, so the same
hyper-parameters give the same models up to rounding (see the tests).

The differences from scikit-learn's estimators are listed in docs/guide/sklearn.md ("Differences").
"""

import warnings

import numpy as np
import scipy.optimize
import scipy.sparse
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.neural_network._base import LOSS_FUNCTIONS
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import validate_data

from . import _validation as v
from .flat import FlatObjective
from .network import MLP
from .optim import SGD, Adam
from .trainer import _NO_WEIGHTS, Trainer

__all__ = ["MLPClassifier", "MLPRegressor"]

_HIDDEN = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_OUTPUT = {
    "softmax": ("softmax", "log_loss"),
    "logistic": ("sigmoid", "binary_log_loss"),
    "identity": ("identity", "squared_error"),
    "exp": ("exp", "poisson"),
}


def _dense(X):
    return X.toarray() if scipy.sparse.issparse(X) else X


class _Optimizer:
    """What scikit-learn's stochastic optimizers (``sklearn.neural_network._stochastic_optimizers``) offer, over
    fastbp's optimizer, which does the work: the estimator's ``_optimizer``.

    Every attribute reads (and, where scikit-learn's can be assigned, writes) fastbp's optimizer, so it is always in
    step with the compiled training: ``learning_rate`` is fastbp's rate, the velocities and moments are views into
    fastbp's state. ``fastbp_optimizer`` is that optimizer. ``update_params`` takes one step in NumPy with
    scikit-learn's formulas, in their order of operations (the estimators use it after a diverged step, where the
    NaN and inf of scikit-learn's arithmetic are the behaviour to reproduce).
    """

    def __init__(self, fastbp_optimizer, net, learning_rate_init):
        self.fastbp_optimizer = fastbp_optimizer
        self.learning_rate_init = learning_rate_init
        self._net = net

    @property
    def params(self):
        """The parameters in scikit-learn's order: ``coefs_`` (fan_in, fan_out) then ``intercepts_`` (fan_out,),
        views into the network's flat buffer, of its dtype."""
        return list(self._net.coefs) + list(self._net.intercepts)

    def _state_views(self, row):
        """Row ``row`` of fastbp's state as a list of views shaped like ``params`` (scikit-learn's order)."""
        net = self._net
        state = self.fastbp_optimizer.init_state(net.n_params, net.dtype)  # kept when it fits
        Ws, bs = net.unflatten(state[row])
        return Ws + bs

    def _assign(self, row, values):
        for view, value in zip(self._state_views(row), values, strict=True):
            view[...] = value

    def iteration_ends(self, time_step):
        """Called after each epoch with the number of samples seen, ``t_`` (int): nothing to do here."""

    def trigger_stopping(self, msg, verbose):
        """The epochs stopped improving: returns True (stop), printing ``msg`` when ``verbose``."""
        if verbose:
            print(msg + " Stopping.")
        return True

    def _compiled_epoch_done(self):
        """After an epoch of fastbp's compiled steps (overridden where NumPy-only state must follow them)."""


class SGDOptimizer(_Optimizer):
    """scikit-learn's ``SGDOptimizer`` attributes over a ``fastbp.optim.SGD``: ``learning_rate_init``,
    ``learning_rate`` (float, the current rate: fastbp's ``lr``, which ``iteration_ends`` sets for 'invscaling'
    and ``trigger_stopping`` divides by 5 for 'adaptive'), ``lr_schedule``, ``momentum``, ``nesterov``,
    ``power_t``, ``velocities`` and ``params``.

    fastbp stores the velocity as scikit-learn does, ``v <- momentum v - lr g``, so with momentum ``velocities``
    are views into fastbp's state. Without momentum the velocity plays no part in a step; ``velocities`` then holds
    zeros, or scikit-learn's last update after a step of ``update_params``.
    """

    def __init__(self, fastbp_optimizer, net, learning_rate_init, lr_schedule, momentum, nesterov, power_t):
        super().__init__(fastbp_optimizer, net, learning_rate_init)
        self.lr_schedule = lr_schedule
        self.momentum = momentum
        self.nesterov = nesterov
        self.power_t = power_t
        self._velocities = None  # without momentum: scikit-learn's last update, once update_params ran

    @property
    def learning_rate(self):
        """The current learning rate (float): fastbp's ``lr``."""
        return self.fastbp_optimizer.lr

    @learning_rate.setter
    def learning_rate(self, value):
        self.fastbp_optimizer.lr = float(value)

    @property
    def velocities(self):
        """One array per parameter, shaped and typed like ``params``: ``v`` of ``v <- momentum v - lr g``."""
        if self.fastbp_optimizer.momentum > 0.0:
            return self._state_views(0)
        if self._velocities is None:
            self._velocities = [np.zeros_like(p) for p in self.params]
        return self._velocities

    @velocities.setter
    def velocities(self, values):
        if self.fastbp_optimizer.momentum > 0.0:
            self._assign(0, values)
        else:
            self._velocities = [np.array(a, dtype=p.dtype) for a, p in zip(values, self.params, strict=True)]

    def _compiled_epoch_done(self):
        # fastbp's steps keep no velocity without momentum; its last update was finite, and momentum 0 times a
        # finite velocity is 0, as it is times zeros
        self._velocities = None

    def iteration_ends(self, time_step):
        """After each epoch, ``time_step`` (int) the samples seen: 'invscaling' sets the rate to
        ``learning_rate_init / (time_step + 1) ** power_t``."""
        if self.lr_schedule == "invscaling":
            self.learning_rate = float(self.learning_rate_init) / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        """The epochs stopped improving: returns whether to stop. 'adaptive' divides the rate by 5 instead and goes
        on, until the rate is at most 1e-6; the other schedules stop. Prints ``msg`` and the decision when
        ``verbose``."""
        if self.lr_schedule != "adaptive":
            return super().trigger_stopping(msg, verbose)
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + f" Setting learning rate to {self.learning_rate:f}")
        return False

    def update_params(self, params, grads):
        """One step in NumPy: ``v <- momentum v - lr g``, then ``p += momentum v - lr g`` (Nesterov) or ``p += v``.
        params, grads: lists of arrays shaped like ``params`` (params updated in place)."""
        lr, mu = self.learning_rate, self.momentum
        for p, g, vel in zip(params, grads, self.velocities, strict=True):
            vel[...] = mu * vel - lr * g
            p += mu * vel - lr * g if self.nesterov else vel


class AdamOptimizer(_Optimizer):
    """scikit-learn's ``AdamOptimizer`` attributes over a ``fastbp.optim.Adam`` (``eps_hat``, scikit-learn's
    placement of epsilon): ``learning_rate_init``, ``beta_1``, ``beta_2``, ``epsilon``, ``t`` (int, the steps
    taken: fastbp's ``t``), ``learning_rate`` (float, the bias-corrected rate of the last step,
    ``learning_rate_init sqrt(1 - beta_2^t) / (1 - beta_1^t)``, or ``learning_rate_init`` before the first),
    ``ms`` and ``vs`` (the moments: views into fastbp's state) and ``params``.
    """

    def __init__(self, fastbp_optimizer, net, learning_rate_init, beta_1, beta_2, epsilon):
        super().__init__(fastbp_optimizer, net, learning_rate_init)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self._assigned_rate = None  # (t, rate): a rate assigned by the user, until the next step

    @property
    def t(self):
        """The number of steps taken (int): fastbp's ``t``."""
        return self.fastbp_optimizer.t

    @t.setter
    def t(self, value):
        self.fastbp_optimizer.t = int(value)

    @property
    def learning_rate(self):
        """The rate of the last step (float; scikit-learn sets it at every step)."""
        t = self.t
        if self._assigned_rate is not None and self._assigned_rate[0] == t:
            return self._assigned_rate[1]
        if t == 0:
            return float(self.learning_rate_init)
        return self.learning_rate_init * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)

    @learning_rate.setter
    def learning_rate(self, value):
        self._assigned_rate = (self.t, value)

    @property
    def ms(self):
        """The first moments, one array per parameter shaped and typed like ``params``."""
        return self._state_views(0)

    @ms.setter
    def ms(self, values):
        self._assign(0, values)

    @property
    def vs(self):
        """The second moments, one array per parameter shaped and typed like ``params``."""
        return self._state_views(1)

    @vs.setter
    def vs(self, values):
        self._assign(1, values)

    def update_params(self, params, grads):
        """One step in NumPy: ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``, ``p += -lr_t m / (sqrt(v) +
        eps)`` with lr_t the bias-corrected rate of step t. params, grads: lists of arrays shaped like
        ``params`` (params updated in place)."""
        self.t += 1
        ms, vs = self.ms, self.vs
        b1, b2 = self.beta_1, self.beta_2
        for m, s, g in zip(ms, vs, grads, strict=True):
            m[...] = b1 * m + (1 - b1) * g
            s[...] = b2 * s + (1 - b2) * (g**2)
        rate = self.learning_rate
        for p, m, s in zip(params, ms, vs, strict=True):
            p += -rate * m / (np.sqrt(s) + self.epsilon)


class _FastbpMixin:
    """The numerical core of scikit-learn's BaseMultilayerPerceptron, replaced by fastbp's kernels."""

    # ------------------------------------------------------------------ the network behind coefs_
    def _fastbp_network(self, for_fit=False):
        """The fastbp MLP whose parameters are ``coefs_`` and ``intercepts_``, in their dtype.

        After fastbp trains, ``coefs_[l]`` and ``intercepts_[l]`` ARE views into the network's flat buffer. When
        they are not (scikit-learn's initialisation, a user's assignment, unpickling, early stopping's copies),
        their values are copied into the buffer. The network is rebuilt when the architecture or dtype changed, and,
        for a fit (``for_fit``), whenever ``coefs_`` are not already its views: a new fit must not write into
        arrays handed out by an earlier fit, nor into a network shared with a (shallow) copy of the estimator. For
        the same reason a network whose views were handed out as ``coefs_`` is never written with other arrays'
        values: assigned ``coefs_`` get a network of their own.
        """
        if self.out_activation_ not in _OUTPUT:
            raise ValueError(
                f"fastbp implements the outputs {sorted(_OUTPUT)}; out_activation_={self.out_activation_!r} is not one"
            )
        # scikit-learn initialises in X's dtype and keeps it on warm starts; assigned coefs_ of integers or float16
        # compute in the float type NumPy's promotion with float32 data gives them
        dtype = np.asarray(self.coefs_[0]).dtype
        if dtype not in (np.float32, np.float64):
            dtype = np.result_type(dtype, np.float32)
        sizes = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
        output, loss = _OUTPUT[self.out_activation_]
        net = getattr(self, "_fastbp_net", None)
        if (
            net is None
            or list(net.layer_sizes) != sizes
            or net.dtype != dtype
            or net.output != output
            or net.loss != loss
            or net.activations != (_HIDDEN[self.activation],) * (len(sizes) - 2)
            or (for_fit and not self._is_bound(net))
            or (getattr(net, "_handed_out", False) and not self._is_bound(net))
        ):
            net = MLP(sizes, activation=_HIDDEN[self.activation], output=output, loss=loss, dtype=dtype, seed=0)
            self._fastbp_net = net
        for mine, theirs in ((net.coefs, self.coefs_), (net.intercepts, self.intercepts_)):
            for l, (a, b) in enumerate(zip(mine, theirs, strict=True)):
                if a is not b:
                    shape = np.shape(b)
                    # an intercept that scikit-learn's pass adds to the (n, fan_out) activations: (1, fan_out) too
                    if shape != a.shape and not (a.ndim == 1 and shape == (1, *a.shape)):
                        raise ValueError(f"coefs_/intercepts_ of layer {l} have shape {shape}, expected {a.shape}")
                    a[...] = b
        return net

    def _network_for_fit(self, layer_units):
        """``_fastbp_network`` for a fit of the layers ``layer_units`` (n_features, hidden sizes, n_outputs),
        which a warm start or ``partial_fit`` continues from ``coefs_``: refused when those are of other layers
        (scikit-learn fails there on other features or outputs, and goes on with other hidden sizes: docs/guide)."""
        fitted = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
        layer_units = list(layer_units)
        if layer_units != fitted:
            if layer_units[1:-1] != fitted[1:-1]:
                what = f"hidden_layer_sizes={self.hidden_layer_sizes!r} does not match the hidden layers of the fitted "
                what += f"coefs_ {tuple(fitted[1:-1])}"
            elif layer_units[-1] != fitted[-1]:
                what = f"y has {layer_units[-1]} outputs, but the fitted coefs_ give {fitted[-1]}"
            else:
                what = f"X has {layer_units[0]} features, but the fitted coefs_ take {fitted[0]}"
            raise ValueError(
                f"{what}: a warm start or partial_fit continues from coefs_. Set warm_start=False (or fit instead of "
                "partial_fit) to train a new network."
            )
        return self._fastbp_network(for_fit=True)

    def _is_bound(self, net):
        """Whether ``coefs_``/``intercepts_`` are the network's own views (as after a fastbp fit)."""
        pairs = zip(net.coefs + net.intercepts, [*self.coefs_, *self.intercepts_], strict=False)
        return len(self.coefs_) == len(net.coefs) and all(a is b for a, b in pairs)

    def _bind(self, net):
        """Make ``coefs_``/``intercepts_`` views into the network's buffer (what the kernels update)."""
        self.coefs_ = list(net.coefs)
        self.intercepts_ = list(net.intercepts)
        net._handed_out = True  # its buffer is the user's coefs_ now: see _fastbp_network

    def _targets(self, y):
        """scikit-learn's 2-D targets as the kernels take them: int64 class labels for softmax, else an array."""
        if self.out_activation_ == "softmax":
            return np.argmax(y, axis=1).astype(np.int64)
        return y

    def _forward_pass_fast(self, X, check_input=True):
        """Network outputs for X (n, n_features): probabilities (classifier) or values (regressor). An
        ``out_activation_`` that fastbp has no output for (one set to a hidden activation, to read a hidden layer's
        activations from truncated ``coefs_``), or an ``n_layers_`` lowered to read a hidden layer (scikit-learn's
        pass runs ``n_layers_ - 1`` layers), takes scikit-learn's own NumPy pass."""
        if self.out_activation_ not in _OUTPUT or getattr(self, "n_layers_", None) != len(self.coefs_) + 1:
            return super()._forward_pass_fast(X, check_input)
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        X = _dense(X)
        net = self._fastbp_network()
        # computed in the model's dtype; returned in NumPy's promotion of X's and the model's (scikit-learn's)
        return net.predict(X).astype(np.result_type(X.dtype, net.dtype), copy=False)

    def _fit(self, *args, **kwargs):
        try:
            return super()._fit(*args, **kwargs)
        finally:  # a fitted estimator keeps its network: not a workspace sized to a large batch
            net = getattr(self, "_fastbp_net", None)
            if net is not None:
                net._trim_workspace()

    # ------------------------------------------------------------------ stochastic solvers
    def _new_optimizer(self, net):
        """scikit-learn's optimizer attributes (``SGDOptimizer``, ``AdamOptimizer``) over a new fastbp
        optimizer with the estimator's hyper-parameters."""
        if self.solver == "sgd":
            nesterov = self.nesterovs_momentum and self.momentum > 0  # scikit-learn allows it without momentum
            opt = SGD(lr=self.learning_rate_init, momentum=self.momentum, nesterov=nesterov)
            return SGDOptimizer(
                opt,
                net,
                self.learning_rate_init,
                self.learning_rate,
                self.momentum,
                self.nesterovs_momentum,
                self.power_t,
            )
        opt = Adam(lr=self.learning_rate_init, beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon, eps_hat=True)
        return AdamOptimizer(opt, net, self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon)

    def _loss_type(self, y, dtype, sample_weight):
        """The NumPy scalar type of scikit-learn's loss values for the targets y (n, n_outputs) and sample weights
        (n,) or None as its fit holds them, and parameters of ``dtype``: its loss function's result type (np.float64
        for a classifier's log-loss, whose binarized targets are integers; the data's type for a regressor),
        promoted with the dtype by the L2 term and with the weights' by their sum, which divides both."""
        name = "binary_log_loss" if self.loss == "log_loss" and self.out_activation_ == "logistic" else self.loss
        weights = None if sample_weight is None else np.ones(1, sample_weight.dtype)  # a type probe: any weight
        probe = LOSS_FUNCTIONS[name](y[:1], np.full((1, y.shape[1]), 0.5, dtype), weights)
        return np.result_type(probe, dtype, *([] if weights is None else [weights.dtype])).type

    def _fit_stochastic(
        self, X, y, sample_weight, activations, deltas, coef_grads, intercept_grads, layer_units, incremental
    ):
        """scikit-learn's stochastic training, each epoch one or a few calls of fastbp's compiled epoch loop.

        Divergence is scikit-learn's: its steps go on through inf and NaN (the loss curve and the validation scores
        record them, the stopping rule reads them), and only ``_fit`` complains, afterwards, when the final
        parameters are not finite (with early stopping they are the best epoch's, so nothing is raised). fastbp's
        compiled steps stop at a non-finite loss or gradient instead, so the parameters and optimizer state are
        kept at the start of each epoch: when a step diverges, the epoch starts again from them, and it and the rest
        of this fit run scikit-learn's own NumPy steps (``_backprop``, then ``_optimizer.update_params``).
        """
        net = self._network_for_fit(layer_units)
        X = _dense(X).astype(net.dtype, copy=False)
        self._bind(net)
        loss_type = self._loss_type(y, net.dtype, sample_weight)
        if self.batch_size != "auto":  # scikit-learn's np.clip makes it an np.int64, which multiplies each batch loss
            loss_type = np.result_type(loss_type, np.int64).type
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer(net)
        self._optimizer._net = net
        opt = self._optimizer.fastbp_optimizer
        opt.init_state(net.n_params, net.dtype)

        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping:
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            parts = train_test_split(
                *arrays, random_state=self._random_state, test_size=self.validation_fraction, stratify=stratify
            )
            X_train, X_val, y_train, y_val = parts[:4]
            sw_train, sw_val = parts[4:] if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' or the size of your dataset."
                )
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
        else:
            X_train, y_train, sw_train = X, y, sample_weight
            X_val = y_val = sw_val = None

        n = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. It is going to be clipped", stacklevel=2
                )
            batch_size = int(np.clip(self.batch_size, 1, n))

        data = (X_train, y_train, sw_train)
        Xc, Y2d, labels = net.check_batch(X_train, self._targets(y_train), names=("X", "y"))
        sw, sw_scale = None, 1.0
        if sw_train is not None:
            sw, sw_scale = v.check_sample_weight(sw_train, n, net.dtype, return_scale=True)
        trainer = getattr(self, "_fastbp_trainer", None)
        if trainer is None or trainer.net is not net or trainer.optimizer is not opt:
            trainer = Trainer(net, opt, batch_size=batch_size, seed=None, progress=False, divergence_factor=None)
            self._fastbp_trainer = trainer
        compiled = (trainer, Xc, Y2d, labels, sw, sw_scale)
        # the parameters and optimizer state at the start of the epoch, to start it again in NumPy after a
        # diverged step
        saved_params, saved_state = np.empty_like(net.params), np.empty_like(opt.state)
        diverged = False
        sample_idx = np.arange(n, dtype=np.int64)

        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:  # scikit-learn's sklearn.utils.shuffle of the running order, same random stream
                    order = np.arange(n)
                    self._random_state.shuffle(order)
                    sample_idx = sample_idx[order]
                if not diverged:
                    np.copyto(saved_params, net.params)
                    np.copyto(saved_state, opt.state)
                    saved_t = opt.t
                    accumulated_loss = self._compiled_epoch(compiled, sample_idx, batch_size)
                    if accumulated_loss is None:
                        net.params[:] = saved_params
                        opt.state[...] = saved_state
                        opt.t = saved_t
                        diverged = True
                    else:
                        self._optimizer._compiled_epoch_done()
                if diverged:
                    accumulated_loss = self._numpy_epoch(
                        data, sample_idx, batch_size, activations, deltas, coef_grads, intercept_grads
                    )

                self.n_iter_ += 1
                self.loss_ = loss_type(accumulated_loss / n)
                self.t_ += n
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                self._optimizer.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    msg = f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} "
                    msg += "consecutive epochs."
                    if self._optimizer.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                        "hasn't converged yet.",
                        ConvergenceWarning,
                        stacklevel=2,  # from scikit-learn's _fit, as scikit-learn's own: filters by module match
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=2)

        if early_stopping:  # restore the best parameters, into the network's buffer
            for a, b in zip(net.coefs + net.intercepts, self._best_coefs + self._best_intercepts, strict=True):
                a[...] = b
            self._bind(net)

    def _compiled_epoch(self, compiled, sample_idx, batch_size):
        """One epoch over the running order ``sample_idx`` (n,) int64 in fastbp's compiled loop: returns the
        summed loss (float, scikit-learn's batch loss times batch size, summed), or None when a step diverged
        (the parameters and optimizer state are then undefined)."""
        trainer, Xc, Y2d, labels, sw, sw_scale = compiled
        net = trainer.net
        schedule = trainer._schedule(None)  # the optimizer's constant schedule; the rate is set per epoch here
        # Per-batch calls when the loss of each batch must be seen (regression with several outputs, whose
        # reported loss scikit-learn divides by the outputs but not its penalty) or when the penalty scale differs
        # per batch (sample weights); otherwise one call for the full batches and one for the last.
        multi_output_regression = self.out_activation_ == "identity" and self.n_outputs_ > 1
        per_batch = sw is not None or multi_output_regression
        accumulated_loss = 0.0
        for start, stop, size in self._calls(sample_idx.shape[0], batch_size, per_batch):
            perm = sample_idx[start:stop]
            # scikit-learn's penalty divides by the weights as given: undo check_sample_weight's power of two
            weight_sum = float(sw[perm].sum(dtype=np.float64)) / sw_scale if sw is not None else size
            if sw is not None and not weight_sum > 0:
                continue  # scikit-learn's step would divide by a zero weight sum; skip the empty batch
            net.l2 = self.alpha / weight_sum
            if multi_output_regression:  # the penalty of this step, from the parameters before it
                penalty = 0.5 * net.l2 * sum(float(np.dot(W.ravel(), W.ravel())) for W in net.coefs)
            status, loss_sum, _ = trainer._run(
                Xc, Y2d, labels, perm, size, schedule, sw=_NO_WEIGHTS if sw is None else sw
            )
            if status != 0:
                return None
            if multi_output_regression:
                batch_loss = loss_sum / (stop - start)
                loss_sum = ((batch_loss - penalty) / self.n_outputs_ + penalty) * (stop - start)
            accumulated_loss += loss_sum
        return accumulated_loss

    def _numpy_epoch(self, data, sample_idx, batch_size, activations, deltas, coef_grads, intercept_grads):
        """One epoch of scikit-learn's own steps in NumPy (its ``_backprop``, then ``SGDOptimizer.update_params``
        or ``AdamOptimizer.update_params``), over the running order ``sample_idx`` (n,): after a divergence, where
        its NaN and inf are the behaviour. data: (X (n, n_features), y (n, n_outputs), sample weights (n,) or None)
        as scikit-learn's ``_fit_stochastic`` takes them; the lists are its work arrays. Returns the summed loss."""
        X, y, sw = data
        params = self.coefs_ + self.intercepts_  # views into the network's buffer
        accumulated_loss = 0.0
        for start in range(0, sample_idx.shape[0], batch_size):
            rows = sample_idx[start : start + batch_size]
            sw_batch = None if sw is None else sw[rows]
            if sw_batch is not None and not sw_batch.sum() > 0:
                continue  # as the compiled epoch: skip a batch without weight
            activations[0] = X[rows]
            batch_loss, coef_grads, intercept_grads = self._backprop(
                X[rows], y[rows], sw_batch, activations, deltas, coef_grads, intercept_grads
            )
            accumulated_loss += batch_loss * rows.shape[0]
            self._optimizer.update_params(params, coef_grads + intercept_grads)
        return accumulated_loss

    @staticmethod
    def _calls(n, batch_size, per_batch):
        """(start, stop, batch size) of the compiled calls of one epoch over the running order."""
        full = (n // batch_size) * batch_size
        if per_batch:
            calls = [(s, s + batch_size, batch_size) for s in range(0, full, batch_size)]
        else:
            calls = [(0, full, batch_size)] if full else []
        if full < n:
            calls.append((full, n, n - full))
        return calls

    # ------------------------------------------------------------------ L-BFGS
    def _fit_lbfgs(self, X, y, sample_weight, activations, deltas, coef_grads, intercept_grads, layer_units):
        net = self._network_for_fit(layer_units)
        X = _dense(X).astype(net.dtype, copy=False)
        self._bind(net)
        objective = FlatObjective(net, X, self._targets(y), sample_weight)
        weight_sum = X.shape[0]
        if objective.sw.size:  # the weights as given (FlatObjective's may be scaled by a power of two)
            weight_sum = float(objective.sw.sum(dtype=np.float64)) / objective._sw_scale
        net.l2 = self.alpha / weight_sum
        callback = None
        if self.verbose:
            iterations = [0]  # SciPy's intermediate result has x and fun only (no iteration count)

            def callback(intermediate_result):
                iterations[0] += 1
                print(f"Iteration {iterations[0]}, loss = {intermediate_result.fun:.8f}")

        def loss_and_grad(theta):
            # scikit-learn's objective computes through NaN and inf: L-BFGS-B then stops (ABNORMAL) and the fit
            # ends with a ConvergenceWarning. FlatObjective refuses a non-finite theta (its check, each call), as
            # its users expect; only that refusal becomes a NaN here.
            try:
                return objective(theta)
            except ValueError:
                if np.isfinite(theta).all():
                    raise
                return np.nan, np.full_like(theta, np.nan)

        result = scipy.optimize.minimize(
            loss_and_grad,
            net.params.astype(np.float64),
            method="L-BFGS-B",
            jac=True,
            callback=callback,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol},
        )
        # scikit-learn's own check: its iteration count and its warning, word for word
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        net.params[:] = result.x
        self.loss_ = self._loss_type(y, net.dtype, sample_weight)(result.fun)
        if self.out_activation_ == "identity" and self.n_outputs_ > 1:  # scikit-learn's reporting convention
            penalty = 0.5 * net.l2 * sum(float(np.dot(W.ravel(), W.ravel())) for W in net.coefs)
            self.loss_ = (self.loss_ - penalty) / self.n_outputs_ + penalty


class MLPClassifier(_FastbpMixin, _SkMLPClassifier):
    """scikit-learn's ``sklearn.neural_network.MLPClassifier`` (same parameters, defaults, attributes and
    methods), trained and evaluated by fastbp's compiled kernels. See the module docstring for the differences.

    X: (n_samples, n_features) float32 or float64 (float32 stays float32; other dtypes become float64; sparse
    becomes dense); y: (n_samples,) labels, or (n_samples, n_labels) indicator matrix (multi-label).
    """


class MLPRegressor(_FastbpMixin, _SkMLPRegressor):
    """scikit-learn's ``sklearn.neural_network.MLPRegressor`` (same parameters, defaults, attributes and
    methods), trained and evaluated by fastbp's compiled kernels; ``loss="poisson"`` trains an exp output on the
    half Poisson deviance.

    X: (n_samples, n_features) float32 or float64; y: (n_samples,) or (n_samples, n_outputs) float targets
    (counts or rates, >= 0, for ``loss="poisson"``).
    """
