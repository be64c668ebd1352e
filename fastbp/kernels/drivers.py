"""Drivers: the loss and gradient of a batch, and prediction, over the layout table.

Each driver takes flat buffers and the layout, so ONE compiled specialization per dtype serves every depth and
width. Nothing is allocated: all arrays are views into ``params``, ``grads`` and the workspace. The passes
themselves are :func:`~fastbp.kernels.forward._forward_hidden` and :func:`~fastbp.kernels.backward._backward`,
separately compiled functions that every entry point shares.
"""

from .._config import kernel, leaf
from .backward import _backward, _wants
from .boundary import _array1d, _array2d, _batch_arrays, _network_arrays, _workspace_arrays
from .forward import _forward_into, _forward_to_logits
from .layout import ACTIVATION, FAN_IN, FAN_OUT, _layer_view, _matrix_at, _rows_view
from .loss import _output_delta


@kernel
def _predict(gemm, params, layout, X, acts, out):
    """``out[...] = network(X)`` in chunks of as many rows as the workspace holds.

    NumPy: ``out[...] = reference.predict(net, X)``. gemm: GEMM address; X: (n, n_in); out: (n, n_out), output;
    acts: 1-D workspace (see :func:`~fastbp.kernels.forward._forward_hidden`), overwritten. Not thread-safe for a
    shared workspace.
    """
    n = X.shape[0]
    width = 0
    for l in range(layout.shape[0]):
        width += layout[l, FAN_OUT]
    chunk = max(1, acts.shape[0] // width)
    n_out = out.shape[1]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        _forward_into(gemm, params, layout, X[start:stop], acts, _matrix_at(out, start * n_out, stop - start, n_out))


@leaf
def _value_and_grad(
    gemm, params, grads, layout, loss_code, X, Y, labels, sw, l2, scale, accumulate, acts, delta_a, delta_b
):
    """Loss and gradient of ``scale * (mean loss over the batch + l2 / 2 * sum of squared weights)``; the mean is
    weighted by the sample weights ``sw`` when given (``sum_i sw_i loss_i / sum_i sw_i``).

    Forward pass, the output error fused with the loss (BP1), then the backward pass (BP4, BP2, BP3 per layer,
    :func:`~fastbp.kernels.backward._backward`). Backpropagation stops at the lowest trainable layer; frozen layers
    get no gradient (zero, or unchanged when accumulating).

    NumPy: ``loss, g = reference.value_and_grad(net, X, Y); grads[...] = (grads if accumulate else 0) + scale * g``
    (the returned loss is ``scale * loss``).

    gemm: GEMM address. params, grads: (n_params,), grads is the output (added to when ``accumulate``). layout:
    (L, 6) int64. loss_code: see :mod:`fastbp.kernels.loss`. X: (n, n_in); Y: (n, n_out) targets or (0, n_out)
    when ``labels`` (n,) int64 are given, else labels is (0,). sw: (n,) sample weights (positive sum) or (0,).
    l2, scale: float. accumulate: int 0/1.
    acts: 1-D workspace of >= n * sum(fan_out); delta_a, delta_b: 1-D, >= n * max(fan_out) each.
    Returns the loss (float64). Not thread-safe for a shared workspace or grads.
    """
    n = X.shape[0]
    L = layout.shape[0]
    total = 0.0  # the weight of the batch: n, or the sum of the sample weights
    if sw.shape[0] > 0:
        for i in range(n):
            total += sw[i]
    else:
        total = float(n)
    trainable = layout[0, :0]  # no explicit needs: the trainable layers' gradients

    Z, b = _forward_to_logits(gemm, params, layout, X, acts)
    _, db = _layer_view(grads, layout, L - 1)
    delta = _rows_view(delta_a, n, layout[L - 1, FAN_OUT])
    # BP1 (+ BP3 of the output layer)
    loss_sum = _output_delta(
        Z,
        b,
        Y,
        labels,
        sw,
        layout[L - 1, ACTIVATION],
        loss_code,
        scale / total,
        delta,
        db,
        _wants(trainable, layout, 2 * L),
        accumulate,
    )
    no_dX = _rows_view(delta_b, 0, layout[0, FAN_IN])
    squares = _backward(
        gemm, params, grads, layout, trainable, X, acts, delta_a, delta_b, l2 * scale, accumulate, no_dX
    )
    return scale * (loss_sum / total + 0.5 * l2 * squares)


# Entry points called from Python: the same drivers, on arrays rebuilt from addresses (see boundary.py), so that a
# call allocates nothing at all. ``marker`` is a scalar of the network's dtype and selects the specialization.


@kernel
def _value_and_grad_entry(marker, network, loss_code, batch, workspace, p_grads, l2, scale, accumulate):
    """:func:`_value_and_grad` on the buffers at the given addresses (NumPy: as there). Not thread-safe."""
    params, layout, gemm = _network_arrays(network, marker)
    X, Y, labels, sw = _batch_arrays(batch, marker)
    acts, delta_a, delta_b = _workspace_arrays(workspace, marker)
    grads = _array1d(p_grads, params.shape[0], marker)
    return _value_and_grad(
        gemm, params, grads, layout, loss_code, X, Y, labels, sw, l2, scale, accumulate, acts, delta_a, delta_b
    )


@kernel
def _predict_entry(marker, network, p_X, n, workspace, p_out):
    """:func:`_predict` on the buffers at the given addresses: X (n, n_in) at p_X, out (n, n_out) at p_out (NumPy:
    as there). Not thread-safe."""
    params, layout, gemm = _network_arrays(network, marker)
    acts, _, _ = _workspace_arrays(workspace, marker)
    X = _array2d(p_X, n, layout[0, FAN_IN], marker)
    out = _array2d(p_out, n, layout[layout.shape[0] - 1, FAN_OUT], marker)
    _predict(gemm, params, layout, X, acts, out)
