"""The forward pass: per layer ``A = f(A_prev @ W + b)``, over the layout table.

One GEMM writes ``A_prev @ W`` into the output buffer, then ONE pass over that buffer adds the bias and applies
the activation in place, so the pre-activation ``Z`` is never stored separately. :func:`_forward_hidden` is the
loop over the hidden layers that every pass runs (training, evaluation, prediction, the PyTorch bridge); the
output layer's epilogue is the caller's: the plain one (:func:`_forward_into`) or the one fused with the loss.

In bfloat16 matmul precision the GEMMs read bfloat16 twins of their operands (gemm.py): the epilogue writes the
twin of each hidden activation ``A16`` in a second pass over the block it has just written (a branch in the first
pass slowed it), and the input's twin is made once at the start. In the
dtype's own precision every twin is an empty (0-row) view and is never touched.
"""

from numba.extending import overload

from .._config import kernel, leaf, like
from .activations import (
    SOFTMAX,
    _activate_row,
    _bias_shift_row,
    _exp_block,
    _row_sum,
)
from .gemm import _bf16_row, _matmul, _plain_tier
from .layers import _layer_forward
from .layout import (
    ACTIVATION,
    BATCH_NORM,
    DROPOUT,
    FAN_OUT,
    GAMMA_OFFSET,
    NO_NORM,
    NORM,
    RESIDUAL,
    STATS_OFFSET,
    _activation_view,
    _aux_views,
    _layer_view,
    _plain,
    _twin_view,
)


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
def _bias_activation(Z, b, code, Z16):
    """In place ``Z[...] = f(Z + b)``, and ``Z16[...] = bfloat16(Z)`` when Z16 has rows; the epilogue of the dense
    forward GEMM.

    NumPy: ``Z[...] = f(Z + b)`` (softmax row-wise). Z: (n, m) C-contiguous, output. b: (m,). code: activation
    code of :mod:`fastbp.kernels.activations`. Z16: (n, m) uint16, output (the bfloat16 twin), or (0, m) for none
    (a softmax output has none). Thread-safe for distinct Z.
    """
    if code == SOFTMAX:
        _bias_softmax(Z, b)
        return
    for i in range(Z.shape[0]):
        _activate_row(Z, b, i, code)
    if Z16.shape[0] > 0:  # a pass of its own: tested in the loop above, the branch slowed it by 20-46%
        for i in range(Z.shape[0]):
            _bf16_row(Z, Z16, i)


@kernel
def _dense_forward(gemm, A_prev, A_prev16, W, W16, b, code, A, A16):
    """Dense layer forward ``A = f(A_prev @ W + b)``: one GEMM into A, then one fused bias+activation pass.

    NumPy: ``A[...] = f(A_prev @ W + b)``. gemm: the GEMMs (gemm.py :func:`~fastbp.kernels.gemm._matmul`);
    A_prev: (n, fan_in); W: (fan_in, fan_out); b: (fan_out,); A: (n, fan_out), output. All C-contiguous, one dtype.
    A_prev16, W16: their bfloat16 twins (read in bfloat16 precision); A16: A's twin, output (0 rows: none).
    Thread-safe for distinct A.
    """
    _matmul(gemm, 0, 0, A_prev, A_prev16, W, W16, 0.0, A)
    _bias_activation(A, b, code, A16)


@leaf
def _layer_input(layout, l, X, acts):
    """The input of layer l: X (n, n_in) for the first layer, else the (n, fan_in) activations of layer l - 1 in the
    workspace ``acts`` (X may be the input's twin, with acts the activations' twin: the same views of them)."""
    if l == 0:
        return X
    return _activation_view(acts, layout, l - 1, X.shape[0])


@leaf
def _to_bf16_rows(X, X16):
    """X16[...] = bfloat16(X) for (n, m) arrays (X16 uint16)."""
    for i in range(X16.shape[0]):
        _bf16_row(X, X16, i)


@leaf
def _layer_options(params, buffers, layout, l):
    """(gamma, beta, running statistics) of layer l: (fan_out,) views into params and a (2 fan_out,) view into
    buffers (mean, then variance), empty for a layer without normalization (statistics: without batch norm)."""
    m = layout[l, FAN_OUT]
    g = layout[l, GAMMA_OFFSET]
    normed = layout[l, NORM] != NO_NORM
    gamma = params[g : g + m] if normed else params[:0]
    beta = params[g + m : g + 2 * m] if normed else params[:0]
    s = layout[l, STATS_OFFSET]
    stats = buffers[s : s + 2 * m] if layout[l, NORM] == BATCH_NORM else buffers[:0]
    return gamma, beta, stats


