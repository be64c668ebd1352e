"""One optimizer step with its checks, the same for every training loop: the compiled epoch loop (epoch.py) and
the data-parallel trainer (:mod:`fastbp.distributed`, which all-reduces the gradient before it).

A step takes the batch loss and gradient computed from the parameters ``cur`` and writes the updated parameters
to ``nxt`` (the other buffer of the ping-pong pair: the update reads one and writes the other, which keeps the
parameters of the previous step at hand for a divergence). In order: the divergence check of the loss (not finite,
or larger than ``max_loss``: a loss many orders of magnitude above its initial value is divergence too, even when
log-sum-exp keeps it finite), the learning rate of the step, the global gradient norm and clipping, the fused update
(optimizers.py), and the check that the gradient was finite (no update is kept when it was not).
"""

import math

import numpy as np

from .._config import finite, kernel
from .boundary import _array1d, _array2d, _network_arrays
from .layout import _copy
from .optimizers import _grad_norms, _learning_rate, _update

#: What a step returns; anything but OK stops training (the trainer raises DivergenceError).
OK, NONFINITE_LOSS, NONFINITE_GRADIENT, LOSS_TOO_LARGE = 0, 1, 2, 3


@kernel
def _step(
    loss,
    max_loss,
    kind,
    hyper,
    schedule_code,
    schedule,
    lr,
    clip_norm,
    t,
    layout,
    cur,
    grads,
    state,
    nxt,
    twin,
    sq_norms,
):
    """One optimizer step after a batch whose loss and gradient were computed from ``cur``; returns a status.

    NumPy: ``if not isfinite(loss) or loss > max_loss: return divergence; g = grads * min(1, clip_norm /
    ||grads||); nxt[...] = update(cur, g); return OK if isfinite(||grads||) else NONFINITE_GRADIENT``.

    loss, max_loss: float. kind, hyper, schedule_code, schedule, lr: the optimizer (see optimizers.py); clip_norm:
    float, 0 for no clipping; t: int, the number of steps done before this one (0-based, for the schedule; Adam's
    bias correction counts t + 1). layout: (L, 12) int64. cur, grads: (n_params,), read; nxt: (n_params,), output:
    the new parameters when OK, a copy of ``cur`` for NONFINITE_GRADIENT, not written when the loss diverged (it
    still holds the previous step's parameters: the fallback). twin: (n_params,) uint16, the bfloat16 twin of the
    weights, written with nxt's when OK, or empty. state: (rows, n_params), updated in place.
    sq_norms: (L,) float64, each trainable layer's squared gradient norm added to it. Returns OK, NONFINITE_LOSS,
    LOSS_TOO_LARGE or NONFINITE_GRADIENT. Not thread-safe.
    """
    if not finite(loss):
        return NONFINITE_LOSS
    if loss > max_loss:
        return LOSS_TOO_LARGE
    lr_t = _learning_rate(schedule_code, lr, schedule, t)
    if clip_norm > 0.0:  # the norm is needed before the update
        sq = _grad_norms(layout, grads, sq_norms)
        norm = math.sqrt(sq)
        clip = clip_norm / norm if norm > clip_norm else 1.0
        if finite(sq):
            _update(kind, hyper, lr_t, t + 1, clip, layout, cur, grads, state, nxt, twin, sq_norms, np.int64(0))
    else:  # the norm is summed in the update's own pass over the gradient
        sq = _update(kind, hyper, lr_t, t + 1, 1.0, layout, cur, grads, state, nxt, twin, sq_norms, np.int64(1))
    if not finite(sq):
        _copy(cur, nxt)  # drop the update: the parameters before it stay the fallback
        return NONFINITE_GRADIENT
    return OK


@kernel
def _step_entry(
    marker,
    network,
    p_next,
    loss,
    max_loss,
    p_grads,
    kind,
    p_hyper,
    n_hyper,
    schedule_code,
    p_schedule,
    n_schedule,
    lr,
    clip_norm,
    t,
    p_state,
    n_state,
    p_sq_norms,
):
    """:func:`_step` on the buffers at the given addresses, for a training loop driven from Python: ``network`` is
    that of the parameters ``cur`` (boundary.py), nxt and grads (n_params,) at p_next and p_grads, the optimizer's
    hyper-parameters (n_hyper,) and schedule (n_schedule,) float64, its state (n_state, n_params), sq_norms (L,)
    float64. Returns the status (NumPy: as there). Not thread-safe."""
    cur, twin, layout, _, _ = _network_arrays(network, marker)
    n_params = cur.shape[0]
    return _step(
        loss,
        max_loss,
        kind,
        _array1d(p_hyper, n_hyper, np.float64(0)),
        schedule_code,
        _array1d(p_schedule, n_schedule, np.float64(0)),
        lr,
        clip_norm,
        t,
        layout,
        cur,
        _array1d(p_grads, n_params, marker),
        _array2d(p_state, n_state, n_params, marker),
        _array1d(p_next, n_params, marker),
        twin,
        _array1d(p_sq_norms, layout.shape[0], np.float64(0)),
    )
