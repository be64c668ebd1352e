"""Gradient checking: the analytic gradient of a network against central finite differences, in float64.

``fastbp.gradcheck`` is ``gradcheck`` (this module is ``fastbp.checking``, so that the name ``fastbp.gradcheck``
stays the function); its result is a ``GradcheckResult`` holding one ``LayerCheck`` per checked layer.

**Finite differences.** For a parameter p_i the numerical derivative is ``(L(p + h e_i) - L(p - h e_i)) / (2 h)``
with ``h = eps`` (the step actually taken, after rounding ``p_i +- eps``). Its error is the truncation
``eps^2 / 6 * d3L/dp_i3`` plus the rounding of the two loss values, ``~ machine epsilon * |L| / eps``. The check
always runs on a float64 copy of the network (in float32 the rounding term alone would be ~1e-2).

**The error of a layer.** The checked coordinates of a layer's W (and, separately, of its b) form two vectors, the
analytic gradient ``a`` and the numerical one ``n``; the error is norm-wise:

    error = ||a - n|| / max(||a||, ||n||, noise / threshold)

``noise`` estimates ``||n - true gradient||``, the error of the finite differences themselves, over the layer's k
checked coordinates. It is the largest of three bounds, with ``n_2eps`` the same differences taken with the step
``2 eps`` (truncation grows 4x, rounding halves, so ``n - n_2eps`` is of the size of the error of ``n``):

- ``sqrt(k) * 2.2e-16 * |L| / eps``: the rounding of a loss computed to about an ulp of ``|L|``;
- ``3 sqrt(k) s``, where ``s = 1.4826 * median |n_i - n_2eps_i|`` over every checked coordinate of the network
  (the rounding noise is about the same for all coordinates, and the median ignores a few kinks): rounding of a
  loss computed less accurately than that (a nearly perfect fit, large logits, large batches), robust for layers
  with very few coordinates;
- ``2 ||n - n_2eps||`` over the layer: truncation, and relu kinks crossed by a step.

On the 108 networks below the actual ``||n - true gradient||`` measured at most 0.5 of this estimate (median 0.25).
So:

- where the gradient is well above the noise (``max(||a||, ||n||) >= noise / threshold``: the usual case;
  ``noise / ||n||`` is 4e-10 to 1.6e-9 on the default network of ``fastbp gradcheck``), the error is the plain
  norm-wise relative error, so a wrong gradient shows as the relative size of what is wrong;
- below that the finite differences cannot resolve a relative error of ``threshold``; the error is then
  ``||a - n|| * threshold / noise``, which exceeds the threshold exactly when ``a`` and ``n`` differ by more than
  the noise: any analytic gradient that is wrong by more than what the differences can see still fails, and a
  correct gradient passes whatever the scale of the loss (scale L by 1e8 and the noise scales with it);
- where the gradient itself is within the noise (``max(||a||, ||n||) <= noise``), the differences cannot tell it
  from zero, so the layer is *unresolved*: it is reported as such and the check does not pass (a larger ``eps``
  may resolve it; a deep sigmoid network's first layers are the typical case).

Measured on 108 small networks (tanh, sigmoid, relu hidden layers; softmax, sigmoid and identity outputs; float32
and float64; l2 0.01; losses of order 1): the worst error of a correct gradient was 5.6e-8 (the threshold is 1e-6);
a wrong activation derivative (tanh' as ``1 - A``, sigmoid' as ``A (1 - A)^2``, relu' as 1) gave 0.13 to 1.7 in
every hidden layer, and a gradient missing the L2 term 1.7e-3 and more on the weights (the error can reach 2:
``||a - n|| <= ||a|| + ||n||``).

A layer with more than ``max_coords`` weights (or biases) is checked on that many coordinates drawn at random without
replacement (seeded; for a batch-norm layer, whose biases have a zero gradient, two thirds of the biases' draw come from
gamma and beta); the cost is four loss evaluations per checked coordinate. Frozen layers are skipped (their
gradient is zero by definition); a network with every layer frozen raises ValueError.

**float32 networks.** The finite differences check the float64 path (the same kernels, compiled for float64). For
a float32 network the network's own float32 gradient is compared as well, layer by layer, with the float64
analytic gradient at the same parameters and the same data (rounded to float32 as the network sees it):

    error_float32 = ||g32 - g64|| / max(||g32||, ||g64||, ||(|A|^T d + l2 |W|)||)

where the last term is the size of the terms the gradient sums (``d`` summed over the batch for the biases), d
the size of the terms of delta (``_float32_magnitudes``: delta's backward pass on magnitudes): near a minimum, or
through batch norm on two rows, delta and the gradient cancel to nearly zero and float32 can only resolve them to
~1e-7 of that size. Its
threshold is ``threshold_float32`` (default 1e-4; measured: below 2e-6 on random networks up to 784-512-512-10).
In bfloat16 matmul precision the network's own gradient is compared instead with its NumPy emulation
(``fastbp.reference``: the same bfloat16 products, summed exactly), default threshold 1e-3: the float64 gradient
differs from it by the bfloat16 rounding itself (about 5e-3, more at relu kinks).

Piecewise-linear activations (relu, leaky_relu) have kinks: a coordinate whose +-eps step moves a pre-activation
across 0 gets a wrong numerical derivative. The ``2 eps`` differences usually see it and raise the noise of that
layer (4 of 150 random 8-32-32-4 relu networks, batch 64, still failed, against 11 with a fixed floor); if a relu
network alone fails, re-run it with another seed before believing it. A pre-activation exactly at 0 (an all-zero
input row into zero biases) fails whatever the seed: relu'(0) is 0, as in PyTorch, and the differences give 0.5.
"""

