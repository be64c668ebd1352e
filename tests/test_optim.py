"""Each optimizer against a NumPy implementation of its textbook update, schedules, clipping, frozen layers."""

import math

import numpy as np
import pytest
from conftest import RTOL, make_batch, rel_err

import fastbp
from fastbp import optim, reference
from fastbp.kernels.optimizers import _learning_rate


class NumpyOptimizer:
    """Textbook updates, written independently of fastbp's kernels, on per-layer (W, b) arrays."""

    def __init__(
        self,
        kind,
        lr,
        momentum=0.0,
        nesterov=False,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        decoupled=False,
        clip_norm=None,
        schedule=lambda lr, t: lr,
        eps_hat=False,
    ):
        self.__dict__.update(locals())
        self.t = 0
        self.state = {}

    def step(self, params, grads, is_weight, trainable):
        norm = np.sqrt(sum((g**2).sum() for g, tr in zip(grads, trainable, strict=True) if tr))
        clip = min(1.0, self.clip_norm / norm) if self.clip_norm else 1.0
        lr = self.schedule(self.lr, self.t)
        self.t += 1
        for k, (p, g, w, tr) in enumerate(zip(params, grads, is_weight, trainable, strict=True)):
            if not tr:
                continue
            decay = self.weight_decay if w else 0.0
            g = clip * g
            if self.kind == "sgd":
                g = g + decay * p
                if self.momentum:
                    v = self.state.get(k, np.zeros_like(p))
                    v = self.momentum * v - lr * g
                    self.state[k] = v
                    p += self.momentum * v - lr * g if self.nesterov else v
                else:
                    p -= lr * g
            else:
                if not self.decoupled:
                    g = g + decay * p
                m, v = self.state.get(k, (np.zeros_like(p), np.zeros_like(p)))
                m = self.beta1 * m + (1 - self.beta1) * g
                v = self.beta2 * v + (1 - self.beta2) * g**2
                self.state[k] = (m, v)
                if self.eps_hat:  # Kingma & Ba's "efficient" form: step size with both corrections, eps on sqrt(v)
                    lr_t = lr * np.sqrt(1 - self.beta2**self.t) / (1 - self.beta1**self.t)
                    p -= lr_t * m / (np.sqrt(v) + self.eps) + (lr * decay * p if self.decoupled else 0.0)
                    continue
                m_hat = m / (1 - self.beta1**self.t)
                v_hat = v / (1 - self.beta2**self.t)
                p -= lr * (m_hat / (np.sqrt(v_hat) + self.eps) + (decay * p if self.decoupled else 0.0))


CASES = [
    ("sgd", dict(lr=0.1), {}),
    ("sgd", dict(lr=0.05, momentum=0.9), {}),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01), {}),
    ("adam", dict(lr=0.01), {}),
    ("adam", dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.02), {}),
    ("adamw", dict(lr=0.01, weight_decay=0.1), dict(decoupled=True)),
    ("sgd", dict(lr=0.1, momentum=0.5, clip_norm=0.05), {}),
    ("adam", dict(lr=0.01, clip_norm=0.01), {}),
    ("adam", dict(lr=0.01, eps=1e-3, eps_hat=True), {}),  # eps large enough that its placement shows
    ("adamw", dict(lr=0.01, eps=1e-3, weight_decay=0.1, eps_hat=True), dict(decoupled=True)),
]


@pytest.mark.parametrize("trainable", [None, [True, False, True]])
@pytest.mark.parametrize(("name", "kwargs", "extra"), CASES)
def test_optimizer_matches_numpy_textbook_update(name, kwargs, extra, trainable, rng):
    net = fastbp.MLP([5, 8, 6, 3], "tanh", dtype="float64", seed=1, trainable=trainable)
    shadow = fastbp.MLP([5, 8, 6, 3], "tanh", dtype="float64", seed=1, trainable=trainable)
    opt = optim.OPTIMIZERS[name](**kwargs)
    kind = "sgd" if name == "sgd" else "adam"
    textbook = NumpyOptimizer(kind, **kwargs, **extra)
    trainer = fastbp.Trainer(net, opt, seed=0, progress=False)
    frozen_before = [W.copy() for W in net.coefs]
    for _ in range(6):
        X, y = make_batch(net, 7, rng)
        trainer.train_step(X, y)
        _, g = reference.value_and_grad(shadow, X, y)
        dW, db = shadow.unflatten(g)
        params = [a for pair in zip(shadow.coefs, shadow.intercepts, strict=True) for a in pair]
        grads = [a for pair in zip(dW, db, strict=True) for a in pair]
        flags = [t for t in shadow.trainable for _ in range(2)]
        textbook.step(params, grads, [True, False] * shadow.n_layers, flags)
    assert rel_err(net.params, shadow.params) <= 1e-12
    for l, tr in enumerate(net.trainable):
        if not tr:
            np.testing.assert_array_equal(net.coefs[l], frozen_before[l])  # bit for bit


