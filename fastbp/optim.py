"""Optimizers and learning-rate schedules.

An optimizer is a small description (kind, hyper-parameters, schedule, clipping) plus a state laid out like
``params`` (one row per state vector) and a step counter. The update itself is a fused compiled loop
(``fastbp.kernels.optimizers``) run by the trainer for every mini-batch, inside the compiled epoch loop.

Weight decay: ``SGD(weight_decay=)`` and ``Adam(weight_decay=)`` add ``weight_decay * W`` to the gradient of the
weights (an L2 penalty, like ``MLP(l2=)``); ``AdamW`` decays the weights decoupled from the adaptive step. Biases
are never decayed.
"""

import math

import numpy as np

from . import _validation as v
from .kernels import optimizers as _k

#: How many times a hyper-parameter of any optimizer or schedule was set: ``Trainer.train_step`` keeps the vectors of
#: hyper-parameters it passes to compiled code until this changes.
CHANGES = [0]

#: The largest step count ``t``: the compiled code takes it as a 64-bit integer, with room for the steps of a call.
MAX_STEPS = 2**62
_STATE_FLAGS = (("not writeable", "WRITEABLE"), ("not aligned", "ALIGNED"), ("not C-contiguous", "C_CONTIGUOUS"))


def _state_flaw(state):
    """What keeps the array ``state`` from being an optimizer state the compiled update writes in place at its
    address, as a C-ordered array ("not writeable", "not aligned", "not C-contiguous"), or None."""
    flags = state.flags
    return next((why for why, flag in _STATE_FLAGS if not flags[flag]), None)


class _HyperParameter:
    """An attribute that the compiled update or schedule reads. It lives in the instance's dict under its own name,
    as a plain attribute would (``vars`` and ``repr`` are unchanged); setting it checks the value as the
    constructor does (``check(value, name)`` returns it in the type the compiled code takes: a new type would
    compile a new specialization) and counts in ``CHANGES``."""

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {self.name!r}") from None

    def __set__(self, obj, value):
        obj.__dict__[self.name] = self.check(value, self.name)
        CHANGES[0] += 1


def _positive(value, name):
    return v.check_float(value, name, minimum=0.0, strict=True)


def _nonnegative(value, name):
    return v.check_float(value, name, minimum=0.0)


def _fraction(value, name):
    """A float in [0, 1): a decay rate of Adam's moments (1 would divide by zero in the bias correction)."""
    value = v.check_float(value, name, minimum=0.0)
    if value >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _momentum(value, name):
    """A float in [0, 1], as scikit-learn's MLP estimators take it (1: the velocity is never damped)."""
    value = v.check_float(value, name, minimum=0.0)
    if value > 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _steps(value, name):
    return v.check_int(value, name, minimum=1)


def _clip_norm(value, name):
    return 0.0 if value is None else _positive(value, name)  # 0: no clipping


def _steps_or_none(value, name):
    return None if value is None else _steps(value, name)


class Schedule:
    """Learning rate as a function of the step t = 0, 1, 2, ...: constant. The other schedules are its subclasses
    ``StepDecay``, ``InverseScaling`` and ``Cosine``, which the compiled loop computes by their code;
    an optimizer refuses other subclasses (their ``__call__`` would not be applied)."""

    code = _k.CONSTANT

    def params(self):
        """Parameters passed to the compiled schedule, a (2,) float64 array."""
        return np.zeros(2)

    def __call__(self, lr, t):
        """The learning rate at step t (0-based) for a base rate lr."""
        return lr

    def __repr__(self):
        fields = ", ".join(f"{k}={val!r}" for k, val in vars(self).items())
        return f"{type(self).__name__}({fields})"


Constant = Schedule


