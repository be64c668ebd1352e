"""The backward pass: BP2 (hidden delta), BP3 (bias gradient) and BP4 (weight gradient), over the layout table.

BP2 is a GEMM ``delta @ W.T`` into the previous layer's delta buffer, then ONE pass that multiplies by f'(A_prev)
(from the activation output, so Z is not needed) and accumulates that layer's bias gradient (BP3).
BP4 is a GEMM ``A_prev.T @ delta`` whose beta lets gradients of several micro-batches accumulate.

:func:`_backward` is the one loop over the layers that every gradient goes through: the trainer's steps,
``MLP.value_and_grad`` and the PyTorch bridge differ only in how the output layer's delta (BP1) is made.
"""

import numpy as np
from numba.extending import overload

from .._config import kernel, leaf
from .activations import _derivative_row
from .forward import _layer_input, _layer_options, _to_bf16_rows
from .gemm import _bf16_row, _matmul, _matmul_pair, _plain_tier
from .layers import _layer_backward
from .layout import (
    ACTIVATION,
    B_OFFSET,
    DROPOUT,
    FAN_IN,
    FAN_OUT,
    NORM,
    PARAM_END,
    RESIDUAL,
    TRAINABLE,
    _aux_views,
    _layer_view,
    _plain,
    _rows_view,
    _twin_view,
)
from .loss import _l2_penalty


@leaf
def _derivative_epilogue(delta_prev, A_prev, code, db_prev, with_db, accumulate, delta_prev16):
    """:func:`_activation_derivative`, inlined into its callers (the layer's BP2 saves a call)."""
    if with_db and not accumulate:
        db_prev[:] = 0.0
    twin = delta_prev16.shape[0] > 0
    for i in range(delta_prev.shape[0]):  # each row's passes while it is in L1
        _derivative_row(delta_prev, A_prev, i, code)
        if with_db:
            for j in range(delta_prev.shape[1]):
                db_prev[j] += delta_prev[i, j]
        if twin:
            _bf16_row(delta_prev, delta_prev16, i)


@kernel
def _activation_derivative(delta_prev, A_prev, code, db_prev, with_db, accumulate, delta_prev16):
    """The epilogue of BP2 and BP3: ``delta_prev *= f'(A_prev)``, ``db_prev (+)= sum(delta_prev)``, in one pass.

    NumPy: ``delta_prev *= fprime(A_prev); db_prev[...] = (db_prev if accumulate else 0) + delta_prev.sum(0)``.
    delta_prev: (n, m), holding ``delta @ W.T`` on entry (or an upstream gradient), output; A_prev: (n, m),
    activation output with code ``code`` (elementwise, not softmax); db_prev: (m,), output when ``with_db``.
    delta_prev16: (n, m) uint16, output, the bfloat16 twin of the result, or (0, m) for none. Thread-safe for
    distinct outputs.
    """
    _derivative_epilogue(delta_prev, A_prev, code, db_prev, with_db, accumulate, delta_prev16)


@kernel
def _weight_grad(gemm, A_prev, A_prev16, delta, delta16, beta, dW):
    """BP4 over the batch: ``dW = A_prev.T @ delta + beta * dW`` (beta 1 accumulates, 0 overwrites).

    NumPy: ``dW[...] = A_prev.T @ delta + beta * dW``. gemm: the GEMMs; A_prev: (n, fan_in); delta: (n, fan_out),
    already carrying the 1/n of the batch mean; dW: (fan_in, fan_out), output. A_prev16, delta16: bfloat16 twins
    (read in bfloat16 precision). Thread-safe for distinct dW.
    """
    _matmul(gemm, 1, 0, A_prev, A_prev16, delta, delta16, beta, dW)