def _arrays(net, flat):
    """Per layer, the views of W, b, and gamma and beta of a normalized layer into ``flat`` (laid out like
    ``params``), from the columns of ``net.layout``: (views, whether each is a weight matrix)."""
    views, is_weight = [], []
    for fan_in, fan_out, w, b, _, _, norm, _, _, gamma, _, _ in net.layout:
        views += [flat[w : w + fan_in * fan_out], flat[b : b + fan_out]]
        if norm:
            views += [flat[gamma : gamma + fan_out], flat[gamma + fan_out : gamma + 2 * fan_out]]
        is_weight += [True] + [False] * (3 if norm else 1)
    return views, is_weight


@pytest.mark.parametrize(("name", "kwargs", "extra"), [CASES[2], CASES[4], CASES[5], CASES[6]])
def test_gamma_and_beta_are_updated_like_biases_and_clipped_with_the_rest(name, kwargs, extra, rng):
    # gamma and beta of batch and layer norm: updated by every optimizer, never decayed, and counted in the norm
    # that clip_norm limits (fastbp.reference has no layer options: the shadow takes the compiled gradient)
    options = {"norm": ["batch", "layer"], "residual": [False, True]}
    net = fastbp.MLP([5, 8, 8, 3], "tanh", dtype="float64", seed=1, **options)
    shadow = fastbp.MLP([5, 8, 8, 3], "tanh", dtype="float64", seed=1, **options)
    trainer = fastbp.Trainer(net, optim.OPTIMIZERS[name](**kwargs), seed=0, progress=False)
    textbook = NumpyOptimizer("sgd" if name == "sgd" else "adam", **kwargs, **extra)
    for _ in range(4):
        X, y = make_batch(net, 7, rng)
        trainer.train_step(X, y)
        _, g = shadow.value_and_grad(X, y)
        params, is_weight = _arrays(shadow, shadow.params)
        textbook.step(params, _arrays(shadow, g)[0], is_weight, [True] * len(params))
    # all but the bias under the batch norm, whose gradient is 0 up to rounding: the two runs' roundings differ, and
    # Adam's step divides them by their own size (the bias moves by about lr * 1e-17 / eps)
    under_batch_norm = np.zeros(net.n_params, dtype=bool)
    under_batch_norm[int(net.layout[0, 3]) : int(net.layout[0, 3]) + 8] = True
    assert rel_err(net.params[~under_batch_norm], shadow.params[~under_batch_norm]) <= 1e-12
    assert np.abs(net.intercepts[0] - shadow.intercepts[0]).max() <= 1e-9
    for gamma, beta in zip(net.norm_scales[:2], net.norm_shifts[:2], strict=True):
        assert np.abs(gamma - 1.0).min() > 0 and np.abs(beta).min() > 0  # moved from their initial values