from dataclasses import dataclass, field

import numpy as np

from . import _validation as v
from . import reference
from .network import MLP

#: Default ``threshold_float32`` of a float32 network, and of one in bfloat16 matmul precision, whose own gradient is
#: compared with its NumPy emulation (``reference._mm``): there one operand rounding to the other side of a
#: bfloat16 step moves a layer's error by up to 1.4e-4 (measured on 45 random 20-64-64-5 networks with options).
THRESHOLD_FLOAT32 = {"float32": 1e-4, "bfloat16": 1e-3}

#: Unit roundoff of float64 (the finite differences run in float64).
ROUNDING = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)


def float64_copy(net):
    """A new float64 ``MLP`` with ``net``'s architecture, trainable flags and parameter values (widened
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
        norm=list(net.norms[:-1]),
        residual=list(net.residuals[:-1]),
        dropout=list(net.dropouts[:-1]),
    )
    copy.params[:] = net.params
    copy.buffers[:] = net.buffers
    copy.dropout_seed = net.dropout_seed
    return copy


def _compiled_loss(net, X, Y, out):
    return net.value_and_grad(X, Y, out=out)[0]


def _compiled_grad(net, X, Y):
    return net.value_and_grad(X, Y)[1]


@dataclass
class LayerCheck:
    """Result for layer ``layer`` (0-based), for its weights W and biases b separately.

    ``error_W``, ``error_b``: the norm-wise error of the checked coordinates (module docstring); ``checked_*`` of
    ``size_*`` coordinates were checked; ``norm_*``: ``max(||analytic||, ||numeric||)`` over them; ``noise_*``:
    the estimated error of the finite differences; ``resolved_*``: ``norm > noise`` (otherwise the differences
    cannot tell the gradient from zero). ``error32_W``, ``error32_b``: for a float32 network, the error of its own
    float32 gradient against the float64 one (every coordinate); None for a float64 network.
    """

    layer: int
    shape: tuple
    error_W: float
    error_b: float
    checked_W: int
    checked_b: int
    size_W: int
    size_b: int
    norm_W: float = float("nan")
    norm_b: float = float("nan")
    noise_W: float = float("nan")
    noise_b: float = float("nan")
    error32_W: float | None = None
    error32_b: float | None = None

    @property
    def worst(self):
        """The larger of ``error_W`` and ``error_b`` (NaN if either is)."""
        return float("nan") if np.isnan([self.error_W, self.error_b]).any() else max(self.error_W, self.error_b)

    @property
    def resolved_W(self):
        """Whether W's gradient stands out of the finite-difference noise (or is NaN, which fails the check)."""
        return bool(self.norm_W > self.noise_W) or np.isnan(self.error_W)

    @property
    def resolved_b(self):
        """Whether b's gradient stands out of the finite-difference noise (or is NaN, which fails the check)."""
        return bool(self.norm_b > self.noise_b) or np.isnan(self.error_b)

    @property
    def worst_float32(self):
        """The larger of ``error32_W`` and ``error32_b``; None for a float64 network."""
        if self.error32_W is None:
            return None
        errors = [self.error32_W, self.error32_b]
        return float("nan") if np.isnan(errors).any() else max(errors)


