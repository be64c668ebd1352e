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
"""

import numpy as np

from .kernels.activations import LEAKY_SLOPE


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
}

#: f'(z) written through the output a = f(z), as in the compiled kernels.
DERIVATIVES = {
    "identity": lambda A: np.ones_like(A),
    "sigmoid": lambda A: A * (1 - A),
    "tanh": lambda A: 1 - A**2,
    "relu": lambda A: (A > 0).astype(A.dtype),
    "leaky_relu": lambda A: np.where(A > 0, 1, LEAKY_SLOPE).astype(A.dtype),
}


def round_bf16(a):
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32; NaN stays NaN."""
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


def forward(net, X):
    """Activations of every layer: a list ``[A[0] = X, A[1], ..., A[L]]`` of (n, width) arrays."""
    X = np.asarray(X, dtype=net.dtype)
    names = [*net.activations, net.output]
    A = [X]
    for W, b, name in zip(net.coefs, net.intercepts, names, strict=True):
        A.append(ACTIVATIONS[name](_mm(net, A[-1], W) + b))
    return A


def predict(net, X):
    """Network output f(... f(X @ W1 + b1) ...) as an (n, n_out) array."""
    return forward(net, X)[-1]


def _loss_and_output_delta(net, Z, A, Y):
    """Per-sample losses (n,), and BP1 ``delta[L] = dC/dZ[L]`` for the summed loss."""
    if net.loss == "cross_entropy":  # softmax: -sum y log p, with log p = z - logsumexp(z)
        z_max = Z.max(axis=1, keepdims=True)
        lse = z_max + np.log(np.exp(Z - z_max).sum(axis=1, keepdims=True))
        return (Y * (lse - Z)).sum(axis=1), A * Y.sum(axis=1, keepdims=True) - Y  # = A - Y when rows of Y sum to 1
    if net.loss == "binary_cross_entropy":  # sigmoid: -y log a - (1 - y) log(1 - a), in terms of z
        return (np.maximum(Z, 0) - Y * Z + np.log1p(np.exp(-np.abs(Z)))).sum(axis=1), A - Y
    grad_A = A - Y  # squared error 1/2 ||a - y||^2: dC/dA = a - y
    loss = 0.5 * (grad_A**2).sum(axis=1)
    if net.output == "softmax":  # Jacobian of softmax: dC/dz_j = a_j (g_j - sum_k g_k a_k)
        return loss, A * (grad_A - (grad_A * A).sum(axis=1, keepdims=True))
    return loss, grad_A * DERIVATIVES[net.output](A)  # BP1


def value_and_grad(net, X, Y, sample_weight=None):
    """Loss and flat gradient of ``net`` on the batch (X, Y), in NumPy: the oracle for ``net.value_and_grad``.

    X: (n, n_in); Y: (n, n_out) targets or (n,) class labels for softmax; sample_weight: (n,) or None (weighted
    mean over the batch). Returns (loss: float, grads: (n_params,) array of the network's dtype). Frozen layers get
    zero gradient.
    """
    X, _, _ = net.check_batch(X, Y)
    n = X.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    Y = _targets(net, Y, n)
    Ws, names = net.coefs, [*net.activations, net.output]

    # Forward, keeping every A (and the output layer's Z for a stable loss).
    A = [X]
    for W, b, name in zip(Ws[:-1], net.intercepts[:-1], names[:-1], strict=True):
        A.append(ACTIVATIONS[name](_mm(net, A[-1], W) + b))
    Z = _mm(net, A[-1], Ws[-1]) + net.intercepts[-1]
    A.append(ACTIVATIONS[names[-1]](Z))

    losses, delta = _loss_and_output_delta(net, Z, A[-1], Y)  # BP1
    loss_sum = float(w @ losses)
    delta = delta * (w / w.sum()).astype(net.dtype)[:, None]  # gradient of the (weighted) batch mean
    grads = np.zeros(net.n_params, dtype=net.dtype)
    dWs, dbs = net.unflatten(grads)
    lowest = min((l for l, t in enumerate(net.trainable) if t), default=len(Ws))
    for l in range(len(Ws) - 1, lowest - 1, -1):
        if net.trainable[l]:
            dbs[l][...] = delta.sum(axis=0)  # BP3
            dWs[l][...] = _mm(net, A[l].T, delta) + net.l2 * Ws[l]  # BP4 (+ L2)
        if l > lowest:
            delta = _mm(net, delta, Ws[l].T) * DERIVATIVES[names[l - 1]](A[l])  # BP2
    loss = loss_sum / w.sum() + 0.5 * net.l2 * sum(float((W.astype(np.float64) ** 2).sum()) for W in Ws)
    return float(loss), grads


def deltas(net, X, Y):
    """The error of every layer, ``delta[l] = dC/dZ[l]``, for C the batch-mean loss of ``net`` on (X, Y).

    X: (n, n_in); Y: (n, n_out) or (n,) class labels for softmax. Returns a list of ``n_layers`` arrays, layer
    ``l`` of shape (n, fan_out[l]) and the network's dtype: BP1 for the output layer, then BP2 down to the first
    layer (every layer, frozen or not). The 1/n of the batch mean is included, so ``dW[l] = A[l-1].T @ delta[l]``
    (plus the L2 term) and ``db[l] = delta[l].sum(axis=0)``, as in :func:`value_and_grad`.
    """
    X, _, _ = net.check_batch(X, Y)
    n = X.shape[0]
    Y = _targets(net, Y, n)
    A = forward(net, X)
    Z = _mm(net, A[-2], net.coefs[-1]) + net.intercepts[-1]  # the output pre-activation, for the stable loss forms
    _, delta = _loss_and_output_delta(net, Z, A[-1], Y)  # BP1
    out = [delta / n]
    names = [*net.activations, net.output]
    for l in range(net.n_layers - 1, 0, -1):
        out.append(_mm(net, out[-1], net.coefs[l].T) * DERIVATIVES[names[l - 1]](A[l]))  # BP2
    return out[::-1]