@leaf
def _wants(needs, layout, k):
    """Whether gradient k is wanted (int64 0/1): k = 0 is dX, 1 + 2 l is dW[l], 2 + 2 l is db[l]. From ``needs``
    (2 L + 1,) int64 when it is given; from the layout's trainable flags when it is empty (W and b of the trainable
    layers, not X)."""
    if needs.shape[0] > 0:
        return needs[k]
    if k == 0:
        return np.int64(0)
    return layout[(k - 1) // 2, TRAINABLE]


@kernel
def _backward(
    gemm,
    params,
    params16,
    grads,
    layout,
    needs,
    X,
    X16,
    acts,
    acts16,
    cur,
    cur16,
    other,
    other16,
    third,
    opts,
    l2,
    accumulate,
    dX,
):
    """The backward pass from the output layer's delta: per layer from the top, the L2 term and BP4
    ``dW[l] = A[l-1].T @ delta[l] (+ l2 W[l])``, then BP2 and BP3 ``delta[l-1] = (delta[l] @ W[l].T) * f'(A[l-1])``,
    ``db[l-1] = sum_i delta[l-1]``, down to the lowest layer whose gradient is wanted; then ``dX = delta[0] @ W[0].T``
    when wanted.

    NumPy: ``for l from L-1 down: dW[l] = A[l-1].T @ delta + l2 * W[l]; delta = (delta @ W[l].T) * fprime(A[l-1]);
    db[l-1] = delta.sum(0)``; ``dX = delta @ W[0].T`` (reference.value_and_grad is the oracle).

    gemm: the GEMMs (gemm.py). params, grads: (n_params,); grads is the output, laid out like params, each wanted
    gradient written (added to when ``accumulate``), the others zeroed (unchanged when accumulating). layout: (L, 12)
    int64. needs: (2 L + 1,) int64 flags, dX, dW0, db0, dW1, ... (see :func:`_wants`), or (0,) for the trainable
    layers. X: (n, n_in); acts: the hidden activations of the forward pass of X (workspace). cur: 1-D buffer holding
    the output layer's delta (n, n_out) on entry, with its bias gradient (BP3) already in grads; other: 1-D buffer of
    at least n * max(fan_in); both overwritten (the ping-pong pair). In bfloat16 precision, params16, X16, acts16,
    cur16, other16 are the bfloat16 twins of params, X, acts, cur and other (the output delta's twin is made here);
    otherwise they are empty (X16: 0 rows). third: a third 1-D buffer like other, for the gradients through residual
    connections; opts: as for the forward pass (forward.py), which left the auxiliary workspace the options of the
    layers need (layers.py). l2: float, coefficient of the L2 term (0: none). accumulate: int 0/1. dX:
    (n, n_in), output when wanted. Returns the sum of squared weights of every layer (float64) when l2 > 0, else 0.
    Not thread-safe for a shared workspace or grads.
    """
    n = X.shape[0]
    n16 = X16.shape[0]
    L = layout.shape[0]
    lowest = L
    for l in range(L - 1, -1, -1):
        if _wants(needs, layout, 1 + 2 * l) or _wants(needs, layout, 2 + 2 * l):
            lowest = l
    if _wants(needs, layout, 0):
        lowest = 0
    if not accumulate:  # gradients that are not wanted are zero
        for l in range(L):
            dW, _ = _layer_view(grads, layout, l)
            if not _wants(needs, layout, 1 + 2 * l):
                dW[:] = 0.0
            if not _wants(needs, layout, 2 + 2 * l):  # b, and gamma and beta of a normalized layer
                grads[layout[l, B_OFFSET] : layout[l, PARAM_END]] = 0.0
    _to_bf16_rows(_rows_view(cur, n, layout[L - 1, FAN_OUT]), _rows_view(cur16, n16, layout[L - 1, FAN_OUT]))

    squares = 0.0
    for l in range(L - 1, -1, -1):
        W, _ = _layer_view(params, layout, l)
        dW, _ = _layer_view(grads, layout, l)
        want_dW = _wants(needs, layout, 1 + 2 * l)
        if l2 > 0.0:
            squares += _l2_penalty(W, dW, l2, want_dW != 0, accumulate)
        if l < lowest:
            continue
        A_prev = _layer_input(layout, l, X, acts)
        A_prev16 = _layer_input(layout, l, X16, acts16)
        delta = _rows_view(cur, n, layout[l, FAN_OUT])
        delta16 = _rows_view(cur16, n16, layout[l, FAN_OUT])
        beta = 1.0 if (accumulate or l2 > 0.0) else 0.0  # after the L2 term dW already holds its part: add onto it
        if l == lowest:
            if want_dW:
                _weight_grad(gemm, A_prev, A_prev16, delta, delta16, beta, dW)
            continue
        k, m = l - 1, layout[l, FAN_IN]  # the layer below, and its width
        G, G16 = _rows_view(other, n, m), _rows_view(other16, n16, m)
        W16 = _twin_view(params16, layout, l)
        if want_dW:  # BP4 of this layer and BP2's GEMM into the layer below are independent: both in one call
            _matmul_pair(
                gemm, (1, 0, A_prev, A_prev16, delta, delta16, beta, dW), (0, 1, delta, delta16, W, W16, 0.0, G)
            )
        else:
            _matmul(gemm, 0, 1, delta, delta16, W, W16, 0.0, G)
        _, db_prev = _layer_view(grads, layout, k)
        with_db = _wants(needs, layout, 2 * l)
        if _plain(layout, k) and not layout[l, RESIDUAL]:
            _activation_derivative(G, A_prev, layout[k, ACTIVATION], db_prev, with_db, accumulate, G16)
        else:
            _options_backward(gemm, params, grads, layout, l, A_prev, G, G16, third, opts, with_db, accumulate)
        cur, other = other, cur
        cur16, other16 = other16, cur16
    if _wants(needs, layout, 0):
        W, _ = _layer_view(params, layout, 0)
        _matmul(
            gemm,
            0,
            1,
            _rows_view(cur, n, layout[0, FAN_OUT]),
            _rows_view(cur16, n16, layout[0, FAN_OUT]),
            W,
            _twin_view(params16, layout, 0),
            0.0,
            dX,
        )
        if layout[0, RESIDUAL]:  # the input feeds the first layer's residual connection too
            dA = _rows_view(third, n, layout[0, FAN_OUT])
            for i in range(n):
                for j in range(dX.shape[1]):
                    dX[i, j] += dA[i, j]
    return squares


def _options_backward(gemm, params, grads, layout, l, A_prev, G, G16, third, opts, with_db, accumulate):
    """BP2's epilogue and BP3 into hidden layer k = l - 1 when it has options, or when layer l has a residual
    connection: :func:`~fastbp.kernels.layers._layer_backward` on ``G = delta @ W[l].T`` (compiled code only; see the
    overload). Arguments as for :func:`_backward`; G, G16: layer k's delta (holding the GEMM's product on entry) and
    its twin, outputs; with_db: whether k's bias gradient is wanted."""
    raise NotImplementedError("_options_backward() is for compiled code")


@overload(_options_backward, inline="always")
def _options_backward_impl(gemm, params, grads, layout, l, A_prev, G, G16, third, opts, with_db, accumulate):
    if _plain_tier(gemm):  # the plain tier (boundary.py): its networks have no options, nor any of their code

        def plain(gemm, params, grads, layout, l, A_prev, G, G16, third, opts, with_db, accumulate):
            pass

        return plain

    def full(gemm, params, grads, layout, l, A_prev, G, G16, third, opts, with_db, accumulate):
        buffers, aux, sums, run, ids = opts
        n, m, k = G.shape[0], G.shape[1], l - 1
        _, db_prev = _layer_view(grads, layout, k)
        # third: dC/dA of the layer above through its residual connection (read), then this layer's (written)
        skip = _rows_view(third, n if layout[l, RESIDUAL] else 0, m)
        dA = _rows_view(third, n if layout[k, RESIDUAL] else 0, m)
        H, XH, _, inv = _aux_views(aux, layout, k, n)
        gamma, _, _ = _layer_options(params, buffers, layout, k)
        dgamma, dbeta, _ = _layer_options(grads, buffers, layout, k)
        _layer_backward(
            G,
            skip,
            dA,
            layout[k, ACTIVATION],
            H if H.shape[0] > 0 else A_prev,
            layout[k, NORM],
            gamma,
            XH,
            inv,
            dgamma,
            dbeta,
            db_prev,
            with_db,
            accumulate,
            sums,
            layout[k, DROPOUT],
            run,
            ids,
            k,
            G16,
        )

    return full