class StepDecay(Schedule):
    """``lr * gamma ** (t // step_size)``: multiply the rate by gamma every step_size steps."""

    code = _k.STEP
    step_size = _HyperParameter(_steps)
    gamma = _HyperParameter(_positive)

    def __init__(self, step_size, gamma=0.1):
        self.step_size = step_size
        self.gamma = gamma

    def params(self):
        return np.array([self.step_size, self.gamma], dtype=np.float64)

    def __call__(self, lr, t):
        return lr * self.gamma ** (t // self.step_size)


class InverseScaling(Schedule):
    """``lr / (t + 1) ** power_t``, scikit-learn's 'invscaling' counted in steps."""

    code = _k.INVSCALING
    power_t = _HyperParameter(_nonnegative)

    def __init__(self, power_t=0.5):
        self.power_t = power_t

    def params(self):
        return np.array([self.power_t, 0.0])

    def __call__(self, lr, t):
        return lr / (t + 1.0) ** self.power_t


class Cosine(Schedule):
    """``lr_min + (lr - lr_min) (1 + cos(pi min(t, T) / T)) / 2`` over ``total_steps`` T, with t counted from
    the optimizer's first step. None: each ``fit`` call sets T to the steps done before it plus its own steps, so
    a single fit anneals from lr to lr_min; give total_steps explicitly to anneal across several fit calls."""

    code = _k.COSINE
    total_steps = _HyperParameter(_steps_or_none)
    lr_min = _HyperParameter(_nonnegative)

    def __init__(self, total_steps=None, lr_min=0.0):
        self.total_steps = total_steps
        self.lr_min = lr_min

    def params(self):
        if self.total_steps is None:
            raise ValueError("Cosine schedule needs total_steps (the trainer sets it from epochs when None)")
        return np.array([self.total_steps, self.lr_min], dtype=np.float64)

    def __call__(self, lr, t):
        if self.total_steps is None:
            raise ValueError("this Cosine schedule has no total_steps yet: Trainer.fit sets it from its epochs")
        T = self.total_steps
        return self.lr_min + 0.5 * (lr - self.lr_min) * (1.0 + math.cos(math.pi * min(t, T) / T))


SCHEDULES = {"constant": Constant, "step": StepDecay, "invscaling": InverseScaling, "cosine": Cosine}


def _check_schedule(schedule):
    if schedule is None:
        return Constant()
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)} or a Schedule")
        if schedule == "step":
            raise ValueError("schedule 'step' needs its parameters: use fastbp.optim.StepDecay(step_size, gamma)")
        return SCHEDULES[schedule]()
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a name or a fastbp.optim.Schedule, got {type(schedule).__name__}")
    if type(schedule) not in SCHEDULES.values():  # the compiled loop runs these by their code, not a subclass's call
        raise TypeError(
            f"schedule {type(schedule).__name__} is not one of fastbp's schedules ({', '.join(sorted(SCHEDULES))}): "
            "the compiled training loop computes the rate of those only and would not call its __call__; set "
            "optimizer.lr from a callback of Trainer (once per epoch) for another rule"
        )
    return schedule


