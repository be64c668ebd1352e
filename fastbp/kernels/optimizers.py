"""Fused optimizer updates over the flat buffers, learning-rate schedules, and gradient norms.

One loop per layer runs over that layer's weights and then its bias, gamma and beta (adjacent in ``params``; gamma
and beta only for a normalized layer, never decayed, like the bias), reading the current parameters, the gradient
and the optimizer state, and writing the new parameters to ``p_next`` (the other buffer of the ping-pong pair, see
epoch.py) and the new state in place. Frozen layers are skipped.
``state`` has one row per state vector (velocity; Adam's m and v), each laid out like ``params``.

Updates (g = clip * grad, plus ``weight_decay * p`` on weights when the decay is coupled, as an L2 term):

- SGD: ``p <- p - lr g`` (docs/background.md: theta <- theta - eta grad).
- momentum: ``v <- mu v - lr g; p <- p + v``; Nesterov: ``v <- mu v - lr g; p <- p + mu v - lr g``.
- Adam (Kingma & Ba, Algorithm 1): ``m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
  p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``; AdamW adds the decoupled ``- lr wd p``. With
  ``eps_hat`` the epsilon is added before the bias correction, ``p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) m /
  (sqrt(v) + eps)`` (the paper's "efficient" form, used by scikit-learn and Keras).
"""

import math

import numpy as np

from .._config import kernel, leaf, like
from .gemm import _to_bf16
from .layout import B_OFFSET, PARAM_END, TRAINABLE, W_OFFSET

SGD, ADAM = 0, 1
# hyper-parameter vector (float64) of each kind
SGD_MOMENTUM, SGD_NESTEROV, SGD_WEIGHT_DECAY = 0, 1, 2
ADAM_BETA1, ADAM_BETA2, ADAM_EPS, ADAM_WEIGHT_DECAY, ADAM_DECOUPLED, ADAM_EPS_HAT = 0, 1, 2, 3, 4, 5

CONSTANT, STEP, INVSCALING, COSINE = 0, 1, 2, 3

# Weights updated per piece before the piece's bfloat16 twin is written: 16 kB of float32, in L1 between the passes
# (one copy of each update loop, not one with the twin and one without).
TWIN_PIECE = 4096


@kernel
def _learning_rate(code, lr, schedule, t):
    """Learning rate of step t (0-based) under a schedule.

    NumPy: constant ``lr``; step ``lr * gamma ** (t // step_size)`` (schedule = [step_size, gamma]);
    invscaling ``lr / (t + 1) ** power_t`` ([power_t]); cosine
    ``lr_min + (lr - lr_min) (1 + cos(pi min(t, T) / T)) / 2`` ([T, lr_min]). Returns float. Thread-safe.
    """
    if code == STEP:
        return lr * schedule[1] ** (t // int(schedule[0]))
    if code == INVSCALING:
        return lr / (t + 1.0) ** schedule[0]
    if code == COSINE:
        T = schedule[0]
        lr_min = schedule[1]
        return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * min(t, T) / T))
    return lr


@leaf
def _sgd_range(p_cur, grads, velocity, p_next, lr, clip, mu, nesterov, decay):
    """SGD / momentum / Nesterov on one contiguous range; returns the squared norm of ``grads`` on it (fused here
    so that the gradient is read once when there is no clipping) (all arguments are equal-length 1-D views; looping
    over range(len) rather than
    range(start, stop) lets LLVM vectorise: 8x faster). The test of ``mu`` is taken once, outside the loops: left
    inside, the loop vectorises only when LLVM unswitches it, which it stops doing in a larger function."""
    lr_, clip_, mu_, decay_ = like(lr, p_cur), like(clip, p_cur), like(mu, p_cur), like(decay, p_cur)
    sq = 0.0
    if mu == 0.0:
        for i in range(p_cur.shape[0]):
            p = p_cur[i]
            raw = grads[i]
            sq += np.float64(raw) * raw  # in float64: a float32 square overflows long before the gradient does
            p_next[i] = p - lr_ * (clip_ * raw + decay_ * p)
        return sq
    for i in range(p_cur.shape[0]):
        p = p_cur[i]
        raw = grads[i]
        sq += np.float64(raw) * raw
        g = clip_ * raw + decay_ * p
        v = mu_ * velocity[i] - lr_ * g
        velocity[i] = v
        p_next[i] = p + (mu_ * v - lr_ * g if nesterov else v)
    return sq


@leaf
def _adam_moments(grads, m, v, clip, b1, b2, p, decay):
    """m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2 with g = clip * grads + decay * p (equal-length 1-D
    views; decay is the coupled L2 term, 0 for AdamW)."""
    clip_, b1_, b2_, c1_, c2_ = like(clip, m), like(b1, m), like(b2, m), like(1.0 - b1, m), like(1.0 - b2, m)
    decay_ = like(decay, m)
    sq = 0.0
    for i in range(m.shape[0]):
        raw = grads[i]
        sq += np.float64(raw) * raw  # in float64: a float32 square overflows long before the gradient does
        g = clip_ * raw + decay_ * p[i]
        m[i] = b1_ * m[i] + c1_ * g
        v[i] = b2_ * v[i] + c2_ * g * g
    return sq


