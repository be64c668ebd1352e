"""Fused optimizer updates over the flat buffers, learning-rate schedules, and gradient norms.

One loop per layer runs over that layer's weights and then its bias (they are adjacent in ``params``), reading the
current parameters, the gradient and the optimizer state, and writing the new parameters to ``p_next`` (which
may be ``p_cur`` itself) and the new state in place. Frozen layers are skipped. ``state`` has one row per state
vector (velocity; Adam's m and v), each laid out like ``params``.

Updates (g = clip * grad, plus ``weight_decay * p`` on weights when the decay is coupled, as an L2 term):

- SGD: ``p <- p - lr g`` (the notes' theta <- theta - eta grad).
- momentum: ``v <- mu v - lr g; p <- p + v``; Nesterov: ``v <- mu v - lr g; p <- p + mu v - lr g``.
- Adam (Kingma & Ba, Algorithm 1): ``m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
  p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``; AdamW adds the decoupled ``- lr wd p``.
"""

import math

from .._config import kernel, leaf
from .layout import B_OFFSET, FAN_OUT, TRAINABLE, W_OFFSET

SGD, ADAM = 0, 1
# hyper-parameter vector (float64) of each kind
SGD_MOMENTUM, SGD_NESTEROV, SGD_WEIGHT_DECAY = 0, 1, 2
ADAM_BETA1, ADAM_BETA2, ADAM_EPS, ADAM_WEIGHT_DECAY, ADAM_DECOUPLED = 0, 1, 2, 3, 4

CONSTANT, STEP, INVSCALING, COSINE = 0, 1, 2, 3


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
def _sgd_range(p_cur, grads, velocity, p_next, start, stop, lr, clip, mu, nesterov, decay):
    for i in range(start, stop):
        p = p_cur[i]
        g = clip * grads[i] + decay * p
        if mu == 0.0:
            p_next[i] = p - lr * g
        else:
            v = mu * velocity[i] - lr * g
            velocity[i] = v
            p_next[i] = p + (mu * v - lr * g if nesterov else v)


@leaf
def _adam_range(p_cur, grads, m, v, p_next, start, stop, lr, clip, b1, b2, eps, c1, c2, decay, decoupled):
    for i in range(start, stop):
        p = p_cur[i]
        g = clip * grads[i]
        if not decoupled:
            g += decay * p
        m_i = b1 * m[i] + (1.0 - b1) * g
        v_i = b2 * v[i] + (1.0 - b2) * g * g
        m[i] = m_i
        v[i] = v_i
        step = (m_i / c1) / (math.sqrt(v_i / c2) + eps)
        if decoupled:
            step += decay * p
        p_next[i] = p - lr * step


@kernel
def _update(kind, hyper, lr, t, clip, layout, p_cur, grads, state, p_next):
    """One optimizer step on every trainable layer: ``p_next = update(p_cur, clip * grads)``, state in place.

    NumPy (SGD): ``p_next[...] = p_cur - lr * clip * grads`` on trainable ranges; see the module docstring for
    momentum, Nesterov, Adam and AdamW. kind: SGD or ADAM; hyper: float64 vector (see the index constants);
    lr: float; t: int, 1-based step number (Adam's bias correction); clip: float factor on the gradient;
    layout: (L, 6) int64; p_cur, grads, p_next: (n_params,), p_next is the output and may be p_cur;
    state: (rows, n_params), updated in place. Frozen layers' p_next is not written. Thread-safe for distinct
    outputs.
    """
    b1, b2 = hyper[ADAM_BETA1], hyper[ADAM_BETA2]
    c1, c2 = 1.0 - b1**t, 1.0 - b2**t  # Adam's bias corrections (unused by SGD)
    for l in range(layout.shape[0]):
        if not layout[l, TRAINABLE]:
            continue
        w, b = layout[l, W_OFFSET], layout[l, B_OFFSET]
        end = b + layout[l, FAN_OUT]  # W then b: [w, b) are the weights, [b, end) the bias
        if kind == ADAM:
            eps, decay, decoupled = hyper[ADAM_EPS], hyper[ADAM_WEIGHT_DECAY], hyper[ADAM_DECOUPLED] != 0.0
            _adam_range(p_cur, grads, state[0], state[1], p_next, w, b, lr, clip, b1, b2, eps, c1, c2, decay, decoupled)
            _adam_range(p_cur, grads, state[0], state[1], p_next, b, end, lr, clip, b1, b2, eps, c1, c2, 0.0, decoupled)
        else:
            mu, nesterov, decay = hyper[SGD_MOMENTUM], hyper[SGD_NESTEROV] != 0.0, hyper[SGD_WEIGHT_DECAY]
            velocity = state[0] if mu != 0.0 else grads  # no state row without momentum (never written then)
            _sgd_range(p_cur, grads, velocity, p_next, w, b, lr, clip, mu, nesterov, decay)
            _sgd_range(p_cur, grads, velocity, p_next, b, end, lr, clip, mu, nesterov, 0.0)


@kernel
def _grad_norms(layout, grads, sq_norms):
    """Squared L2 norm of each trainable layer's gradient (W and b), added into ``sq_norms``; returns the total.

    NumPy: ``sq = [(grads[w:end] ** 2).sum() for each layer]; sq_norms += sq; return sum(sq)`` (frozen layers
    count 0). grads: (n_params,); sq_norms: (L,) float64, output (accumulated). Thread-safe for distinct outputs.
    """
    total = 0.0
    for l in range(layout.shape[0]):
        if not layout[l, TRAINABLE]:
            continue
        start = layout[l, W_OFFSET]
        stop = layout[l, B_OFFSET] + layout[l, FAN_OUT]
        sq = 0.0
        for i in range(start, stop):
            sq += grads[i] * grads[i]
        sq_norms[l] += sq
        total += sq
    return total
