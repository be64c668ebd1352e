"""Drivers: the loss and gradient of a batch, and prediction, over the layout table.

Each driver takes flat buffers and the layout, so ONE compiled specialization per dtype serves every depth and
width. Nothing is allocated: all arrays are views into ``params``, ``grads`` and the workspace. The passes
themselves are :func:`~fastbp.kernels.forward._forward_hidden` and :func:`~fastbp.kernels.backward._backward`,
separately compiled functions that every entry point shares.

The workspace comes as two tuples: ``work = (acts, delta_a, delta_b)``, the activations and the ping-pong pair of
delta buffers, and ``work16 = (x16, acts16, delta_a16, delta_b16)``, their bfloat16 twins and the input's, which
are empty in the dtype's own precision (see gemm.py).
"""

import numpy as np

from .._config import kernel, leaf
from .backward import _backward, _wants
from .boundary import _array1d, _array2d, _batch_arrays, _network_arrays, _workspace_arrays
from .forward import _forward_into, _forward_to_logits
from .gemm import _to_bf16
from .layout import ACTIVATION, B_OFFSET, FAN_IN, FAN_OUT, W_OFFSET, _layer_view, _matrix_at, _rows_view
from .loss import _output_delta


@leaf
def _input_twin(X, work16):
    """The (n, n_in) bfloat16 twin of the input X in the workspace, or a (0, n_in) view without twins."""
    x16 = work16[0]
    return _rows_view(x16, X.shape[0] if x16.shape[0] > 0 else 0, X.shape[1])


@leaf
def _refresh_twin(params, params16, layout):
    """params16[W of every layer] = bfloat16(params[W]) when params16 is not empty (the weights' twin, which the
    GEMMs read in bfloat16 precision; the optimizer's update keeps it in step during training)."""
    if params16.shape[0] == 0:
        return
    for l in range(layout.shape[0]):
        w, b = layout[l, W_OFFSET], layout[l, B_OFFSET]
        _to_bf16(params[w:b], params16[w:b])


