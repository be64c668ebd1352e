"""The output layer's error ``delta^L`` (BP1) fused with the loss value, and the L2 penalty.

Losses (per sample; the batch loss is the mean, plus ``l2 / 2 * sum(W**2)`` over weights only):

- softmax + cross-entropy: ``-sum_j y_j log p_j``, computed as ``lse(z) sum_j y_j - sum_j y_j z_j`` with the
  log-sum-exp ``lse``; canonical pair, ``delta = P - Y`` when each target row sums to 1 (labels, one-hot), and
  ``delta = P sum_j y_j - Y`` in general (soft or multi-hot targets).
- sigmoid + binary cross-entropy: ``sum_j max(z, 0) - y z + log(1 + exp(-|z|))`` (the logits form, exact for
  saturated units); canonical pair, ``delta = A - Y``.
- squared error ``1/2 ||a - y||^2`` with any output activation f: the general BP1 form
  ``delta = (A - Y) (.) f'(A)``; for softmax, whose Jacobian is not diagonal,
  ``delta_j = p_j (g_j - sum_k g_k p_k)`` with ``g = P - Y``. Identity output gives ``delta = A - Y``.
- exp + Poisson: the half Poisson deviance ``sum_j y log(y / a) - y + a`` with ``a = exp(z)`` (scikit-learn's
  ``loss="poisson"``, constant terms included, so a perfect fit has loss 0; ``y log y = 0`` at y = 0), computed as
  ``exp(z) - y z + (y log y - y)`` in float64 from the logit z, which stays finite while ``a`` underflows;
  canonical pair, ``delta = A - Y``. Targets are counts or rates, y >= 0 (a negative y makes the loss NaN, as
  scikit-learn's).

- ``log_loss`` and ``binary_log_loss`` (scikit-learn's names): the two cross-entropies above as scikit-learn
  computes their value, ``-sum_j y_j log(clip(p_j, eps, 1 - eps))`` and ``-sum_j y log(c) + (1 - y) log(1 - c)``
  with ``c = clip(a, eps, 1 - eps)``, eps the dtype's machine epsilon: a confidently wrong row adds at most
  ``-log(eps)`` (36.0 in float64) to the loss. The gradient (delta) is the cross-entropy's, unclipped, as
  scikit-learn's. The loss code is the cross-entropy's with the :data:`CLIPPED` bit.

With sample weights ``sw`` (n,), row i's loss and delta are multiplied by ``sw[i]`` and the batch loss is the
weighted mean ``sum_i sw_i loss_i / sum_i sw_i``; an empty ``sw`` means unit weights.

Every delta here is multiplied by ``weight = scale / n`` (``scale / sum(sw)`` with sample weights), so the 1/n
of the batch mean (and any micro-batch weight) is carried by delta into every gradient: BP3 and BP4 then need no
further scaling.
"""

import math

import numpy as np
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from .._config import kernel, leaf, like
from .activations import (
    EXP,
    IDENTITY,
    SIGMOID,
    SOFTMAX,
    _activate,
    _bias_shift_row,
    _derivative,
    _exp_block,
    _row_sum,
)

CROSS_ENTROPY, BINARY_CROSS_ENTROPY, SQUARED_ERROR, POISSON = 0, 1, 2, 3
#: The bit of a loss code that clips the probabilities in the loss value, as scikit-learn's log-loss does.
CLIPPED = 8

LOSSES = {
    "cross_entropy": CROSS_ENTROPY,
    "log_loss": CROSS_ENTROPY | CLIPPED,
    "binary_cross_entropy": BINARY_CROSS_ENTROPY,
    "binary_log_loss": BINARY_CROSS_ENTROPY | CLIPPED,
    "squared_error": SQUARED_ERROR,
    "mse": SQUARED_ERROR,
    "poisson": POISSON,
}


def _eps(arr):
    """The machine epsilon of ``arr``'s dtype, in compiled code only."""
    raise NotImplementedError("_eps() is for compiled code")


@overload(_eps, inline="always")
def _eps_impl(arr):
    eps = float(np.finfo(as_dtype(arr.dtype)).eps)
    return lambda arr: eps


@leaf
def _clip(p, eps):
    """``np.clip(p, eps, 1 - eps)`` in p's dtype, as scikit-learn's log-loss clips a probability (NaN stays NaN)."""
    high = like(1.0, p) - like(eps, p)
    if p < eps:
        return like(eps, p)
    return high if p > high else p


@leaf
def _target(Y, labels, i, j):
    """y_ij: from integer class labels (one-hot) when ``labels`` is non-empty, else from the array Y."""
    if labels.shape[0] > 0:
        return 1.0 if labels[i] == j else 0.0
    return Y[i, j]


@leaf
def _row_weight(sw, i):
    """Sample weight of row i: ``sw[i]``, or 1 when ``sw`` is empty."""
    if sw.shape[0] > 0:
        return sw[i]
    return 1.0


@leaf
def _target_sum(Y, labels, i):
    """sum_j y_ij: 1 for a class label, the row sum of Y otherwise (soft, multi-hot or zero targets)."""
    if labels.shape[0] > 0:
        return 1.0
    y_sum = 0.0
    for j in range(Y.shape[1]):
        y_sum += Y[i, j]
    return y_sum


