"""Gradient checking: the analytic gradient of a network against central finite differences, in float64.

For a parameter p_i the numerical derivative is ``(L(p + eps e_i) - L(p - eps e_i)) / (2 eps)``. Its error is the
truncation ``eps^2 / 6 * d3L/dp_i3`` plus the rounding of the two loss values, ``~ 1e-16 |L| / eps`` (several ulps
in practice: a loss is a sum of many terms). The check therefore always runs on a float64 copy of the network (in
float32 the rounding term alone would be ~1e-2). Each coordinate's error is relative, with a floor on the
denominator:

    err_i = |analytic_i - numeric_i| / max(|analytic_i|, |numeric_i|, floor)

so that entries whose gradient is (nearly) zero, where the relative error of a finite difference means nothing,
are compared in absolute terms. Measured on 108 small networks (tanh, sigmoid, relu; softmax, sigmoid and identity
outputs; losses of order 1): with eps = 1e-6 the absolute noise is ~5e-10, so entries near 1e-4 showed relative
errors up to 1e-5; the defaults eps = 1e-5 and floor = 1e-3 kept every worst error below 1.6e-7, while a wrong
derivative term still shows up as an error of order 1 (any absolute error above ~1e-9 fails the default threshold
1e-6). The report gives, per layer, the worst error over the checked coordinates of W and of b. A layer with more
than ``max_coords`` weights (or biases) is checked on that many coordinates drawn at random without replacement
(seeded): the cost is two loss evaluations per checked coordinate. Frozen layers are skipped (their gradient is
zero by definition).

Piecewise-linear activations (relu, leaky_relu) have kinks: a coordinate whose +-eps step moves a pre-activation
across 0 gets a wrong numerical derivative. That is rare with eps = 1e-5, but a failure on a relu network alone
should be re-run with another seed (or a smaller eps) before it is believed.
"""

from dataclasses import dataclass, field

import numpy as np

from . import _validation as v
from .network import MLP


def float64_copy(net):
    """A new float64 :class:`MLP` with ``net``'s architecture, trainable flags and parameter values (widened
    exactly from float32). Perturbing it never touches ``net``."""
    copy = MLP(
        list(net.layer_sizes),
        list(net.activations),
        net.output,
        net.loss,
        net.l2,
        "float64",
        seed=0,  # the initial values are overwritten below
        trainable=list(net.trainable),
    )
    copy.params[:] = net.params
    return copy


def _compiled_loss(net, X, Y, out):
    return net.value_and_grad(X, Y, out=out)[0]


def _compiled_grad(net, X, Y):
    return net.value_and_grad(X, Y)[1]


@dataclass
class LayerCheck:
    """Result for layer ``layer`` (0-based): worst relative error and coordinates checked, for W and for b."""

    layer: int
    shape: tuple
    worst_W: float
    worst_b: float
    checked_W: int
    checked_b: int
    size_W: int
    size_b: int

    @property
    def worst(self):
        return max(self.worst_W, self.worst_b)


@dataclass
class GradcheckResult:
    """What :func:`gradcheck` found: per-layer checks, the overall worst relative error, and the verdict.

    ``layers`` lists the checked (trainable) layers; ``worst`` is the largest error over them (NaN if a gradient
    was NaN); ``passed`` is ``worst <= threshold``. ``str(result)`` is the per-layer table.
    """

    layers: list = field(default_factory=list)
    threshold: float = 1e-6
    eps: float = 1e-5
    floor: float = 1e-3
    loss: float = float("nan")

    @property
    def worst(self):
        errors = [layer.worst for layer in self.layers]
        if any(np.isnan(errors)):
            return float("nan")
        return max(errors, default=0.0)

    @property
    def passed(self):
        return bool(self.worst <= self.threshold)  # False for NaN

    def to_dict(self):
        """Plain-Python form (for JSON): threshold, eps, floor, loss, worst, passed, and one dict per layer."""
        return {
            "threshold": self.threshold,
            "eps": self.eps,
            "floor": self.floor,
            "loss": self.loss,
            "worst": self.worst,
            "passed": self.passed,
            "layers": [dict(vars(layer), shape=list(layer.shape)) for layer in self.layers],
        }

    def __str__(self):
        lines = [f"{'layer':>5}  {'W shape':>12}  {'W checked':>11}  {'worst W':>9}  {'b checked':>9}  {'worst b':>9}"]
        for c in self.layers:
            shape = "x".join(map(str, c.shape))
            lines.append(
                f"{c.layer + 1:>5}  {shape:>12}  {f'{c.checked_W}/{c.size_W}':>11}  {c.worst_W:>9.2e}  "
                f"{f'{c.checked_b}/{c.size_b}':>9}  {c.worst_b:>9.2e}"
            )
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"worst relative error {self.worst:.3g} (threshold {self.threshold:g}): {verdict}")
        return "\n".join(lines)


