"""Forward pass of one dense layer: ``A = f(A_prev @ W + b)``.

One GEMM writes ``A_prev @ W`` into the output buffer, then ONE pass over that buffer adds the bias and applies
the activation in place, so the pre-activation ``Z`` is never stored separately.
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
def _dense_forward(A_prev, W, b, code, A):
    """Dense layer forward ``A = f(A_prev @ W + b)``: one GEMM into A, then one fused bias+activation pass.

    NumPy: ``A[...] = f(A_prev @ W + b)``. A_prev: (n, fan_in); W: (fan_in, fan_out); b: (fan_out,);
    A: (n, fan_out), output. All C-contiguous, one dtype. Thread-safe for distinct A.
    """
    _gemm(0, 0, 1.0, A_prev, W, 0.0, A)
    _bias_activation(A, b, code)