@leaf
def _softmax_loss_delta(Z, b, Y, labels, sw, cross_entropy, clipped, weight, delta, db, with_db):
    """Softmax output: Z <- P, delta <- weight * dC/dZ, db += column sums of delta; returns the summed loss
    (with ``clipped``, the cross-entropy's value from the clipped probabilities, as scikit-learn's log_loss).

    Three passes, so that the exponentials run in one vectorised loop over the whole block (:func:`_exp_block`):
    per row, the logits shifted by their maximum (:func:`_bias_shift_row`); the exps; per row, the sum, P, delta.
    The cross-entropy ``sum_j y_j (lse - z_j) = (max + log(sum)) sum(y) - y . z`` needs z only through ``y . z``
    and ``sum(y)``, taken (in float64) in the first pass before z is shifted; ``log(sum) sum(y)`` is added in the
    third. The loss gets ``0 * sum(z)``, which is NaN when any logit is infinite or NaN: a diverged network's loss
    is then never finite, whatever the targets (an overflowed logit of another class than the label would otherwise
    drop out of the loss).
    """
    n, m = Z.shape
    loss = 0.0
    for i in range(n):
        y_dot_z = 0.0
        if labels.shape[0] > 0:
            y_dot_z = Z[i, labels[i]] + b[labels[i]]
        else:
            for j in range(m):
                # z rounded to the dtype as the stored logit is, then the product in float64: lse sum(y) - y . z
                # cancels when the logits are large, so y . z must not carry float32 rounding
                y_dot_z += np.float64(Y[i, j]) * (Z[i, j] + b[j])
        z_max, z_sum = _bias_shift_row(Z, b, i)
        row = 0.0 * z_sum
        if cross_entropy and not clipped:
            row += z_max * _target_sum(Y, labels, i) - y_dot_z
        loss += _row_weight(sw, i) * row
    _exp_block(Z)
    eps = _eps(Z)
    for i in range(n):
        w_i = _row_weight(sw, i)
        w_row = weight * w_i
        total = _row_sum(Z, i)
        inv = like(1.0 / total, Z)
        if cross_entropy:
            # targets that are not a distribution (soft, multi-hot, zero rows): dC/dz = p sum(y) - y
            y_sum = _target_sum(Y, labels, i)
            if not clipped:
                loss += w_i * math.log(total) * y_sum
            scale = like(w_row * y_sum, Z)
            for j in range(m):
                p = Z[i, j] * inv
                Z[i, j] = p
                delta[i, j] = scale * p
            if clipped:  # -sum_j y_j log(clip(p_j)), y_j = 0 terms left out (scikit-learn's xlogy)
                if labels.shape[0] > 0:
                    loss -= w_i * math.log(np.float64(_clip(Z[i, labels[i]], eps)))
                else:
                    for j in range(m):
                        if Y[i, j] != 0.0:
                            loss -= w_i * np.float64(Y[i, j]) * math.log(np.float64(_clip(Z[i, j], eps)))
            # - w y, outside the loop above so that it has no branch
            if labels.shape[0] > 0:
                delta[i, labels[i]] -= w_row
            else:
                for j in range(m):
                    delta[i, j] -= w_row * Y[i, j]
        else:
            row = 0.0
            g_dot_p = 0.0
            for j in range(m):
                p = Z[i, j] * inv
                Z[i, j] = p
                g = p - _target(Y, labels, i, j)
                row += 0.5 * g * g
                g_dot_p += g * p
                delta[i, j] = g
            for j in range(m):
                delta[i, j] = w_row * Z[i, j] * (delta[i, j] - g_dot_p)
            loss += w_i * row
    if with_db:
        for i in range(n):
            for j in range(m):
                db[j] += delta[i, j]
    return loss


@leaf
def _sigmoid_bce_loss_delta(Z, b, Y, labels, sw, clipped, weight, delta, db, with_db):
    """Sigmoid output with binary cross-entropy: Z <- A, delta <- weight * (A - Y), returns the summed loss (with
    ``clipped``, from the clipped probabilities, as scikit-learn's binary log-loss)."""
    n, m = Z.shape
    loss = 0.0
    eps = _eps(Z)
    for i in range(n):
        w_i = _row_weight(sw, i)
        w_row = weight * w_i
        for j in range(m):
            z = Z[i, j] + b[j]
            y = _target(Y, labels, i, j)
            a = _activate(z, SIGMOID)
            Z[i, j] = a
            if clipped:
                # 1 - clip(a) in the dtype, as scikit-learn; 0 * z: an infinite or NaN logit makes the loss NaN
                c = _clip(a, eps)
                y64 = np.float64(y)
                term = y64 * math.log(np.float64(c)) + (1.0 - y64) * math.log(np.float64(like(1.0, a) - c))
                loss += w_i * (0.0 * z - term)
            else:
                loss += w_i * (max(z, 0.0) - y * z + math.log1p(math.exp(-abs(z))))
            d = w_row * (a - y)
            delta[i, j] = d
            if with_db:
                db[j] += d
    return loss