def gradcheck(net, X, Y, eps=1e-5, threshold=1e-6, floor=1e-3, max_coords=256, seed=0, grad_fn=None, loss_fn=None):
    """Check ``net``'s analytic gradient against central finite differences, in float64.

    Parameters
    ----------
    net : MLP
        Any dtype; the check runs on a float64 copy (``net`` itself is not modified).
    X : array (n, n_in)
    Y : array (n, n_out), or (n,) integer class labels for a softmax output
    eps : float, default 1e-5
        Step of the central differences.
    threshold : float, default 1e-6
        ``result.passed`` is ``worst <= threshold``.
    floor : float, default 1e-3
        Floor of the denominator of the relative error (see the module docstring).
    max_coords : int, default 256
        At most this many weights and this many biases are checked per layer (a seeded random subset).
    seed : int, default 0
        Seed of the subset.
    grad_fn : callable ``grad_fn(net64, X, Y) -> (n_params,) array``, optional
        The analytic gradient to check. Default: the compiled kernels, ``net64.value_and_grad(X, Y)[1]``; pass
        ``lambda net, X, Y: fastbp.reference.value_and_grad(net, X, Y)[1]`` to check the NumPy reference.
    loss_fn : callable ``loss_fn(net64, X, Y) -> float``, optional
        The loss differentiated numerically. Default: the compiled loss, ``net64.value_and_grad(X, Y)[0]``.

    Returns
    -------
    GradcheckResult
        Per-layer worst relative errors of W and b (``result.layers``), ``result.worst``, ``result.passed``.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a fastbp.MLP, got {type(net).__name__}")
    eps = v.check_float(eps, "eps", minimum=0.0, strict=True)
    threshold = v.check_float(threshold, "threshold", minimum=0.0)
    floor = v.check_float(floor, "floor", minimum=0.0, strict=True)
    max_coords = v.check_int(max_coords, "max_coords", minimum=1)
    seed = v.check_int(seed, "seed", minimum=0)
    net64 = float64_copy(net)
    X, _, _ = net64.check_batch(X, Y)
    if loss_fn is None:
        scratch = np.empty(net64.n_params)

        def loss_fn(net_, X_, Y_):
            return _compiled_loss(net_, X_, Y_, scratch)

    analytic = np.asarray((grad_fn or _compiled_grad)(net64, X, Y), dtype=np.float64)
    if analytic.shape != (net64.n_params,):
        raise ValueError(f"grad_fn must return an array of shape ({net64.n_params},), got {analytic.shape}")
    result = GradcheckResult(threshold=threshold, eps=eps, floor=floor, loss=float(loss_fn(net64, X, Y)))
    rng = np.random.default_rng(seed)
    params = net64.params
    for l, (W, trainable) in enumerate(zip(net64.coefs, net64.trainable, strict=True)):
        if not trainable:
            continue
        start, stop = net64.layer_range(l)
        b_start = start + W.size
        worst = []
        checked = []
        for lo, hi in ((start, b_start), (b_start, stop)):
            count = hi - lo
            idx = lo + (np.arange(count) if count <= max_coords else np.sort(rng.choice(count, max_coords, False)))
            numeric = np.empty(idx.size)
            for k, i in enumerate(idx):
                saved = params[i]
                params[i] = saved + eps
                plus = loss_fn(net64, X, Y)
                params[i] = saved - eps
                minus = loss_fn(net64, X, Y)
                params[i] = saved
                numeric[k] = (plus - minus) / (2.0 * eps)
            a = analytic[idx]
            err = np.abs(a - numeric) / np.maximum(np.maximum(np.abs(a), np.abs(numeric)), floor)
            worst.append(float(np.nan if np.isnan(err).any() else err.max()))
            checked.append(idx.size)
        result.layers.append(LayerCheck(l, W.shape, worst[0], worst[1], checked[0], checked[1], W.size, stop - b_start))
    return result