def _worst(errors):
    if any(np.isnan(errors)):
        return float("nan")
    return max(errors, default=0.0)


@dataclass
class GradcheckResult:
    """What ``gradcheck`` found: per-layer checks, the worst errors, and the verdict.

    ``layers`` lists the checked (trainable) layers. ``worst``: the largest finite-difference error over them (NaN
    if a gradient was NaN); ``unresolved``: ``[(layer, "W" or "b"), ...]`` whose gradient is within the
    finite-difference noise; ``worst_float32``: for a float32 network, the largest error of its own float32
    gradient against the float64 one (None for float64). ``passed``: ``worst <= threshold``, nothing unresolved,
    and, for float32, ``worst_float32 <= threshold_float32``. ``str(result)`` is the per-layer table.
    """

    layers: list = field(default_factory=list)
    threshold: float = 1e-6
    eps: float = 1e-5
    loss: float = float("nan")
    dtype: str = "float64"
    threshold_float32: float = 1e-4
    matmul_precision: str = "float32"
    #: False when the network's own gradient was not compared: a custom ``grad_fn`` in bfloat16 precision
    compared_float32: bool = True

    @property
    def worst(self):
        """The largest finite-difference error over the checked layers (NaN if a gradient was NaN)."""
        return _worst([layer.worst for layer in self.layers])

    @property
    def unresolved(self):
        """``[(layer, "W" or "b"), ...]`` whose gradient is within the finite-difference noise."""
        out = []
        for c in self.layers:
            out += [(c.layer, "W")] if not c.resolved_W else []
            out += [(c.layer, "b")] if not c.resolved_b else []
        return out

    @property
    def worst_float32(self):
        """For a float32 network, the largest error of its float32 gradient against the float64 one; else None."""
        if self.dtype != "float32" or not self.compared_float32:
            return None
        return _worst([layer.worst_float32 for layer in self.layers])

    @property
    def passed_float64(self):
        """The finite-difference part of the verdict: ``worst <= threshold`` and nothing unresolved."""
        return bool(self.worst <= self.threshold) and not self.unresolved  # False for NaN

    @property
    def passed_float32(self):
        """The float32 part: ``worst_float32 <= threshold_float32`` (True for a float64 network)."""
        return self.worst_float32 is None or bool(self.worst_float32 <= self.threshold_float32)

    @property
    def passed(self):
        """The verdict: ``passed_float64 and passed_float32``."""
        return self.passed_float64 and self.passed_float32

    def to_dict(self):
        """Plain-Python form (for JSON): settings, loss, worst errors, unresolved parts, verdicts, one dict per
        layer."""
        return {
            "threshold": self.threshold,
            "threshold_float32": self.threshold_float32,
            "eps": self.eps,
            "dtype": self.dtype,
            "matmul_precision": self.matmul_precision,
            "compared_float32": self.compared_float32,
            "loss": self.loss,
            "worst": self.worst,
            "worst_float32": self.worst_float32,
            "unresolved": [list(part) for part in self.unresolved],
            "passed_float64": self.passed_float64,
            "passed_float32": self.passed_float32,
            "passed": self.passed,
            "layers": [dict(vars(layer), shape=list(layer.shape)) for layer in self.layers],
        }

    def __str__(self):
        f32 = self.dtype == "float32" and self.compared_float32
        header = f"{'layer':>5}  {'W shape':>12}  {'W checked':>11}  {'error W':>10}  {'b checked':>9}  {'error b':>10}"
        lines = [header + (f"  {'f32 W':>9}  {'f32 b':>9}" if f32 else "")]

        def cell(error, resolved):
            return f"{error:>10.2e}" if resolved else f"{'unresolved':>10}"

        for c in self.layers:
            shape = "x".join(map(str, c.shape))
            line = (
                f"{c.layer + 1:>5}  {shape:>12}  {f'{c.checked_W}/{c.size_W}':>11}  {cell(c.error_W, c.resolved_W)}  "
                f"{f'{c.checked_b}/{c.size_b}':>9}  {cell(c.error_b, c.resolved_b)}"
            )
            if f32:
                line += f"  {c.error32_W:>9.2e}  {c.error32_b:>9.2e}"
            lines.append(line)
        verdict = "PASS" if self.passed_float64 else "FAIL"
        errors = [(c.error_W, c.layer, "W", c.resolved_W) for c in self.layers]
        errors += [(c.error_b, c.layer, "b", c.resolved_b) for c in self.layers]
        finite = [error for error in errors if not np.isnan(error[0])]
        where = ""
        if finite and not np.isnan(self.worst):  # the part the worst error is in (NaN: no worst part)
            _, layer, part, resolved = max(finite)
            where = f" at layer {layer + 1} {part}" + ("" if resolved else " (unresolved)")
        lines.append(f"worst relative error {self.worst:.3g}{where} (threshold {self.threshold:g}): {verdict}")
        if self.unresolved:
            parts = ", ".join(f"layer {layer + 1} {part}" for layer, part in self.unresolved)
            lines.append(
                f"unresolved: {parts}: the gradient is within the finite-difference noise, so it was not checked "
                "(a larger eps may resolve it)"
            )
        if self.dtype == "float32" and not f32:
            lines.append("bfloat16 gradient: not compared (a custom grad_fn has no NumPy emulation of its products)")
        if f32:
            verdict = "PASS" if self.passed_float32 else "FAIL"
            against = "bfloat16 gradient vs its NumPy emulation" if self.matmul_precision == "bfloat16" else ""
            lines.append(
                f"{against or 'float32 gradient vs float64'}: worst relative error {self.worst_float32:.3g} "
                f"(threshold {self.threshold_float32:g}): {verdict}"
            )
        return "\n".join(lines)


