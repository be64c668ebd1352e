"""The NumPy reference: backpropagation written as the four equations, line by line.

This is the oracle every compiled result is tested against (and which is itself tested against finite
differences), and the baseline of every benchmark: plain vectorised NumPy, as someone writing backprop in NumPy
would. Same names and semantics as the compiled path: ``value_and_grad(net, X, Y)`` equals
``net.value_and_grad(X, Y)``, in bfloat16 matmul precision too (the products of operands rounded to bfloat16).

Notation (docs/design.md, docs/background.md): ``Z[l] = A[l-1] @ W[l] + b[l]``, ``A[l] = f(Z[l])``, ``A[0] = X``,
``delta[l] = dC/dZ[l]``, C the batch mean of the per-sample loss plus ``l2 / 2 * sum(W**2)``.

    BP1  delta[L] = dC/dA[L] (.) f'(Z[L])                (for the canonical pairs: P - Y)
    BP2  delta[l] = (delta[l+1] @ W[l+1].T) (.) f'(Z[l])
    BP3  dC/db[l] = sum over the batch of delta[l]
    BP4  dC/dW[l] = A[l-1].T @ delta[l]

The options of a hidden layer (``MLP(norm=, residual=, dropout=)``, fastbp/kernels/layers.py) put steps between
``Z[l]`` and ``A[l]``:

    N = gamma (.) x_hat + beta, x_hat = (Z - mean) / sqrt(var + EPS)   batch norm: each column's mean and biased
                                                                      variance (training) or the running statistics
                                                                      (evaluation); layer norm: each row's
    H = f(N)
    D = H (.) keep / (1 - p)                                          dropout in training, keep = dropout_mask(...)
    A[l] = A[l-1] + D  with a residual connection, else  A[l] = D

and BP2 becomes, from ``G = dC/dA[l] = delta[l+1] @ W[l+1].T (+ dC/dA[l+1] when layer l+1 has a residual
connection)``: ``dN = G (.) keep / (1 - p) (.) f'(H)``; ``dC/dgamma = sum(dN (.) x_hat)``, ``dC/dbeta = sum(dN)``
over the batch; with ``dXH = dN (.) gamma``, ``delta[l] = (dXH - mean(dXH) - x_hat (.) mean(dXH (.) x_hat)) /
sqrt(var + EPS)``, the means over the normalized axis (the batch for batch norm, the features for layer norm;
``delta[l] = dN`` without normalization). The statistics and these means are summed in float64, as the kernels sum
them, and so is the Poisson loss; everything else is computed in the network's dtype.

``value_and_grad`` and ``deltas`` compute in training mode (batch statistics) without dropout unless a
``dropout_step`` is given, and never change the running statistics, as ``net.value_and_grad``;
``updated_running_stats`` gives the running statistics after a training step, as ``Trainer.train_step`` and
``fit`` update them.
"""

import numpy as np
from scipy.special import xlogy

from ._validation import check_sample_weight
from .kernels.activations import LEAKY_SLOPE
from .kernels.layout import DROPOUT

EPS = 1e-5  # PyTorch's default for BatchNorm1d and LayerNorm
MOMENTUM = 0.1  # PyTorch's default for BatchNorm1d's running statistics

# SplitMix64's finalizer (Steele, Lea and Flood): the golden-ratio increment and the two multipliers.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _sigmoid(Z):
    e = np.exp(-np.abs(Z))
    s = 1.0 / (1.0 + e)
    return np.where(Z >= 0, s, e * s)


def _softmax(Z):
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


ACTIVATIONS = {
    "identity": lambda Z: Z,
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda Z: np.maximum(Z, 0),
    "leaky_relu": lambda Z: np.where(Z > 0, Z, LEAKY_SLOPE * Z),
    "softmax": _softmax,
    "exp": np.exp,
}

