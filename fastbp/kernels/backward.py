"""Backward pass of one dense layer: BP2 (hidden delta), BP3 (bias gradient) and BP4 (weight gradient).

BP2 is a GEMM ``delta @ W.T`` into the previous layer's delta buffer, then ONE pass that multiplies by f'(A_prev)
(from the activation output, so Z is not needed) and accumulates that layer's bias gradient (BP3).
BP4 is a GEMM ``A_prev.T @ delta`` whose beta lets gradients of several micro-batches accumulate.
"""

from .._config import kernel, leaf
from .activations import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH, _derivative
from .gemm import _gemm


@leaf
def _derivative_bias_grad(delta_prev, A_prev, code, db_prev, with_db):
    """delta_prev *= f'(A_prev); db_prev += column sums of the result (when with_db). Code is a constant."""
    n, m = delta_prev.shape
    for i in range(n):
        for j in range(m):
            d = delta_prev[i, j] * _derivative(A_prev[i, j], code)
            delta_prev[i, j] = d
            if with_db:
                db_prev[j] += d


@leaf
def _derivative_epilogue(delta_prev, A_prev, code, db_prev, with_db, accumulate):
    """delta_prev *= f'(A_prev); db_prev (+)= column sums (see :func:`_activation_derivative`), inlined."""
    if with_db and not accumulate:
        db_prev[:] = 0.0
    # Branch once; each call inlines a loop specialised to a constant activation code.
    if code == RELU:
        _derivative_bias_grad(delta_prev, A_prev, RELU, db_prev, with_db)
    elif code == TANH:
        _derivative_bias_grad(delta_prev, A_prev, TANH, db_prev, with_db)
    elif code == SIGMOID:
        _derivative_bias_grad(delta_prev, A_prev, SIGMOID, db_prev, with_db)
    elif code == LEAKY_RELU:
        _derivative_bias_grad(delta_prev, A_prev, LEAKY_RELU, db_prev, with_db)
    else:
        _derivative_bias_grad(delta_prev, A_prev, IDENTITY, db_prev, with_db)


@kernel
def _hidden_delta(delta, W, A_prev, code, delta_prev, db_prev, with_db, accumulate):
    """BP2 and BP3 for the layer below: ``delta_prev = (delta @ W.T) * f'(A_prev)``, ``db_prev (+)= sum(delta_prev)``.

    NumPy: ``delta_prev[...] = (delta @ W.T) * fprime(A_prev); db_prev[...] = (db_prev if accumulate else 0)
    + delta_prev.sum(0)``. delta: (n, fan_out); W: (fan_in, fan_out); A_prev: (n, fan_in), activation output
    of the layer below, with code ``code``; delta_prev: (n, fan_in), output; db_prev: (fan_in,), output when
    ``with_db``. Thread-safe for distinct outputs.
    """
    _gemm(0, 1, 1.0, delta, W, 0.0, delta_prev)
    _derivative_epilogue(delta_prev, A_prev, code, db_prev, with_db, accumulate)


@kernel
def _activation_derivative(delta_prev, A_prev, code, db_prev, with_db, accumulate):
    """The epilogue of BP2 and BP3 alone, for a ``delta @ W.T`` computed elsewhere (the torch bridge's GEMMs run on
    torch's threads): ``delta_prev *= f'(A_prev)``, ``db_prev (+)= sum(delta_prev)``, in one pass.

    NumPy: ``delta_prev *= fprime(A_prev); db_prev[...] = (db_prev if accumulate else 0) + delta_prev.sum(0)``.
    delta_prev: (n, fan_in), holding ``delta @ W.T`` on entry, output; A_prev: (n, fan_in), activation output of
    the layer below, with code ``code``; db_prev: (fan_in,), output when ``with_db``. Thread-safe for distinct
    outputs.
    """
    _derivative_epilogue(delta_prev, A_prev, code, db_prev, with_db, accumulate)


@kernel
def _weight_grad(A_prev, delta, beta, dW):
    """BP4 over the batch: ``dW = A_prev.T @ delta + beta * dW`` (beta 1 accumulates, 0 overwrites).

    NumPy: ``dW[...] = A_prev.T @ delta + beta * dW``. A_prev: (n, fan_in); delta: (n, fan_out), already carrying
    the 1/n of the batch mean; dW: (fan_in, fan_out), output. Thread-safe for distinct dW.
    """
    _gemm(1, 0, 1.0, A_prev, delta, beta, dW)