def _float32_magnitudes(net64, X, Y):
    """Per layer, the norms of ``|A|^T d + l2 |W|`` and of ``sum d``: the size of the terms that the weight and bias
    gradients sum, on the float64 copy. d is the size of the terms of delta: its backward pass run on magnitudes,
    each difference made a sum (``|P| + |Y|`` for the output's ``P - Y``, the three terms of a normalization's
    backward step added), so that where delta cancels (near a minimum, through batch norm on two rows) d keeps the
    size of what float32 rounds."""
    n = X.shape[0]
    Y = reference._targets(net64, Y, n)
    A, _, cache = reference._forward(net64, X, True)  # value_and_grad's mode: batch statistics
    P, L = np.abs(A[-1]), net64.n_layers
    if net64.loss in ("cross_entropy", "log_loss", "binary_cross_entropy", "binary_log_loss", "poisson"):
        d = P * np.abs(Y.sum(axis=1, keepdims=True)) + np.abs(Y)  # delta = P sum(Y) - Y (P - Y for one-hot rows)
    else:  # squared error: dC/dA = P - Y through the output activation's derivative (softmax's Jacobian)
        g = P + np.abs(Y)
        if net64.output == "softmax":
            d = P * (g + (g * P).sum(axis=1, keepdims=True))
        else:
            d = g * np.abs(reference.DERIVATIVES[net64.output](A[-1]))
    d = d / n
    out, grad_A = [None] * L, None
    for l in range(L - 1, -1, -1):
        if l < L - 1:  # delta[l] from dC/dA[l] through layer l's activation and normalization
            layer = cache[l]
            d = grad_A * np.abs(reference.DERIVATIVES[net64.activations[l]](layer["H"]))
            if layer["norm"] is not None:
                axis = 0 if layer["norm"] == "batch" else 1
                dXH, XH = d * np.abs(net64.norm_scales[l]), np.abs(layer["XH"])
                d = layer["inv"] * (
                    dXH + dXH.mean(axis=axis, keepdims=True) + XH * (dXH * XH).mean(axis, keepdims=True)
                )
        W = net64.coefs[l]
        out[l] = (np.linalg.norm(np.abs(A[l]).T @ d + net64.l2 * np.abs(W)), np.linalg.norm(d.sum(axis=0)))
        if l > 0:
            below = d @ np.abs(W).T
            grad_A = below + grad_A if l < L - 1 and net64.residuals[l] else below
    return out