SCHEDULES = [optim.Constant(), optim.StepDecay(3, 0.5), optim.InverseScaling(0.25), optim.Cosine(10, 1e-3)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_compiled_schedule_matches_its_formula(schedule):
    lr = 0.2
    formulas = {
        "Schedule": lambda t: lr,
        "StepDecay": lambda t: lr * 0.5 ** (t // 3),
        "InverseScaling": lambda t: lr / (t + 1) ** 0.25,
        "Cosine": lambda t: 1e-3 + (lr - 1e-3) * (1 + math.cos(math.pi * min(t, 10) / 10)) / 2,
    }
    expected = formulas[type(schedule).__name__]
    for t in range(15):
        assert _learning_rate(schedule.code, lr, schedule.params(), t) == pytest.approx(expected(t), rel=1e-15)
        assert schedule(lr, t) == pytest.approx(expected(t), rel=1e-15)


def test_a_schedule_the_compiled_loop_cannot_run_is_refused():
    # a subclass's __call__ would be reported (history["lr"]) but not applied by the compiled loop
    class Halve(fastbp.optim.Schedule):
        def __call__(self, lr, t):
            return lr * 0.5**t

    with pytest.raises(TypeError, match=r"schedule Halve is not one of fastbp's schedules .*callback"):
        fastbp.SGD(0.1, schedule=Halve())
    opt = fastbp.Adam(schedule="cosine")
    with pytest.raises(TypeError, match="schedule Halve"):
        opt.schedule = Halve()
    assert type(opt.schedule) is fastbp.optim.Cosine


def test_schedule_drives_the_steps(rng):
    # SGD with a step schedule equals the textbook SGD whose lr follows the same formula
    net = fastbp.MLP([4, 5, 2], dtype="float64")
    shadow = fastbp.MLP([4, 5, 2], dtype="float64")
    trainer = fastbp.Trainer(net, fastbp.SGD(0.3, schedule=optim.StepDecay(2, 0.1)), progress=False)
    for t in range(5):
        X, y = make_batch(net, 6, rng)
        trainer.train_step(X, y)
        shadow.params[:] -= 0.3 * 0.1 ** (t // 2) * reference.value_and_grad(shadow, X, y)[1]
    assert rel_err(net.params, shadow.params) <= RTOL["float64"]


def test_clipping_limits_the_step_to_lr_times_clip_norm(rng):
    net = fastbp.MLP([4, 6, 3], dtype="float64")
    before = net.params.copy()
    X, y = make_batch(net, 8, rng)
    _, g = net.value_and_grad(X, y)
    clip = 0.1 * np.linalg.norm(g)
    fastbp.Trainer(net, fastbp.SGD(0.5, clip_norm=clip), progress=False).train_step(X, y)
    step = before - net.params
    assert np.linalg.norm(step) == pytest.approx(0.5 * clip, rel=1e-12)
    np.testing.assert_allclose(step, 0.5 * clip * g / np.linalg.norm(g), rtol=1e-10, atol=1e-15)


BAD = [
    (lambda: fastbp.SGD(lr=0), ValueError, "lr"),
    (lambda: fastbp.SGD(lr=-1), ValueError, "lr"),
    (lambda: fastbp.SGD(momentum=1.01), ValueError, "momentum"),
    (lambda: fastbp.SGD(nesterov=True), ValueError, "nesterov"),
    (lambda: fastbp.Adam(beta1=1.0), ValueError, "beta1"),
    (lambda: fastbp.Adam(eps=0.0), ValueError, "eps"),
    (lambda: fastbp.AdamW(weight_decay=-1), ValueError, "weight_decay"),
    (lambda: fastbp.Adam(clip_norm=0), ValueError, "clip_norm"),
    (lambda: fastbp.SGD(schedule="warmup"), ValueError, "schedule"),
    (lambda: fastbp.SGD(schedule=3), TypeError, "schedule"),
    (lambda: optim.StepDecay(0), ValueError, "step_size"),
]


@pytest.mark.parametrize(("make", "error", "match"), BAD)
def test_bad_optimizer_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


BAD_SETTINGS = [
    (fastbp.SGD, "lr", 0, ValueError),
    (fastbp.SGD, "lr", "x", TypeError),
    (fastbp.SGD, "momentum", 1.01, ValueError),
    (fastbp.Adam, "beta1", 1.0, ValueError),
    (fastbp.Adam, "beta2", -0.1, ValueError),
    (fastbp.Adam, "eps", 0.0, ValueError),
    (fastbp.AdamW, "weight_decay", -1, ValueError),
    (fastbp.Adam, "clip_norm", 0, ValueError),
    (fastbp.SGD, "schedule", "warmup", ValueError),
    (lambda: optim.StepDecay(5), "step_size", 0, ValueError),
    (lambda: optim.StepDecay(5), "gamma", math.inf, ValueError),
    (optim.Cosine, "total_steps", 2.5, TypeError),
]


@pytest.mark.parametrize(("make", "name", "value", "error"), BAD_SETTINGS)
def test_bad_values_set_after_construction_raise_as_the_constructor(make, name, value, error):
    holder = make()
    before = getattr(holder, name)
    with pytest.raises(error, match=name):
        setattr(holder, name, value)
    assert getattr(holder, name) is before


def test_hyper_parameters_set_after_construction_take_the_compiled_type(rng):
    # an int or a NumPy scalar as a float: a new argument type would compile new specializations of the step
    opt = fastbp.SGD(0.1, momentum=0.5, clip_norm=2.0)
    opt.lr, opt.momentum, opt.clip_norm = 1, np.float32(0.25), None
    assert (type(opt.lr), type(opt.momentum), opt.clip_norm) == (float, float, 0.0)
    net = fastbp.MLP([3, 4, 2], seed=0)
    net.l2 = 1
    assert type(net.l2) is float
    with pytest.raises(ValueError, match="l2"):
        net.l2 = -1.0
    with pytest.raises(TypeError, match="lr"):
        opt.lr = "x"
    assert net.l2 == 1.0 and opt.lr == 1.0