@kernel
def _predict(gemm, params, params16, layout, X, work, work16, buffers, run, out):
    """``out[...] = network(X)`` in chunks of as many rows as the workspace holds.

    NumPy: ``out[...] = reference.predict(net, X)``. gemm: the GEMMs (gemm.py); params16: the weights' bfloat16
    twin (refreshed by the caller) or empty; X: (n, n_in); out: (n, n_out), output; work, work16: the workspace
    (see the module docstring), overwritten; buffers: the running statistics; run: the run flags (layers.py; in
    evaluation for a prediction). Not thread-safe for a shared workspace.
    """
    acts, _, _, _, aux, sums = work
    opts = (buffers, aux, sums, run, layout[0, :0])
    n = X.shape[0]
    width = 0
    for l in range(layout.shape[0]):
        width += layout[l, FAN_OUT]
    chunk = max(1, acts.shape[0] // width)
    n_out = out.shape[1]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        Xc = X[start:stop]
        _forward_into(
            gemm,
            params,
            params16,
            layout,
            Xc,
            _input_twin(Xc, work16),
            acts,
            work16[1],
            opts,
            _matrix_at(out, start * n_out, stop - start, n_out),
        )


@leaf
def _value_and_grad(
    gemm,
    params,
    params16,
    grads,
    layout,
    loss_code,
    X,
    Y,
    labels,
    sw,
    l2,
    scale,
    accumulate,
    work,
    work16,
    buffers,
    run,
    ids,
):
    """Loss and gradient of ``scale * (mean loss over the batch + l2 / 2 * sum of squared weights)``; the mean is
    weighted by the sample weights ``sw`` when given (``sum_i sw_i loss_i / sum_i sw_i``).

    Forward pass, the output error fused with the loss (BP1), then the backward pass (BP4, BP2, BP3 per layer,
    :func:`~fastbp.kernels.backward._backward`). Backpropagation stops at the lowest trainable layer; frozen layers
    get no gradient (zero, or unchanged when accumulating).

    NumPy: ``loss, g = reference.value_and_grad(net, X, Y); grads[...] = (grads if accumulate else 0) + scale * g``
    (the returned loss is ``scale * loss``).

    gemm: the GEMMs (gemm.py). params, grads: (n_params,), grads is the output (added to when ``accumulate``);
    params16: the weights' bfloat16 twin (current) or empty. layout: (L, 12) int64. loss_code: see
    :mod:`fastbp.kernels.loss`. X: (n, n_in); Y: (n, n_out) targets or (0, n_out) when ``labels`` (n,) int64 are
    given, else labels is (0,). sw: (n,) sample weights (positive sum) or (0,). l2, scale: float. accumulate: int
    0/1. work, work16: the workspace (module docstring), for at least n rows. buffers: the running statistics (updated
    when run says so); run: the run flags (layers.py); ids: (n,) int64 row ids of the batch for the dropout hash, or
    (0,). Returns the loss (float64). Not thread-safe for a shared workspace or grads.
    """
    acts, delta_a, delta_b, delta_c, aux, sums = work
    opts = (buffers, aux, sums, run, ids)
    _, acts16, delta_a16, delta_b16 = work16
    n = X.shape[0]
    L = layout.shape[0]
    total = 0.0  # the weight of the batch: n, or the sum of the sample weights
    if sw.shape[0] > 0:
        for i in range(n):
            total += sw[i]
    else:
        total = float(n)
    trainable = layout[0, :0]  # no explicit needs: the trainable layers' gradients
    X16 = _input_twin(X, work16)

    Z, b = _forward_to_logits(gemm, params, params16, layout, X, X16, acts, acts16, opts)
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
    squares = _backward(
        gemm,
        params,
        params16,
        grads,
        layout,
        trainable,
        X,
        X16,
        acts,
        acts16,
        delta_a,
        delta_a16,
        delta_b,
        delta_b16,
        delta_c,
        opts,
        l2 * scale,
        accumulate,
        _rows_view(delta_b, 0, layout[0, FAN_IN]),
    )
    return scale * (loss_sum / total + 0.5 * l2 * squares)


# Entry points called from Python: the same drivers, on arrays rebuilt from addresses (see boundary.py), so that a
# call allocates nothing at all. ``marker`` is a scalar of the network's dtype and selects the specialization.


@kernel
def _value_and_grad_entry(
    marker, network, run, p_ids, n_ids, loss_code, batch, workspace, p_grads, l2, scale, accumulate
):
    """:func:`_value_and_grad` on the buffers at the given addresses (NumPy: as there); run: the run flags
    (layers.py); ids: (n_ids,) int64 row ids at p_ids (0 ids: rows by position). Not thread-safe."""
    params, params16, layout, gemm, buffers = _network_arrays(network, marker)
    X, Y, labels, sw = _batch_arrays(batch, marker)
    work, work16 = _workspace_arrays(workspace, marker)
    grads = _array1d(p_grads, params.shape[0], marker)
    _refresh_twin(params, params16, layout)
    return _value_and_grad(
        gemm,
        params,
        params16,
        grads,
        layout,
        loss_code,
        X,
        Y,
        labels,
        sw,
        l2,
        scale,
        accumulate,
        work,
        work16,
        buffers,
        run,
        _array1d(p_ids, n_ids, np.int64(0)),
    )


@kernel
def _predict_entry(marker, network, run, p_X, n, workspace, p_out):
    """:func:`_predict` on the buffers at the given addresses: X (n, n_in) at p_X, out (n, n_out) at p_out (NumPy:
    as there). Not thread-safe."""
    params, params16, layout, gemm, buffers = _network_arrays(network, marker)
    work, work16 = _workspace_arrays(workspace, marker)
    X = _array2d(p_X, n, layout[0, FAN_IN], marker)
    out = _array2d(p_out, n, layout[layout.shape[0] - 1, FAN_OUT], marker)
    _refresh_twin(params, params16, layout)
    _predict(gemm, params, params16, layout, X, work, work16, buffers, run, out)