@kernel
def _forward_hidden(gemm, params, params16, layout, X, X16, acts, acts16, opts):
    """Forward pass of every hidden layer, ``A[l] = f(A[l-1] @ W[l] + b[l])`` for l < L - 1, into the workspace;
    with a layer's options (normalization, dropout, residual connection: layers.py) when it has any.

    NumPy: ``A = X; for W, b, f in hidden layers: A = f(A @ W + b)``. gemm: the GEMMs; params: (n_params,);
    layout: (L, 12) int64; X: (n, n_in) C-contiguous; acts: 1-D workspace of at least n * sum(fan_out) elements,
    output (layer l's A at :func:`~fastbp.kernels.layout._activation_view`). In bfloat16 precision, params16 and
    acts16 are the twins of params and acts, and X16 (n, n_in) uint16 is written with X's twin first; otherwise
    params16 and acts16 are empty and X16 has 0 rows. opts = (buffers, aux, sums, run, ids): the running statistics
    (updated in training), the auxiliary workspace (output), float64 scratch, the run flags (training, update
    statistics, dropout, seed, step) and the batch's row ids (layers.py). Not thread-safe for a shared workspace.
    """
    n = X.shape[0]
    n16 = X16.shape[0]
    _to_bf16_rows(X, X16)
    for l in range(layout.shape[0] - 1):
        W, b = _layer_view(params, layout, l)
        A_prev = _layer_input(layout, l, X, acts)
        A_prev16 = _layer_input(layout, l, X16, acts16)
        A = _activation_view(acts, layout, l, n)
        A16 = _activation_view(acts16, layout, l, n16)
        W16 = _twin_view(params16, layout, l)
        if _plain(layout, l):
            _dense_forward(gemm, A_prev, A_prev16, W, W16, b, layout[l, ACTIVATION], A, A16)
        else:
            _options_forward(gemm, params, params16, layout, l, A_prev, A_prev16, A, A16, opts)


def _options_forward(gemm, params, params16, layout, l, A_prev, A_prev16, A, A16, opts):
    """The forward pass of hidden layer l with its options: its GEMM into A, then :func:`~fastbp.kernels.layers.
    _layer_forward` (compiled code only; see the overload). Arguments as for :func:`_forward_hidden`; A_prev,
    A_prev16: the layer's input and its twin; A, A16: its output and its twin."""
    raise NotImplementedError("_options_forward() is for compiled code")


@overload(_options_forward, inline="always")
def _options_forward_impl(gemm, params, params16, layout, l, A_prev, A_prev16, A, A16, opts):
    if _plain_tier(gemm):  # the plain tier (boundary.py): its networks have no options, nor any of their code

        def plain(gemm, params, params16, layout, l, A_prev, A_prev16, A, A16, opts):
            pass

        return plain

    def full(gemm, params, params16, layout, l, A_prev, A_prev16, A, A16, opts):
        buffers, aux, sums, run, ids = opts
        W, b = _layer_view(params, layout, l)
        _matmul(gemm, 0, 0, A_prev, A_prev16, W, _twin_view(params16, layout, l), 0.0, A)
        gamma, beta, stats = _layer_options(params, buffers, layout, l)
        H, XH, mean, inv = _aux_views(aux, layout, l, A.shape[0])
        _layer_forward(
            A,
            b,
            layout[l, ACTIVATION],
            A16,
            A_prev,
            layout[l, NORM],
            gamma,
            beta,
            stats,
            H,
            XH,
            mean,
            inv,
            sums,
            layout[l, DROPOUT],
            layout[l, RESIDUAL],
            run,
            ids,
            l,
        )

    return full


@leaf
def _forward_into(gemm, params, params16, layout, X, X16, acts, acts16, opts, out):
    """The whole forward pass: hidden activations into ``acts``, the network output into ``out`` (n, n_out).

    NumPy: ``out[...] = reference.predict(net, X)``. Arguments as for :func:`_forward_hidden`; out: C-contiguous,
    output. Not thread-safe for a shared workspace.
    """
    L = layout.shape[0]
    _forward_hidden(gemm, params, params16, layout, X, X16, acts, acts16, opts)
    W, b = _layer_view(params, layout, L - 1)
    no_twin = _activation_view(acts16, layout, L - 1, 0)
    _dense_forward(
        gemm,
        _layer_input(layout, L - 1, X, acts),
        _layer_input(layout, L - 1, X16, acts16),
        W,
        _twin_view(params16, layout, L - 1),
        b,
        layout[L - 1, ACTIVATION],
        out,
        no_twin,
    )


@leaf
def _forward_to_logits(gemm, params, params16, layout, X, X16, acts, acts16, opts):
    """The forward pass up to the output layer's GEMM: returns (Z, b) with ``Z = A[L-1] @ W[L]`` (n, n_out) in the
    workspace, without the bias, for an output epilogue fused with the loss."""
    L = layout.shape[0]
    _forward_hidden(gemm, params, params16, layout, X, X16, acts, acts16, opts)
    W, b = _layer_view(params, layout, L - 1)
    Z = _activation_view(acts, layout, L - 1, X.shape[0])
    _matmul(
        gemm,
        0,
        0,
        _layer_input(layout, L - 1, X, acts),
        _layer_input(layout, L - 1, X16, acts16),
        W,
        _twin_view(params16, layout, L - 1),
        0.0,
        Z,
    )
    return Z, b