def _norm_error(a, b, floor):
    diff = np.linalg.norm(a - b)
    if np.isnan(diff):
        return float("nan")
    return float(diff / max(np.linalg.norm(a), np.linalg.norm(b), floor, _TINY))


def gradcheck(
    net,
    X,
    Y,
    eps=1e-5,
    threshold=1e-6,
    max_coords=256,
    seed=0,
    grad_fn=None,
    loss_fn=None,
    threshold_float32=None,
):
    """Check ``net``'s analytic gradient against central finite differences in float64 (and, for a float32
    network, its own float32 gradient against the float64 one).

    Parameters
    ----------
    net : MLP
        Any dtype; the finite differences run on a float64 copy (``net`` itself is not modified). At least one
        layer must be trainable.
    X : array (n, n_in)
    Y : array (n, n_out), or (n,) integer class labels for a softmax output
    eps : float, default 1e-5
        Step of the central differences (a second pass uses ``2 eps`` to estimate their error).
    threshold : float, default 1e-6
        Largest accepted norm-wise error per layer (see the module docstring; the noise of the differences is
        always accepted).
    max_coords : int, default 256
        At most this many weights and this many biases are checked per layer (a seeded random subset).
    seed : int, default 0
        Seed of the subset.
    grad_fn : callable ``grad_fn(net, X, Y) -> (n_params,) array``, optional
        The analytic gradient to check. Default: the compiled kernels, ``net.value_and_grad(X, Y)[1]``; pass
        ``lambda net, X, Y: fastbp.reference.value_and_grad(net, X, Y)[1]`` to check the NumPy reference. It is
        called on the float64 copy, and for a float32 ``net`` also on ``net`` itself (float32 data).
    loss_fn : callable ``loss_fn(net64, X, Y) -> float``, optional
        The loss differentiated numerically. Default: the compiled loss, ``net64.value_and_grad(X, Y)[0]``.
    threshold_float32 : float, optional
        Largest accepted error of a float32 network's own gradient against the float64 one; default 1e-4. In
        bfloat16 matmul precision that gradient is compared with its NumPy emulation (``fastbp.reference``, the same
        bfloat16 products summed exactly) instead, default 1e-3 (``THRESHOLD_FLOAT32``); with a custom
        ``grad_fn``, which has no such emulation, it is not compared.

    Returns
    -------
    GradcheckResult
        Per-layer errors (``result.layers``), ``result.worst``, ``result.unresolved``, ``result.worst_float32``,
        ``result.passed``.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a fastbp.MLP, got {type(net).__name__}")
    eps = v.check_float(eps, "eps", minimum=0.0, strict=True)
    threshold = v.check_float(threshold, "threshold", minimum=0.0, strict=True)
    precision = net.matmul_precision
    if threshold_float32 is None:
        threshold_float32 = THRESHOLD_FLOAT32[precision]  # a float64 network's precision is "float32"
    threshold_float32 = v.check_float(threshold_float32, "threshold_float32", minimum=0.0, strict=True)
    max_coords = v.check_int(max_coords, "max_coords", minimum=1)
    seed = v.check_int(seed, "seed", minimum=0)
    if not any(net.trainable):
        raise ValueError("every layer of net is frozen: there is no gradient to check")
    # in bfloat16 precision the network's own gradient is compared with the emulation of the built-in loss's: a
    # custom grad_fn has none, so it is not compared (its float64 finite differences still are)
    compared = not (precision == "bfloat16" and grad_fn is not None)
    grad_fn = grad_fn or _compiled_grad
    net64 = float64_copy(net)
    X, _, _ = net64.check_batch(X, Y)
    if loss_fn is None:
        scratch = np.empty(net64.n_params)

        def loss_fn(net_, X_, Y_):
            return _compiled_loss(net_, X_, Y_, scratch)

    analytic = np.asarray(grad_fn(net64, X, Y), dtype=np.float64)
    if analytic.shape != (net64.n_params,):
        raise ValueError(f"grad_fn must return an array of shape ({net64.n_params},), got {analytic.shape}")

    float32 = net.dtype == np.float32 and compared
    if float32:  # the network's own gradient, on the data as it sees them, against float64 on the same data
        X32, Y2d, labels = net.check_batch(X, Y)
        own = np.asarray(grad_fn(net, X32, labels if labels.size else Y2d), dtype=np.float64)
        X32r, Y32r = X32.astype(np.float64), labels if labels.size else Y2d.astype(np.float64)
        if precision == "bfloat16":  # the gradient of the same bfloat16 products, summed exactly
            exact = np.asarray(reference.value_and_grad(net, X32, labels if labels.size else Y2d)[1], np.float64)
        else:
            exact = np.asarray(grad_fn(net64, X32r, Y32r), dtype=np.float64)
        magnitudes = _float32_magnitudes(net64, X32r, Y32r)

    loss = float(loss_fn(net64, X, Y))
    result = GradcheckResult(
        threshold=threshold,
        eps=eps,
        loss=loss,
        dtype=net.dtype.name,
        threshold_float32=threshold_float32,
        matmul_precision=precision,
        compared_float32=compared,
    )
    rounding_noise = ROUNDING * abs(loss) / eps  # per coordinate
    rng = np.random.default_rng(seed)
    params = net64.params

    def central(i, step):
        saved = params[i]
        params[i] = up = saved + step
        plus = loss_fn(net64, X, Y)
        params[i] = down = saved - step
        minus = loss_fn(net64, X, Y)
        params[i] = saved
        return (plus - minus) / (up - down)  # the step actually taken

    checked = []  # per trainable layer: (layer, [(lo, hi, idx, numeric, coarse) for W and for b])
    for l, (W, trainable) in enumerate(zip(net64.coefs, net64.trainable, strict=True)):
        if not trainable:
            continue
        start, stop = net64.layer_range(l)
        parts = []
        for lo, hi in ((start, start + W.size), (start + W.size, stop)):
            if hi - lo <= max_coords:
                idx = np.arange(lo, hi)
            elif lo > start and net64.norms[l] == "batch":
                # b's gradient is zero here (the normalization subtracts it again): a third of the draw from b, the
                # rest from gamma and beta, so that the subset's gradient is never all zero
                m = W.shape[1]
                k = max_coords // 3
                idx = np.sort(
                    np.concatenate([lo + rng.choice(m, k, False), lo + m + rng.choice(2 * m, max_coords - k, False)])
                )
            else:
                idx = np.sort(lo + rng.choice(hi - lo, max_coords, False))
            numeric = np.array([central(i, eps) for i in idx])
            coarse = np.array([central(i, 2.0 * eps) for i in idx])
            parts.append((lo, hi, idx, numeric, coarse))
        checked.append((l, parts))
    # The rounding noise is about the same for every coordinate (it is the loss's): a robust estimate of its size
    # per coordinate, pooled over all of them (1.4826 * median |x| is the standard deviation of a normal x).
    pooled = 1.4826 * float(np.median(np.abs(np.concatenate([p[3] - p[4] for _, parts in checked for p in parts]))))

    for l, parts in checked:
        row = []
        for lo, hi, idx, numeric, coarse in parts:
            a = analytic[idx]
            root_k = np.sqrt(idx.size)
            noise = max(root_k * rounding_noise, 3.0 * root_k * pooled, 2.0 * float(np.linalg.norm(numeric - coarse)))
            norm = max(float(np.linalg.norm(a)), float(np.linalg.norm(numeric)))
            error = _norm_error(a, numeric, noise / threshold)
            error32 = None
            if float32:
                error32 = _norm_error(own[lo:hi], exact[lo:hi], magnitudes[l][0 if len(row) == 0 else 1])
            row.append((error, idx.size, hi - lo, norm, noise, error32))
        (eW, kW, sW, nW, zW, fW), (eb, kb, sb, nb, zb, fb) = row
        result.layers.append(LayerCheck(l, net64.coefs[l].shape, eW, eb, kW, kb, sW, sb, nW, nb, zW, zb, fW, fb))
    return result