@leaf
def _exp_poisson_loss_delta(Z, b, Y, labels, sw, weight, delta, db, with_db):
    """Exp output with the half Poisson deviance: Z <- A = exp(Z + b), delta <- weight * (A - Y), returns the
    summed loss ``sum_ij sw_i (exp(z) - y z + y log y - y)``, in float64 (the terms cancel near a good fit)."""
    n, m = Z.shape
    loss = 0.0
    for i in range(n):
        w_i = _row_weight(sw, i)
        w_row = weight * w_i
        for j in range(m):
            z = Z[i, j] + b[j]
            y = _target(Y, labels, i, j)
            a = _activate(z, EXP)
            Z[i, j] = a
            y64, z64 = np.float64(y), np.float64(z)
            # 0 log 0 = 0; y z is kept at y = 0, so that an infinite or NaN logit makes the loss NaN. exp(z) in
            # float64 too: near a good fit the terms cancel, and a's float32 rounding would be the loss's error
            ylogy = y64 * math.log(y64) if y64 != 0.0 else 0.0
            loss += w_i * (math.exp(z64) - y64 * z64 + (ylogy - y64))
            d = w_row * (a - y)
            delta[i, j] = d
            if with_db:
                db[j] += d
    return loss


@leaf
def _squared_error_loss_delta(Z, b, Y, labels, sw, code, weight, delta, db, with_db):
    """Elementwise output f with squared error (BP1): Z <- A, delta <- weight (A - Y) f'(A), returns loss."""
    n, m = Z.shape
    loss = 0.0
    for i in range(n):
        w_i = _row_weight(sw, i)
        w_row = weight * w_i
        for j in range(m):
            a = _activate(Z[i, j] + b[j], code)
            Z[i, j] = a
            g = a - _target(Y, labels, i, j)
            loss += w_i * 0.5 * g * g
            d = w_row * g * _derivative(a, code)
            delta[i, j] = d
            if with_db:
                db[j] += d
    return loss


@kernel
def _output_delta(Z, b, Y, labels, sw, code, loss_code, weight, delta, db, with_db, accumulate):
    """Output layer epilogue fused with the loss: bias, activation, loss value, BP1 and BP3 in one pass.

    NumPy (softmax + cross-entropy): ``P = softmax(Z + b); loss = -(Y * log P).sum();
    delta[...] = weight * (P - Y); db[...] = delta.sum(0)``; see the module docstring for the other pairs.

    Z: (n, m), holds ``A_prev @ W`` on entry and the output activation A on exit. b: (m,). Y: (n, m) targets,
    or (0, m) when ``labels`` (n,) int64 class indices are given (then ``labels`` is empty otherwise). sw: (n,)
    sample weights of Z's dtype, or (0,) for unit weights. code: output activation code; loss_code:
    CROSS_ENTROPY, BINARY_CROSS_ENTROPY (either with the CLIPPED bit), SQUARED_ERROR or POISSON (validated pairs
    only; POISSON with EXP).
    weight: float, scale / n (scale / sum(sw) with weights). delta: (n, m), output. db: (m,), output when
    ``with_db`` (added to when ``accumulate``). Returns the loss summed over the n samples (float64;
    sample-weighted, not multiplied by ``weight``). Thread-safe for distinct outputs.
    """
    if with_db and not accumulate:
        db[:] = 0.0
    clipped = (loss_code & CLIPPED) != 0
    base = loss_code & ~CLIPPED
    if code == SOFTMAX:
        loss = _softmax_loss_delta(Z, b, Y, labels, sw, base == CROSS_ENTROPY, clipped, weight, delta, db, with_db)
    elif base == BINARY_CROSS_ENTROPY:
        loss = _sigmoid_bce_loss_delta(Z, b, Y, labels, sw, clipped, weight, delta, db, with_db)
    elif loss_code == POISSON:
        loss = _exp_poisson_loss_delta(Z, b, Y, labels, sw, weight, delta, db, with_db)
    elif code == IDENTITY:
        loss = _squared_error_loss_delta(Z, b, Y, labels, sw, IDENTITY, weight, delta, db, with_db)
    else:
        # The general BP1 form for the other output activations, with the code left a run-time value: output
        # layers are narrow, and one loop instead of four specialised ones shortens compilation.
        loss = _squared_error_loss_delta(Z, b, Y, labels, sw, code, weight, delta, db, with_db)
    return loss


@kernel
def _l2_penalty(W, dW, coef, with_grad, accumulate):
    """L2 term of one layer: returns ``sum(W**2)`` and, when ``with_grad``, sets ``dW (+)= coef * W``.

    NumPy: ``dW[...] = (dW if accumulate else 0) + coef * W; return (W**2).sum()``. W, dW: (fan_in, fan_out);
    dW is the output. coef: float (l2 times the micro-batch scale). Thread-safe for distinct dW.
    """
    total = 0.0
    n, m = W.shape
    for i in range(n):
        for j in range(m):
            w = W[i, j]
            total += w * w
            if with_grad:
                if accumulate:
                    dW[i, j] += coef * w
                else:
                    dW[i, j] = coef * w
    return total