#: f'(z) written through the output a = f(z), as in the compiled kernels.
DERIVATIVES = {
    "identity": lambda A: np.ones_like(A),
    "sigmoid": lambda A: A * (1 - A),
    "tanh": lambda A: 1 - A**2,
    "relu": lambda A: (~(A <= 0)).astype(A.dtype),  # 1 at NaN, as the kernels and PyTorch
    "leaky_relu": lambda A: np.where(A > 0, 1, LEAKY_SLOPE).astype(A.dtype),
    "exp": lambda A: A,
}


def round_bf16(a):
    """An array of any shape as float32, rounded to the nearest bfloat16 (ties to even); the same shape, float32;
    NaN stays NaN."""
    a = np.asarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    rounded = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(a), np.float32(np.nan), rounded)


def _mm(net, A, B):
    """The matrix product of the network's matmul precision: ``A @ B`` in its dtype, or, in bfloat16 precision,
    the product of the operands rounded to bfloat16, summed exactly (float64) and rounded to float32."""
    if getattr(net, "matmul_precision", "float32") != "bfloat16":
        return A @ B
    return (round_bf16(A).astype(np.float64) @ round_bf16(B).astype(np.float64)).astype(np.float32)


def _targets(net, Y, n):
    """Y as an (n, n_out) array: one-hot rows for integer class labels."""
    Y = np.asarray(Y)
    if Y.ndim == 1 and net.output == "softmax":
        return np.eye(net.n_out, dtype=net.dtype)[Y.astype(np.int64)]
    return Y.reshape(n, net.n_out).astype(net.dtype, copy=False)


# ------------------------------------------------------------------------------------------------ layer options
def _options(net):
    """Per hidden layer: (norms, residual flags, dropout rates), the output layer's (none) left out."""
    hidden = net.n_layers - 1
    return net.norms[:hidden], net.residuals[:hidden], net.dropouts[:hidden]


