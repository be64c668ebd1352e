"""The forward pass: per layer ``A = f(A_prev @ W + b)``, over the layout table.

One GEMM writes ``A_prev @ W`` into the output buffer, then ONE pass over that buffer adds the bias and applies
the activation in place, so the pre-activation ``Z`` is never stored separately. :func:`_forward_hidden` is the
loop over the hidden layers that every pass runs (training, evaluation, prediction, the PyTorch bridge); the
output layer's epilogue is the caller's: the plain one (:func:`_forward_into`) or the one fused with the loss.
"""

from .._config import kernel, leaf, like
from .activations import (
    IDENTITY,
    LEAKY_RELU,
    RELU,
    SIGMOID,
    SOFTMAX,
    TANH,
    _activate,
    _bias_shift_row,
    _exp_block,
    _row_sum,
)
from .gemm import _gemm
from .layout import ACTIVATION, _activation_view, _layer_view


@leaf
def _bias_activation_elementwise(Z, b, code):
    """Z[i, j] <- f(Z[i, j] + b[j]) for an elementwise activation code (a constant after inlining)."""
    n, m = Z.shape
    for i in range(n):
        for j in range(m):
            Z[i, j] = _activate(Z[i, j] + b[j], code)


@leaf
def _bias_softmax(Z, b):
    """Z[i] <- softmax(Z[i] + b) = exp(z - max(z)) / sum(exp(z - max(z))), one exp per element, all in one loop."""
    n, m = Z.shape
    for i in range(n):
        _bias_shift_row(Z, b, i)
    _exp_block(Z)
    for i in range(n):
        inv = like(1.0 / _row_sum(Z, i), Z)
        for j in range(m):
            Z[i, j] *= inv


@kernel
def _bias_activation(Z, b, code):
    """In place ``Z[...] = f(Z + b)``; the epilogue of the dense forward GEMM.

    NumPy: ``Z[...] = f(Z + b)`` (softmax row-wise). Z: (n, m) C-contiguous, output. b: (m,). code: activation
    code of :mod:`fastbp.kernels.activations`. Thread-safe for distinct Z.
    """
    # Branch once, outside the loops: each call below inlines a loop specialised to one constant code.
    if code == RELU:
        _bias_activation_elementwise(Z, b, RELU)
    elif code == TANH:
        _bias_activation_elementwise(Z, b, TANH)
    elif code == SIGMOID:
        _bias_activation_elementwise(Z, b, SIGMOID)
    elif code == LEAKY_RELU:
        _bias_activation_elementwise(Z, b, LEAKY_RELU)
    elif code == SOFTMAX:
        _bias_softmax(Z, b)
    else:
        _bias_activation_elementwise(Z, b, IDENTITY)


@kernel
def _dense_forward(gemm, A_prev, W, b, code, A):
    """Dense layer forward ``A = f(A_prev @ W + b)``: one GEMM into A, then one fused bias+activation pass.

    NumPy: ``A[...] = f(A_prev @ W + b)``. gemm: address of the GEMM (see gemm.py); A_prev: (n, fan_in); W:
    (fan_in, fan_out); b: (fan_out,); A: (n, fan_out), output. All C-contiguous, one dtype. Thread-safe for
    distinct A.
    """
    _gemm(gemm, 0, 0, 1.0, A_prev, W, 0.0, A)
    _bias_activation(A, b, code)


@leaf
def _layer_input(layout, l, X, acts):
    """The input of layer l: X (n, n_in) for the first layer, else the (n, fan_in) activations of layer l - 1 in the
    workspace ``acts``."""
    if l == 0:
        return X
    return _activation_view(acts, layout, l - 1, X.shape[0])


@kernel
def _forward_hidden(gemm, params, layout, X, acts):
    """Forward pass of every hidden layer, ``A[l] = f(A[l-1] @ W[l] + b[l])`` for l < L - 1, into the workspace.

    NumPy: ``A = X; for W, b, f in hidden layers: A = f(A @ W + b)``. gemm: GEMM address; params: (n_params,);
    layout: (L, 6) int64; X: (n, n_in) C-contiguous; acts: 1-D workspace of at least n * sum(fan_out) elements,
    output (layer l's A at :func:`~fastbp.kernels.layout._activation_view`). Not thread-safe for a shared workspace.
    """
    n = X.shape[0]
    for l in range(layout.shape[0] - 1):
        W, b = _layer_view(params, layout, l)
        _dense_forward(
            gemm, _layer_input(layout, l, X, acts), W, b, layout[l, ACTIVATION], _activation_view(acts, layout, l, n)
        )


@leaf
def _forward_into(gemm, params, layout, X, acts, out):
    """The whole forward pass: hidden activations into ``acts``, the network output into ``out`` (n, n_out).

    NumPy: ``out[...] = reference.predict(net, X)``. Arguments as for :func:`_forward_hidden`; out: C-contiguous,
    output. Not thread-safe for a shared workspace.
    """
    L = layout.shape[0]
    _forward_hidden(gemm, params, layout, X, acts)
    W, b = _layer_view(params, layout, L - 1)
    _dense_forward(gemm, _layer_input(layout, L - 1, X, acts), W, b, layout[L - 1, ACTIVATION], out)


@leaf
def _forward_to_logits(gemm, params, layout, X, acts):
    """The forward pass up to the output layer's GEMM: returns (Z, b) with ``Z = A[L-1] @ W[L]`` (n, n_out) in the
    workspace, without the bias, for an output epilogue fused with the loss."""
    L = layout.shape[0]
    _forward_hidden(gemm, params, layout, X, acts)
    W, b = _layer_view(params, layout, L - 1)
    Z = _activation_view(acts, layout, L - 1, X.shape[0])
    _gemm(gemm, 0, 0, 1.0, _layer_input(layout, L - 1, X, acts), W, 0.0, Z)
    return Z, b