@leaf
def _adam_step(p_cur, m, v, p_next, lr_c1, inv_sqrt_c2, eps, decay):
    """p_next = p - lr_c1 m / (sqrt(v) inv_sqrt_c2 + eps) - decay p, which equals
    p - lr (m / c1) / (sqrt(v / c2) + eps) - decay p with lr_c1 = lr / c1 and inv_sqrt_c2 = 1 / sqrt(c2)."""
    a, s, e, d = like(lr_c1, p_cur), like(inv_sqrt_c2, p_cur), like(eps, p_cur), like(decay, p_cur)
    for i in range(p_cur.shape[0]):
        p = p_cur[i]
        p_next[i] = p - a * m[i] / (math.sqrt(v[i]) * s + e) - d * p


@kernel
def _update(kind, hyper, lr, t, clip, layout, p_cur, grads, state, p_next, p_next16, sq_norms, with_norms):
    """One optimizer step on every trainable layer: ``p_next = update(p_cur, clip * grads)``, state in place.

    NumPy (SGD): ``p_next[...] = p_cur - lr * clip * grads`` on trainable ranges; see the module docstring for
    momentum, Nesterov, Adam and AdamW. kind: SGD or ADAM; hyper: float64 vector (see the index constants);
    lr: float; t: int, 1-based step number (Adam's bias correction); clip: float factor on the gradient;
    layout: (L, 12) int64; p_cur, grads, p_next: (n_params,), p_next is the output and a different buffer from
    p_cur; state: (rows, n_params), updated in place. p_next16: (n_params,) uint16, the bfloat16 twin of the
    weights, written with p_next's weights in the same pass, or empty. Frozen layers' p_next is not written (nor
    their twin). When ``with_norms``,
    each trainable layer's squared gradient norm is added into ``sq_norms`` (L,) float64, in the same pass (when
    clipping, the norms are needed before the update: see :func:`_grad_norms`). Returns the total squared norm
    of the trainable gradient. Thread-safe for distinct outputs.
    """
    b1, b2 = hyper[ADAM_BETA1], hyper[ADAM_BETA2]
    c1, c2 = 1.0 - b1**t, 1.0 - b2**t  # Adam's bias corrections (unused by SGD)
    eps = 0.0
    if kind == ADAM:  # eps_hat: sqrt(v) + eps = sqrt(c2) (sqrt(v / c2) + eps / sqrt(c2))
        eps = hyper[ADAM_EPS] / math.sqrt(c2) if hyper[ADAM_EPS_HAT] != 0.0 else hyper[ADAM_EPS]
    total = 0.0
    for l in range(layout.shape[0]):
        if not layout[l, TRAINABLE]:
            continue
        sq = 0.0
        w, b = layout[l, W_OFFSET], layout[l, B_OFFSET]
        end = layout[l, PARAM_END]  # [w, b) are the weights, [b, end) the bias, then gamma and beta if normalized
        for start, stop, decay_on in ((w, b, 1.0), (b, end, 0.0)):  # weights are decayed, the rest not
            twin = decay_on == 1.0 and p_next16.shape[0] > 0  # the weights have a bfloat16 twin, biases none
            # with a twin, the range in pieces, each piece's twin written while the piece is in L1
            piece = TWIN_PIECE if twin else max(stop - start, 1)
            for lo in range(start, stop, piece):
                hi = min(lo + piece, stop)
                p, g, q = p_cur[lo:hi], grads[lo:hi], p_next[lo:hi]
                if kind == ADAM:
                    m, v = state[0, lo:hi], state[1, lo:hi]
                    decay = decay_on * hyper[ADAM_WEIGHT_DECAY]
                    decoupled = hyper[ADAM_DECOUPLED] != 0.0  # AdamW: decay outside the adaptive step
                    sq += _adam_moments(g, m, v, clip, b1, b2, p, 0.0 if decoupled else decay)
                    _adam_step(p, m, v, q, lr / c1, 1.0 / math.sqrt(c2), eps, lr * decay if decoupled else 0.0)
                else:
                    mu = hyper[SGD_MOMENTUM]
                    velocity = state[0, lo:hi] if mu != 0.0 else g  # no state row without momentum (unused)
                    nesterov, decay = hyper[SGD_NESTEROV] != 0.0, decay_on * hyper[SGD_WEIGHT_DECAY]
                    sq += _sgd_range(p, g, velocity, q, lr, clip, mu, nesterov, decay)
                if twin:
                    _to_bf16(q, p_next16[lo:hi])
        total += sq
        if with_norms:
            sq_norms[l] += sq
    return total


@kernel
def _grad_norms(layout, grads, sq_norms):
    """Squared L2 norm of each trainable layer's gradient (W, b, gamma, beta), added into ``sq_norms``; returns the
    total.

    NumPy: ``sq = [(grads[w:end] ** 2).sum() for each layer]; sq_norms += sq; return sum(sq)`` (frozen layers
    count 0). grads: (n_params,); sq_norms: (L,) float64, output (accumulated). Thread-safe for distinct outputs.
    """
    total = 0.0
    for l in range(layout.shape[0]):
        if not layout[l, TRAINABLE]:
            continue
        start = layout[l, W_OFFSET]
        stop = layout[l, PARAM_END]  # W, b, and gamma and beta of a normalized layer
        g = grads[start:stop]
        sq = 0.0
        for i in range(g.shape[0]):
            sq += np.float64(g[i]) * g[i]
        sq_norms[l] += sq
        total += sq
    return total
