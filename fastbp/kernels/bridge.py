"""Whole passes for the PyTorch bridge (:mod:`fastbp.torch`): the forward pass into an output tensor, and the
backward pass from the upstream gradient that torch's loss gives, each ONE call from Python.

They run the same passes as the trainer (forward.py, backward.py); only BP1 differs: the output layer's delta comes
from torch's upstream gradient instead of a loss fused with the output epilogue. Buffers are given by address
(boundary.py), so one specialization per dtype serves every network.
"""

import numpy as np

from .._config import kernel, leaf
from .activations import IDENTITY, SOFTMAX
from .backward import _activation_derivative, _backward
from .boundary import _array1d, _array2d, _network_arrays, _workspace_arrays
from .drivers import _input_twin
from .forward import _forward_into
from .layout import ACTIVATION, FAN_IN, FAN_OUT, _copy, _layer_view, _rows_view

# The bridge's networks have no layer options (fastbp.torch refuses them): the run flags of plain training.
_TRAINING = (np.int64(1), np.int64(0), np.int64(0), np.int64(0), np.int64(0))


@leaf
def _softmax_vjp(G, A, delta):
    """``delta = A * (G - sum_j G_j A_j)`` row by row: the softmax Jacobian (symmetric) times the upstream
    gradient G, from the softmax output A. G, A, delta: (n, m) arrays of one dtype; delta is the output."""
    n, m = A.shape
    for i in range(n):
        dot = 0.0
        for j in range(m):
            dot += G[i, j] * A[i, j]
        for j in range(m):
            delta[i, j] = A[i, j] * (G[i, j] - dot)


@kernel
def _bridge_forward_entry(marker, network, p_X, n, workspace, p_out):
    """``out = network(X)``, hidden activations into the workspace (NumPy: ``out[...] = reference.predict(net,
    X)``). network: as in boundary.py; X: (n, n_in) at p_X; workspace: as in boundary.py (acts of at least
    n * sum(fan_out of the hidden layers) elements); out: (n, n_out) at p_out, output. marker: a scalar of the
    network's dtype. Not thread-safe for a shared workspace."""
    params, params16, layout, gemm, buffers = _network_arrays(network, marker)
    work, work16 = _workspace_arrays(workspace, marker)
    X = _array2d(p_X, n, layout[0, FAN_IN], marker)
    out = _array2d(p_out, n, layout[layout.shape[0] - 1, FAN_OUT], marker)
    opts = (buffers, work[4], work[5], _TRAINING, layout[0, :0])
    _forward_into(gemm, params, params16, layout, X, _input_twin(X, work16), work[0], work16[1], opts, out)


@kernel
def _bridge_backward_entry(marker, network, p_needs, n, p_G, p_X, p_out, workspace, p_grads, p_dX):
    """Gradients from the upstream gradient ``G = dLoss/dY`` of the forward pass that left its hidden activations
    in the workspace.

    BP1 with the given upstream gradient, ``delta[L] = G * f'(A[L])`` (softmax: its Jacobian times G), with the
    output layer's BP3, then the backward pass (backward.py) down to the lowest layer that needs a gradient, and
    ``dX = delta[0] @ W[0].T``.

    NumPy: ``delta = G * fprime(out); for l from L-1 down: dW[l] = A[l-1].T @ delta; db[l] = delta.sum(0);
    delta = (delta @ W[l].T) * fprime(A[l-1])``; ``dX = delta @ W[0].T``.

    needs: (2 L + 1,) int64 at p_needs, whether dX, dW0, db0, dW1, db1, ... are wanted; the others are zeroed in
    grads. G, out: (n, n_out) at p_G, p_out (out: the network output, read for a non-identity output activation
    only); X: (n, n_in) at p_X; grads: (n_params,) at p_grads, laid out like params, output; dX: (n, n_in) at p_dX,
    output (used only when wanted). workspace: acts as the forward pass left them; delta buffers of at least
    n * max(fan_out) elements each. The 1/n of a mean loss is already in G. Not thread-safe for a shared
    workspace.
    """
    params, params16, layout, gemm, buffers = _network_arrays(network, marker)
    L = layout.shape[0]
    needs = _array1d(p_needs, 2 * L + 1, np.int64(0))
    n_in = layout[0, FAN_IN]
    n_out = layout[L - 1, FAN_OUT]
    work, work16 = _workspace_arrays(workspace, marker)
    acts, cur, other, third, aux, sums = work
    _, acts16, cur16, other16 = work16
    grads = _array1d(p_grads, params.shape[0], marker)
    G = _array2d(p_G, n, n_out, marker)
    X = _array2d(p_X, n, n_in, marker)
    out = _array2d(p_out, n, n_out, marker)

    # BP1 (+ BP3 of the output layer).
    delta = _rows_view(cur, n, n_out)
    code = layout[L - 1, ACTIVATION]
    _, db = _layer_view(grads, layout, L - 1)
    if code == SOFTMAX:
        _softmax_vjp(G, out, delta)
        code = IDENTITY
    else:
        for i in range(n):
            _copy(G[i], delta[i])
    _activation_derivative(delta, out, code, db, needs[2 * L], np.int64(0), _rows_view(cur16, 0, n_out))
    X16 = _input_twin(X, work16)
    dX = _array2d(p_dX, n, n_in, marker)
    _backward(
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
        (buffers, aux, sums, _TRAINING, layout[0, :0]),
        0.0,
        np.int64(0),
        dX,
    )
