"""Drivers: whole passes over the network, looping over the layout table.

Each driver takes flat buffers and the layout, so ONE compiled specialization per dtype serves every depth and
width. Nothing is allocated: all arrays are views into ``params``, ``grads`` and the workspace.

Compile time: the drivers are inlined into the entry points that Python calls, while the layer kernels stay
separately compiled (and cached) functions. Measured cold compile of a whole ``fastbp train`` run: 24.8 s with
every driver a separate function, 18-19 s with the drivers inlined, 62 s with the layer kernels inlined too
(Numba's type inference of one huge function is slow).
"""

from .._config import kernel, leaf
from .backward import _hidden_delta, _weight_grad
from .boundary import _array1d, _batch_arrays, _network_arrays, _workspace_arrays
from .forward import _dense_forward
from .gemm import _gemm
from .layout import ACTIVATION, FAN_IN, FAN_OUT, TRAINABLE, _activation_view, _layer_view, _matrix_at, _rows_view
from .loss import _l2_penalty, _output_delta


@leaf
def _forward_into(params, layout, X, acts, out):
    """Forward pass of every layer, the hidden activations into ``acts`` and the network output into ``out``.

    NumPy: ``A = X; for W, b, f in layers: A = f(A @ W + b); out[...] = A``. params: (n_params,); layout: (L, 6)
    int64; X: (n, n_in) C-contiguous; acts: 1-D workspace of at least n * sum(fan_out of the hidden layers)
    elements, output; out: (n, n_out) C-contiguous, output. Not thread-safe for a shared workspace.
    """
    n = X.shape[0]
    L = layout.shape[0]
    A_prev = X
    for l in range(L):
        W, b = _layer_view(params, layout, l)
        A = out if l == L - 1 else _activation_view(acts, layout, l, n)
        _dense_forward(A_prev, W, b, layout[l, ACTIVATION], A)
        A_prev = A


@leaf
def _forward_to_logits(params, layout, X, acts):
    """Forward through the hidden layers, then the output layer's GEMM only: returns (Z, b) with
    ``Z = A[L-1] @ W[L]`` (n, n_out) in the workspace, without the bias, whose epilogue is fused with the loss."""
    n = X.shape[0]
    L = layout.shape[0]
    A_prev = X
    for l in range(L - 1):
        W, b = _layer_view(params, layout, l)
        A = _activation_view(acts, layout, l, n)
        _dense_forward(A_prev, W, b, layout[l, ACTIVATION], A)
        A_prev = A
    W, b = _layer_view(params, layout, L - 1)
    Z = _activation_view(acts, layout, L - 1, n)
    _gemm(0, 0, 1.0, A_prev, W, 0.0, Z)
    return Z, b


@kernel
def _predict(params, layout, X, acts, out):
    """``out[...] = network(X)`` in chunks of as many rows as the workspace holds.

    NumPy: ``out[...] = reference.predict(net, X)``. X: (n, n_in); out: (n, n_out), output; acts: 1-D workspace
    (see :func:`_forward_into`), overwritten. Not thread-safe for a shared workspace.
    """
    n = X.shape[0]
    width = 0
    for l in range(layout.shape[0]):
        width += layout[l, FAN_OUT]
    chunk = max(1, acts.shape[0] // width)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        n_out = out.shape[1]
        _forward_into(params, layout, X[start:stop], acts, _matrix_at(out, start * n_out, stop - start, n_out))


@leaf
def _value_and_grad(params, grads, layout, loss_code, X, Y, labels, sw, l2, scale, accumulate, acts, delta_a, delta_b):
    """Loss and gradient of ``scale * (mean loss over the batch + l2 / 2 * sum of squared weights)``; the mean is
    weighted by the sample weights ``sw`` when given (``sum_i sw_i loss_i / sum_i sw_i``).

    Forward pass, output error fused with the loss (BP1), then for each layer from the top: weight gradient
    (BP4, GEMM with beta = accumulate), and the delta of the layer below with its bias gradient (BP2, BP3).
    Backpropagation stops at the lowest trainable layer; frozen layers get no gradient (zero, or unchanged when
    accumulating).

    NumPy: ``loss, g = reference.value_and_grad(net, X, Y); grads[...] = (grads if accumulate else 0) + scale * g``
    (the returned loss is ``scale * loss``).

    params, grads: (n_params,), grads is the output (added to when ``accumulate``). layout: (L, 6) int64.
    loss_code: see :mod:`fastbp.kernels.loss`. X: (n, n_in); Y: (n, n_out) targets or (0, n_out) when
    ``labels`` (n,) int64 are given, else labels is (0,). sw: (n,) sample weights (positive sum) or (0,).
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
    weight = scale / total

    lowest = L
    for l in range(L - 1, -1, -1):
        if layout[l, TRAINABLE]:
            lowest = l
        elif not accumulate:
            dW, db = _layer_view(grads, layout, l)
            dW[:] = 0.0
            db[:] = 0.0

    Z, b = _forward_to_logits(params, layout, X, acts)

    # BP1 (+ BP3 of the output layer).
    cur, other = delta_a, delta_b
    delta = _rows_view(cur, n, layout[L - 1, FAN_OUT])
    dW, db = _layer_view(grads, layout, L - 1)
    loss_sum = _output_delta(
        Z,
        b,
        Y,
        labels,
        sw,
        layout[L - 1, ACTIVATION],
        loss_code,
        weight,
        delta,
        db,
        layout[L - 1, TRAINABLE],
        accumulate,
    )

    squares = 0.0
    for l in range(L - 1, -1, -1):
        W, b = _layer_view(params, layout, l)
        trainable = layout[l, TRAINABLE]
        if l2 > 0.0:
            dW, db = _layer_view(grads, layout, l)
            squares += _l2_penalty(W, dW, l2 * scale, trainable != 0, accumulate)
        if l < lowest:
            continue
        A_prev = X if l == 0 else _activation_view(acts, layout, l - 1, n)
        delta = _rows_view(cur, n, layout[l, FAN_OUT])
        if trainable:
            dW, db = _layer_view(grads, layout, l)
            # After the L2 pass dW already holds its part of the gradient: accumulate onto it.
            beta = 1.0 if (accumulate or l2 > 0.0) else 0.0
            _weight_grad(A_prev, delta, beta, dW)
        if l > lowest:
            delta_prev = _rows_view(other, n, layout[l, FAN_IN])
            _, db_prev = _layer_view(grads, layout, l - 1)
            _hidden_delta(
                delta,
                W,
                A_prev,
                layout[l - 1, ACTIVATION],
                delta_prev,
                db_prev,
                layout[l - 1, TRAINABLE],
                accumulate,
            )
            cur, other = other, cur
    return scale * (loss_sum / total + 0.5 * l2 * squares)


# Entry points called from Python: the same drivers, on arrays rebuilt from addresses (see boundary.py), so that a
# call allocates nothing at all. ``marker`` is a scalar of the network's dtype and selects the specialization.


@kernel
def _value_and_grad_entry(marker, network, loss_code, batch, workspace, p_grads, l2, scale, accumulate):
    """:func:`_value_and_grad` on the buffers at the given addresses (NumPy: as there). Not thread-safe."""
    params, layout = _network_arrays(network, marker)
    X, Y, labels, sw = _batch_arrays(batch, marker)
    acts, delta_a, delta_b = _workspace_arrays(workspace, marker)
    grads = _array1d(p_grads, params.shape[0], marker)
    return _value_and_grad(
        params, grads, layout, loss_code, X, Y, labels, sw, l2, scale, accumulate, acts, delta_a, delta_b
    )