class Optimizer:
    """Base class of the optimizers: hyper-parameters, state buffers laid out like ``params``, the step count.

    Attributes
    ----------
    lr : float
        The base learning rate (> 0); the schedule scales it per step (``current_lr``).
    schedule : Schedule
        The learning-rate schedule (constant by default).
    clip_norm : float or None
        The global L2 norm the gradient is rescaled to when larger; None: no clipping.
    t : int
        Steps taken (0 to ``MAX_STEPS``), counted once per step for the whole network; may be set by hand, and is
        checked before the next step.
    state : ndarray or None
        (n_state, n_params) of the network's dtype (velocity; or Adam's first and second moments), C-contiguous,
        updated in place; None until the first step (or after ``reset``).
    """

    kind = None
    n_state = 0
    name = "optimizer"
    schedule = _HyperParameter(lambda value, name: _check_schedule(value))
    lr = _HyperParameter(_positive)
    clip_norm = _HyperParameter(_clip_norm)

    def __init__(self, lr, schedule, clip_norm):
        self.lr = lr
        self.schedule = schedule
        self.clip_norm = clip_norm
        self.t = 0
        self.state = None

    def __setstate__(self, state):
        self.__dict__.update(v.writeable_arrays(state, ("state",)))

    def hyper(self):
        """(k,) float64: the hyper-parameters the compiled update reads (k depends on the optimizer)."""
        raise NotImplementedError

    def init_state(self, n_params, dtype):
        """The (n_state, n_params) state of ``dtype`` (float32 or float64) for a network of n_params parameters:
        zeroed when new, kept when it already fits. The step count
        starts again at 0 for another network (or dtype); a change of the state's rows alone (momentum switched on or
        off) keeps it, and with it the schedule's progress. ``t`` and an assigned ``state`` are checked here, before
        compiled code reads them: TypeError or ValueError."""
        dtype = np.dtype(dtype)
        self._check_t()
        state = self.state
        if state is not None and not (isinstance(state, np.ndarray) and state.ndim == 2):
            raise TypeError(f"optimizer.state must be None or a 2-D NumPy array, got {type(state).__name__}")
        wrong = None if state is None else _state_flaw(state)
        if wrong is not None:
            raise ValueError(
                "optimizer.state must be a writeable, aligned, C-contiguous array, as the update writes it in place "
                f"(np.array(state) makes one), got one that is {wrong}"
            )
        if state is None or state.shape != (self.n_state, n_params) or state.dtype != dtype:
            if state is None or state.shape[1:] != (n_params,) or state.dtype != dtype:
                self.t = 0
            self.state = np.zeros((self.n_state, n_params), dtype=dtype)
        return self.state

    def _check_t(self):
        """The step count ``t`` checked (an integer in [0, MAX_STEPS]; it may have been set by hand) and stored as a
        Python int; returns it. TypeError or ValueError otherwise."""
        t = v.check_int(self.t, "optimizer.t", minimum=0)
        if t > MAX_STEPS:
            raise ValueError(f"optimizer.t must be <= {MAX_STEPS}, got {t}")
        self.t = t
        return t

    def reset(self):
        """Forget the state and the step count."""
        self.state = None
        self.t = 0

    def current_lr(self):
        """Learning rate of the next step (a Cosine schedule without total_steps: the base rate, until fit)."""
        if isinstance(self.schedule, Cosine) and self.schedule.total_steps is None:
            return self.lr
        return self.schedule(self.lr, self.t)

    def config(self):
        """Constructor arguments, for checkpoints and repr."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={val!r}" for k, val in self.config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent ``theta <- theta - lr * grad``, with optional (Nesterov) momentum.

    Momentum: ``v <- momentum * v - lr * g; theta <- theta + v``; Nesterov: ``theta <- theta + momentum * v - lr
    * g`` (after the update of v).

    Parameters
    ----------
    lr : float, default 0.1
        Learning rate (> 0).
    momentum : float, default 0.0
        In [0, 1] (1: the velocity is never damped, as scikit-learn allows); 0: no velocity is kept.
    nesterov : bool, default False
        Nesterov momentum (needs momentum > 0).
    weight_decay : float, default 0.0
        Adds ``weight_decay * W`` to the weights' gradient (biases and normalization parameters are not decayed).
    schedule : Schedule, str or None, default None
        The rate per step: a ``Schedule``, or "constant", "invscaling", "cosine"; None: constant.
    clip_norm : float or None, default None
        Rescales the gradient to this global L2 norm when it is larger.
    """

    kind = _k.SGD
    name = "sgd"
    momentum = _HyperParameter(_momentum)
    nesterov = _HyperParameter(lambda value, name: bool(value))
    weight_decay = _HyperParameter(_nonnegative)

    def __init__(self, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, schedule=None, clip_norm=None):
        super().__init__(lr, schedule, clip_norm)
        self.momentum = momentum
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = nesterov
        self.weight_decay = weight_decay

    @property
    def n_state(self):
        """One state row (the velocity) with momentum, none without."""
        return 1 if self.momentum > 0.0 else 0

    def hyper(self):
        return np.array([self.momentum, float(self.nesterov), self.weight_decay])

    def config(self):
        return dict(
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            clip_norm=self.clip_norm or None,
        )


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1): ``m <- beta1 m + (1-beta1) g; v <- beta2 v + (1-beta2) g^2;
    theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)`` with bias-corrected ``m_hat, v_hat``.

    Parameters
    ----------
    lr : float, default 1e-3
        Learning rate (> 0).
    beta1, beta2 : float, default 0.9, 0.999
        Decay rates of the first and second moments, in [0, 1).
    eps : float, default 1e-8
        Added to the denominator (> 0).
    weight_decay : float, default 0.0
        An L2 term ``weight_decay * W`` added to the weights' gradient (use ``AdamW`` for decoupled decay).
    schedule : Schedule, str or None, default None
        The rate per step, as for ``SGD``.
    clip_norm : float or None, default None
        Rescales the gradient to this global L2 norm when it is larger.
    eps_hat : bool, default False
        Adds ``eps`` to ``sqrt(v)`` before the bias correction instead: ``theta <- theta - lr sqrt(1 - beta2^t) /
        (1 - beta1^t) * m / (sqrt(v) + eps)`` (the paper's "efficient" form; scikit-learn, Keras).
    """

    kind = _k.ADAM
    n_state = 2
    name = "adam"
    _decoupled = False
    beta1 = _HyperParameter(_fraction)
    beta2 = _HyperParameter(_fraction)
    eps = _HyperParameter(_positive)
    eps_hat = _HyperParameter(v.check_bool)
    weight_decay = _HyperParameter(_nonnegative)

    def __init__(
        self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, schedule=None, clip_norm=None, eps_hat=False
    ):
        super().__init__(lr, schedule, clip_norm)
        self.eps_hat = eps_hat
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weight_decay = weight_decay

    def hyper(self):
        return np.array(
            [self.beta1, self.beta2, self.eps, self.weight_decay, float(self._decoupled), float(self.eps_hat)]
        )

    def config(self):
        return dict(
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            clip_norm=self.clip_norm or None,
            eps_hat=self.eps_hat,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``theta <- theta - lr * (m_hat / (sqrt(v_hat) +
    eps) + weight_decay * theta)`` on the weights (biases are not decayed).

    Parameters are ``Adam``'s, with ``weight_decay`` (default 0.01) the decoupled decay above.
    """

    name = "adamw"
    _decoupled = True

    def __init__(
        self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, schedule=None, clip_norm=None, eps_hat=False
    ):
        super().__init__(lr, beta1, beta2, eps, weight_decay, schedule, clip_norm, eps_hat)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