def _splitmix64(z):
    """SplitMix64's finalizer, a bijective avalanche of uint64 values (arrays; the products wrap modulo 2^64)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def dropout_mask(net, layer, step, rows, seed=None):
    """The dropout mask of hidden layer ``layer`` at training step ``step``, bit for bit as the compiled kernels
    draw it.

    Unit j of the row with id r is kept when half j % 2 (0: the low 32 bits, 1: the high 32 bits) of the hash
    ``mix(key + (j // 2) * G)`` is at least the layer's threshold ``round(p * 2^32)`` (``net.layout[layer,
    DROPOUT]``), where ``key = mix(mix(mix(seed * G + step) + layer * G) + r * G)``, ``mix`` is SplitMix64's finalizer
    and ``G = 0x9E3779B97F4A7C15``, all in uint64 arithmetic modulo 2^64. The kernels compute the same mask in the
    forward and the backward pass, for any thread count and any split of a batch, since it depends on the row's id
    (its index in the data set) only.

    layer: int, a hidden layer (0 <= layer < n_layers - 1). step: int >= 0, the optimizer's step count before the
    step (``optimizer.t``: 0 for the first ``train_step``). rows: (n,) integer row ids (``train_step``: 0..m-1;
    ``fit``: the rows' indices in X). seed: None for ``net.dropout_seed``. Returns a bool array (n, fan_out) of
    the layer: True where the unit is kept (every unit for a layer without dropout).
    """
    if not 0 <= layer < net.n_layers - 1:
        raise ValueError(f"layer must be a hidden layer, in [0, {net.n_layers - 2}], got {layer}")
    seed = net.dropout_seed if seed is None else seed
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    units = np.arange(net.layer_sizes[layer + 1], dtype=np.uint64)
    threshold = np.uint64(net.layout[layer, DROPOUT])
    with np.errstate(over="ignore"):  # uint64 products wrap modulo 2^64, as they must
        key = _splitmix64(np.array([seed], dtype=np.uint64) * _GOLDEN + np.array([step], dtype=np.uint64))
        key = _splitmix64(key + np.array([layer], dtype=np.uint64) * _GOLDEN)
        key = _splitmix64(key + rows.astype(np.uint64) * _GOLDEN)  # (n,): one key per row
        hashes = _splitmix64(key[:, None] + (units[None, :] >> np.uint64(1)) * _GOLDEN)
        bits = (hashes >> (np.uint64(32) * (units & np.uint64(1)))) & np.uint64(0xFFFFFFFF)
    return bits >= threshold


def _dropout_scale(net, layer):
    """The factor of the kept units, ``1 / (1 - p)`` exactly as the kernels apply the rate: 2^32 / (2^32 -
    threshold), rounded to the network's dtype."""
    return net.dtype.type(2.0**32 / (2.0**32 - float(net.layout[layer, DROPOUT])))


def _check_batch_norm_rows(net, n, training):
    if training and n < 2 and "batch" in _options(net)[0]:
        raise ValueError(f"batch norm in training needs batches of at least 2 rows (a batch variance), got {n}")


def _moments(Z, axis):
    """The mean and the biased variance of Z over ``axis`` (kept as an axis of 1), in float64: summed in float64 as
    the kernels sum them, so that a float32 network loses no more than the kernels to the sums' rounding."""
    Z = Z.astype(np.float64)
    mean = Z.mean(axis=axis, keepdims=True)
    return mean, ((Z - mean) ** 2).mean(axis=axis, keepdims=True)


def _mean(a, axis):
    """The mean of a over ``axis`` (kept), summed in float64 (as the kernels sum it) and rounded to a's dtype."""
    return a.mean(axis=axis, keepdims=True, dtype=np.float64).astype(a.dtype)


def _forward(net, X, training, dropout_step=None, row_ids=None):
    """The forward pass with everything backpropagation needs: (A, Z, cache). A: ``[A[0] = X, ..., A[L]]``; Z: the
    output layer's pre-activation (n, n_out); cache: one dict per hidden layer (its H = f(N), x_hat, the inverse
    standard deviations ``inv``, batch norm's batch mean and variance, the dropout mask ``keep`` or None)."""
    X = np.asarray(X, dtype=net.dtype)
    n = X.shape[0]
    _check_batch_norm_rows(net, n, training)
    if dropout_step is not None and not training:
        raise ValueError("dropout applies in training only: give dropout_step with training=True")
    row_ids = np.arange(n) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    if row_ids.shape != (n,):
        raise ValueError(f"row_ids must hold one id per row of X, {n}, got shape {row_ids.shape}")
    norms, residuals, rates = _options(net)
    A, cache = [X], []
    for l, name in enumerate(net.activations):
        Z = _mm(net, A[-1], net.coefs[l]) + net.intercepts[l]
        layer = {"norm": norms[l], "residual": residuals[l], "XH": None, "inv": None, "keep": None}
        if norms[l] == "batch" and training:  # the batch's statistics of each column
            mean, var = _moments(Z, axis=0)
            layer["mean"], layer["var"] = mean[0], var[0]  # (fan_out,) float64, for the running statistics
        elif norms[l] == "batch":  # evaluation: the running statistics
            mean, var = net.running_means[l].astype(np.float64), net.running_vars[l].astype(np.float64)
        elif norms[l] == "layer":  # each row's statistics, over the features
            mean, var = _moments(Z, axis=1)
        if norms[l] is not None:
            layer["inv"] = (1 / np.sqrt(var + EPS)).astype(net.dtype)
            layer["XH"] = (Z - mean.astype(net.dtype)) * layer["inv"]
        N = Z if norms[l] is None else net.norm_scales[l] * layer["XH"] + net.norm_shifts[l]
        H = layer["H"] = ACTIVATIONS[name](N)
        D = H
        if dropout_step is not None and rates[l] > 0:  # inverted dropout: kept units scaled by 1 / (1 - p)
            layer["keep"] = dropout_mask(net, l, dropout_step, row_ids)
            D = np.where(layer["keep"], H * _dropout_scale(net, l), 0).astype(net.dtype)
        A.append(A[-1] + D if residuals[l] else D)
        cache.append(layer)
    Z = _mm(net, A[-1], net.coefs[-1]) + net.intercepts[-1]
    A.append(ACTIVATIONS[net.output](Z))
    return A, Z, cache


def _delta_through_hidden(net, l, layer, G, grads):
    """BP2 through hidden layer l's options: ``delta[l] = dC/dZ[l]`` from ``G = dC/dA[l]`` (n, fan_out), and the
    gradients of its gamma and beta written into ``grads`` (a flat buffer laid out like params, or None)."""
    if layer["keep"] is not None:  # dropout: the gradient flows through the kept units only, scaled as they were
        G = np.where(layer["keep"], G * _dropout_scale(net, l), 0).astype(net.dtype)
    dN = G * DERIVATIVES[net.activations[l]](layer["H"])
    if layer["norm"] is None:
        return dN
    XH = layer["XH"]
    if grads is not None:
        dgammas, dbetas = net._norm_views(grads)
        dgammas[l][...] = (dN * XH).sum(axis=0)
        dbetas[l][...] = dN.sum(axis=0)
    dXH = dN * net.norm_scales[l]
    axis = 0 if layer["norm"] == "batch" else 1  # the axis normalized: the batch, or the features of a row
    return layer["inv"] * (dXH - _mean(dXH, axis) - XH * _mean(dXH * XH, axis))


def _backward(net, A, cache, delta, lowest, grads=None):
    """From the output layer's delta (BP1) down to layer ``lowest``: the deltas of layers lowest..L-1 (a list, the
    lowest first), with BP3/BP4 (and gamma, beta) of the trainable layers written into ``grads`` when given."""
    Ws, L = net.coefs, net.n_layers
    residuals = _options(net)[1]
    dWs, dbs = net.unflatten(grads) if grads is not None else (None, None)
    out = [delta]
    grad_A = None  # dC/dA[l] of the hidden layer l below the current one
    for l in range(L - 1, lowest - 1, -1):
        trainable = grads is not None and net.trainable[l]
        if l < L - 1:  # a hidden layer: delta[l] from dC/dA[l]
            delta = _delta_through_hidden(net, l, cache[l], grad_A, grads if trainable else None)
            out.append(delta)
        if trainable:
            dbs[l][...] = delta.sum(axis=0)  # BP3
            dWs[l][...] = _mm(net, A[l].T, delta) + net.l2 * Ws[l]  # BP4 (+ L2)
        if l > lowest:
            below = _mm(net, delta, Ws[l].T)  # dC/dA[l-1] through layer l's weights (BP2 before f')
            if l < L - 1 and residuals[l]:  # and through its residual connection A[l] = A[l-1] + D: dC/dA[l]
                below = below + grad_A
            grad_A = below
    return out[::-1]


# ------------------------------------------------------------------------------------------------ public
def forward(net, X, training=False, dropout_step=None, row_ids=None):
    """Activations of every layer for X (n, n_in): a list ``[A[0] = X, A[1], ..., A[L]]`` of (n, width) arrays of the
    network's dtype.

    training: batch norm's batch statistics (True; at least 2 rows) or its running statistics (False, as ``predict``).
    dropout_step: None (no dropout), or in training the step of the dropout mask (``dropout_mask``) with
    row_ids (n,) the rows' ids (default 0..n-1). A[l] of a hidden layer is its output: after the normalization,
    the activation, dropout and the residual connection.
    """
    return _forward(net, X, training, dropout_step, row_ids)[0]


def predict(net, X):
    """Network output f(... f(X @ W1 + b1) ...) of X (n, n_in), as an (n, n_out) array of the network's dtype, in
    evaluation mode (batch norm's running statistics, no dropout), as ``net.predict``."""
    return forward(net, X)[-1]


def _loss_and_output_delta(net, Z, A, Y):
    """Per-sample losses (n,), and BP1 ``delta[L] = dC/dZ[L]`` for the summed loss."""
    if net.loss in ("log_loss", "binary_log_loss"):  # scikit-learn's: the log of the clipped probabilities
        eps = np.finfo(A.dtype).eps
        C = np.clip(A, eps, 1 - eps)
        if net.loss == "log_loss":
            loss = -xlogy(Y, C).sum(axis=1)
            return np.where(np.isfinite(Z).all(axis=1), loss, np.nan), A * Y.sum(axis=1, keepdims=True) - Y
        loss = -(xlogy(Y, C) + xlogy(1 - Y, 1 - C)).sum(axis=1)
        return np.where(np.isfinite(Z).all(axis=1), loss, np.nan), A - Y
    if net.loss == "cross_entropy":  # softmax: -sum y log p, with log p = z - logsumexp(z)
        z_max = Z.max(axis=1, keepdims=True)
        lse = z_max + np.log(np.exp(Z - z_max).sum(axis=1, keepdims=True))
        return (Y * (lse - Z)).sum(axis=1), A * Y.sum(axis=1, keepdims=True) - Y  # = A - Y when rows of Y sum to 1
    if net.loss == "binary_cross_entropy":  # sigmoid: -y log a - (1 - y) log(1 - a), in terms of z
        return (np.maximum(Z, 0) - Y * Z + np.log1p(np.exp(-np.abs(Z)))).sum(axis=1), A - Y
    if net.loss == "poisson":  # exp: half Poisson deviance y log(y / a) - y + a, in terms of z = log a
        # in float64, as the kernel sums it: a - y z and y log y - y cancel where the fit is good
        Z64, Y64 = Z.astype(np.float64), Y.astype(np.float64)
        return (np.exp(Z64) - Y64 * Z64 + (xlogy(Y64, Y64) - Y64)).sum(axis=1), A - Y
    grad_A = A - Y  # squared error 1/2 ||a - y||^2: dC/dA = a - y
    loss = 0.5 * (grad_A**2).sum(axis=1)
    if net.output == "softmax":  # Jacobian of softmax: dC/dz_j = a_j (g_j - sum_k g_k a_k)
        return loss, A * (grad_A - (grad_A * A).sum(axis=1, keepdims=True))
    return loss, grad_A * DERIVATIVES[net.output](A)  # BP1


def value_and_grad(net, X, Y, sample_weight=None, dropout_step=None, row_ids=None):
    """Loss and flat gradient of ``net`` on the batch (X, Y), in NumPy: the oracle for ``net.value_and_grad``.

    X: (n, n_in); Y: (n, n_out) targets or (n,) class labels for softmax; sample_weight: (n,) or None (weighted
    mean over the batch). Returns (loss: float, grads: (n_params,) array of the network's dtype, laid out like
    ``params``: W, b, and gamma, beta of a normalized layer). Frozen layers get zero gradient.

    In training mode, as ``net.value_and_grad``: batch norm takes the batch's statistics (n >= 2, else ValueError)
    and the running statistics are neither read nor changed. dropout_step: None (no dropout, as
    ``net.value_and_grad``), or an int: dropout with the masks of that step (``dropout_mask``) for rows with ids
    row_ids ((n,) ints, default 0..n-1), the gradient of a compiled training step (``Trainer.train_step``: step
    ``optimizer.t``, rows 0..n-1).
    """
    X, _, _ = net.check_batch(X, Y)
    n = X.shape[0]
    w = np.ones(n) if sample_weight is None else check_sample_weight(sample_weight, n, np.float64)  # as the engine
    Y = _targets(net, Y, n)
    Ws = net.coefs

    A, Z, cache = _forward(net, X, True, dropout_step, row_ids)  # every A, and the output Z for a stable loss
    losses, delta = _loss_and_output_delta(net, Z, A[-1], Y)  # BP1
    loss_sum = float(w @ losses)
    delta = delta * (w / w.sum()).astype(net.dtype)[:, None]  # gradient of the (weighted) batch mean
    grads = np.zeros(net.n_params, dtype=net.dtype)
    lowest = min((l for l, t in enumerate(net.trainable) if t), default=len(Ws))
    if lowest < len(Ws):
        _backward(net, A, cache, delta, lowest, grads)  # BP2, BP3, BP4 from the top
    loss = loss_sum / w.sum() + 0.5 * net.l2 * sum(float((W.astype(np.float64) ** 2).sum()) for W in Ws)
    return float(loss), grads


def deltas(net, X, Y, dropout_step=None, row_ids=None):
    """The error of every layer, ``delta[l] = dC/dZ[l]``, for C the batch-mean loss of ``net`` on (X, Y).

    X: (n, n_in); Y: (n, n_out) or (n,) class labels for softmax. Returns a list of ``n_layers`` arrays, layer
    ``l`` of shape (n, fan_out[l]) and the network's dtype: BP1 for the output layer, then BP2 down to the first
    layer (every layer, frozen or not). The 1/n of the batch mean is included, so ``dW[l] = A[l-1].T @ delta[l]``
    (plus the L2 term) and ``db[l] = delta[l].sum(axis=0)``, as in ``value_and_grad``. Z[l] is the layer's
    GEMM output ``A[l-1] @ W[l] + b[l]`` (before any normalization); training mode and dropout as in
    ``value_and_grad``.
    """
    X, _, _ = net.check_batch(X, Y)
    n = X.shape[0]
    Y = _targets(net, Y, n)
    A, Z, cache = _forward(net, X, True, dropout_step, row_ids)
    _, delta = _loss_and_output_delta(net, Z, A[-1], Y)  # BP1
    return _backward(net, A, cache, delta / n, 0)


def batch_statistics(net, X, dropout_step=None, row_ids=None):
    """The statistics each batch-norm layer computes over the whole of X in training: per hidden layer, (mean,
    unbiased variance) as two (fan_out,) float64 arrays (``batch_var n / (n - 1)``, what PyTorch's BatchNorm1d puts
    in its running variance), or None for a layer without batch norm. ``net`` is not changed.

    After optimising a batch-norm network on a fixed data set (``fastbp.FlatObjective``, whose passes, as
    ``value_and_grad``'s, never touch the running statistics that ``predict`` uses), they are the running statistics
    to set. X: (n, n_in), n >= 2; dropout_step, row_ids: as for ``value_and_grad``.
    """
    X = np.asarray(X, dtype=net.dtype)
    n = X.shape[0]
    _, _, cache = _forward(net, X, True, dropout_step, row_ids)
    return [(layer["mean"], layer["var"] * n / (n - 1)) if layer["norm"] == "batch" else None for layer in cache]


def updated_running_stats(net, X, dropout_step=None, row_ids=None):
    """The running statistics of the batch-norm layers after one training step on X, as the compiled training step
    (``Trainer.train_step``, ``fit``) updates them in its forward pass: ``mean <- (1 - MOMENTUM) mean + MOMENTUM
    batch_mean`` and ``var <- (1 - MOMENTUM) var + MOMENTUM batch_var n / (n - 1)`` (the unbiased batch variance,
    ``batch_statistics``), PyTorch's BatchNorm1d with momentum 0.1. ``net`` is not changed.

    X: (n, n_in), n >= 2; dropout_step, row_ids: the dropout of that step, as for ``value_and_grad`` (the
    statistics of a layer depend on the dropout of the layers below). Returns (means, vars): lists with one entry per
    hidden layer, a (fan_out,) array of the network's dtype for a batch-norm layer, None for the others.
    """
    means, variances = [], []
    for l, stats in enumerate(batch_statistics(net, X, dropout_step, row_ids)):
        if stats is None:
            means.append(None)
            variances.append(None)
            continue
        mean = (1 - MOMENTUM) * net.running_means[l].astype(np.float64) + MOMENTUM * stats[0]
        var = (1 - MOMENTUM) * net.running_vars[l].astype(np.float64) + MOMENTUM * stats[1]
        means.append(mean.astype(net.dtype))
        variances.append(var.astype(net.dtype))
    return means, variances
