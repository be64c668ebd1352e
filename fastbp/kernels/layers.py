"""The options of a hidden layer, fused into its forward and backward epilogues: normalization, dropout and a
residual connection.

A hidden layer computes ``Z = A_prev @ W + b`` (its GEMM), then ``N = gamma x_hat + beta`` with ``x_hat`` the
normalized ``Z`` (or ``N = Z`` without normalization), ``H = f(N)``, dropout ``D = H * keep / (1 - p)``, and its
output ``A = A_prev + D`` with a residual connection (equal widths), else ``A = D``.

- Batch normalization (PyTorch's ``BatchNorm1d``): in training, each column's batch mean and biased variance,
  ``x_hat = (Z - mean) / sqrt(var + EPS)``, and the running statistics updated with ``MOMENTUM`` (the variance
  unbiased, n / (n - 1)); in evaluation, the running statistics instead.
- Layer normalization (``torch.nn.LayerNorm`` over the features): each row's mean and biased variance.
- Dropout (inverted, training only): unit (i, j) of layer l is kept when 32 bits of a counter-based hash of (seed,
  step, l, row id, j // 2) are at least the layer's threshold; the mask is computed again in the backward pass, never
  stored, and is the same for any thread count and any split of the batch (the row id is the row's index in the data
  set).

The forward epilogue takes two passes over Z (the batch statistics, then normalize, affine, activation, dropout and
residual add in one pass, as two loops over each row: the normalization, then the rest; layer norm's row statistics
are taken row by row). The backward epilogue goes from the
gradient of the layer's output ``dA`` (the GEMM ``delta_above @ W_above.T``, plus the gradient of the layer above
through its own residual connection) to ``delta = dC/dZ``, with the gradients of gamma, beta and b in the same passes:
two passes for batch norm (the column sums of dN and dN x_hat, then delta), one otherwise. In bfloat16 matmul
precision each epilogue then writes the twin of its result in a pass of its own.

What the backward pass needs is kept in an auxiliary workspace (layout.py ``_aux_views``): H when it differs from A,
x_hat and the inverse standard deviations of a normalized layer.
"""

import math

import numpy as np

from .._config import kernel, leaf, like
from .activations import EXP, IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH, _activate, _derivative_row, _fma
from .gemm import _bf16_row
from .layout import BATCH_NORM, LAYER_NORM, NO_NORM

EPS = 1e-5  # PyTorch's default for BatchNorm1d and LayerNorm
MOMENTUM = 0.1  # PyTorch's default for BatchNorm1d's running statistics
KEEP = 1.0 - MOMENTUM

# The hash of dropout: SplitMix64's finalizer (Steele, Lea and Flood), applied to the key made of the seed, the step,
# the layer and the row (once per row) and then to each pair of units.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@leaf
def _mix(z):
    """SplitMix64's finalizer: a bijective avalanche of a uint64."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@leaf
def _row_key(seed, step, layer, row):
    """The dropout key of one row of one layer at one step (uint64); see :func:`_dropout_row`."""
    z = _mix(np.uint64(seed) * _GOLDEN + np.uint64(step))
    z = _mix(z + np.uint64(layer) * _GOLDEN)
    return _mix(z + np.uint64(row) * _GOLDEN)


@leaf
def _row_id(ids, i):
    """The row id of row i of the batch: ``ids[i]`` (its index in the data set), or i without ids."""
    return ids[i] if ids.shape[0] > 0 else i


@leaf
def _dropout_words(m, i, run, ids, l, scratch):
    """The dropout words of row i of layer l (m units; run, ids: as the epilogues take them): a (2 ((m + 1) // 2),)
    uint32 view of ``scratch`` (float64 scratch of at least (m + 1) // 2 elements, overwritten). Unit j is kept when
    word j is at least the layer's threshold: hash h = ``mix(key + h * G)`` of the row's key (:func:`_row_key`)
    gives the words 2 h (its low half) and 2 h + 1 (its high half), one hash per two units (its 64-bit multiplies
    are the cost of dropout). The words are the hashes' memory read as uint32, which is that order on the
    little-endian machines Numba runs on."""
    key = _row_key(run[3], run[4], l, _row_id(ids, i))
    hashes = scratch[: (m + 1) // 2].view(np.uint64)
    for h in range(hashes.shape[0]):
        hashes[h] = _mix(key + np.uint64(h) * _GOLDEN)
    return hashes.view(np.uint32)


@leaf
def _dropout_row(Z, i, run, ids, l, threshold, scale, scratch):
    """Inverted dropout on row i of layer l, in place: ``Z[i] = Z[i] * keep / (1 - p)`` (scale: 1 / (1 - p) in Z's
    dtype; the mask: :func:`_dropout_words`). The backward pass applies it to the gradient, the forward pass (in
    :func:`_output_loop`) to the activation output: the same mask."""
    words = _dropout_words(Z.shape[1], i, run, ids, l, scratch)
    cut = np.uint32(threshold)
    zero = like(0.0, Z)
    for j in range(Z.shape[1]):
        Z[i, j] = Z[i, j] * scale if words[j] >= cut else zero


@leaf
def _output_loop(Z, c, i, code, H, keep_h, words, cut, dropout, scale, A_prev, residual):
    """Row i of a hidden layer's output, in place, for a code that is a constant after inlining: ``h = f(Z[i] + c)``
    (H[i] = h when ``keep_h``), then dropout (unit j kept when ``words[j] >= cut``, scaled by ``scale``), then the
    residual connection (``+ A_prev[i]``). One loop: the conditions are the same for every unit."""
    zero = like(0.0, Z)
    for j in range(Z.shape[1]):
        h = _activate(Z[i, j] + c[j], code)
        if keep_h:
            H[i, j] = h
        if dropout:
            h = h * scale if words[j] >= cut else zero
        if residual:
            h += A_prev[i, j]
        Z[i, j] = h


@leaf
def _output_row(Z, c, i, code, H, keep_h, words, cut, dropout, scale, A_prev, residual):
    """:func:`_output_loop` for an elementwise activation code: one loop per code, chosen once for the row (as
    activations.py ``_activate_row``)."""
    if code == RELU:
        _output_loop(Z, c, i, RELU, H, keep_h, words, cut, dropout, scale, A_prev, residual)
    elif code == TANH:
        _output_loop(Z, c, i, TANH, H, keep_h, words, cut, dropout, scale, A_prev, residual)
    elif code == SIGMOID:
        _output_loop(Z, c, i, SIGMOID, H, keep_h, words, cut, dropout, scale, A_prev, residual)
    elif code == LEAKY_RELU:
        _output_loop(Z, c, i, LEAKY_RELU, H, keep_h, words, cut, dropout, scale, A_prev, residual)
    elif code == EXP:
        _output_loop(Z, c, i, EXP, H, keep_h, words, cut, dropout, scale, A_prev, residual)
    else:
        _output_loop(Z, c, i, IDENTITY, H, keep_h, words, cut, dropout, scale, A_prev, residual)


@kernel
def _layer_forward(
    Z, b, code, Z16, A_prev, norm, gamma, beta, stats, H, XH, mean, inv, sums, threshold, residual, run, ids, l
):
    """The forward epilogue of hidden layer l with its options: ``A = A_prev + dropout(f(N(Z + b)))`` (see the
    module docstring), in place of Z.

    NumPy (batch norm, training): ``z = Z + b; x_hat = (z - z.mean(0)) / sqrt(z.var(0) + EPS); h = f(gamma x_hat +
    beta); A = A_prev + h * keep / (1 - p)``. Z: (n, m), holds ``A_prev @ W`` on entry and A on exit; b, gamma, beta:
    (m,); code: activation code; Z16: A's bfloat16 twin, output, or (0, m). A_prev: (n, m), read when ``residual``.
    norm: NO_NORM, BATCH_NORM or LAYER_NORM; stats: (2 m,) running mean then variance of a batch-norm layer (read in
    evaluation, updated in training when ``run[1]``), or empty. H, XH: (n, m) outputs, H = f(N) when kept (else 0 rows)
    and x_hat in training (else 0 rows); mean, inv: the means and inverse standard deviations, outputs: (m,) for batch
    norm, (n,) for layer norm, else empty. sums: float64 scratch of at least 3 m. threshold: dropout threshold (0:
    none); run: (training, update statistics, dropout on, seed, step); ids: (n,) row ids for the dropout hash, or
    (0,). l: the layer's index. Thread-safe for distinct outputs.
    """
    n, m = Z.shape
    if norm == BATCH_NORM:
        if run[0] != 0:
            # column sums shifted by the first row: one pass, without the cancellation of sum(z^2) - n mean^2
            s1, s2 = sums[:m], sums[m : 2 * m]
            for j in range(m):
                s1[j] = 0.0
                s2[j] = 0.0
            for i in range(n):
                for j in range(m):
                    d = np.float64(Z[i, j]) - Z[0, j]
                    s1[j] += d
                    s2[j] += d * d
            # the running statistics through fma: written as a * b + c * d, the fastmath flags let LLVM contract
            # either product, and it chose differently in the entry points that inline this (train_step's first
            # call and its later ones updated them 1 ulp apart)
            unbiased = MOMENTUM * (n / (n - 1.0))
            for j in range(m):
                shift = s1[j] / n
                var = max(s2[j] / n - shift * shift, 0.0)
                mu = np.float64(Z[0, j]) + b[j] + shift
                mean[j] = mu
                inv[j] = 1.0 / math.sqrt(var + EPS)
                if run[1] != 0:
                    stats[j] = _fma(MOMENTUM, mu, KEEP * np.float64(stats[j]))
                    stats[m + j] = _fma(unbiased, var, KEEP * np.float64(stats[m + j]))
        else:
            for j in range(m):
                mean[j] = stats[j]
                inv[j] = 1.0 / math.sqrt(stats[m + j] + EPS)
    elif norm == LAYER_NORM:
        for i in range(n):
            total = 0.0
            for j in range(m):
                total += np.float64(Z[i, j]) + b[j]
            mu = total / m
            sq = 0.0
            for j in range(m):
                d = (np.float64(Z[i, j]) + b[j]) - mu
                sq += d * d
            mean[i] = mu
            inv[i] = 1.0 / math.sqrt(sq / m + EPS)
    # the element pass, row by row: the normalization (x_hat kept, times gamma) in one loop, then the activation,
    # dropout and the residual connection in another (:func:`_output_row`); 8 loops as 2 took 20% less time
    training, dropout = run[0] != 0, run[2] != 0 and threshold > 0
    scale = like(4294967296.0 / (4294967296.0 - threshold), Z)
    scratch = sums[2 * m :]  # the dropout hashes of a row
    words = scratch[: (m + 1) // 2].view(np.uint32)  # read only with dropout: the row's words then
    cut = np.uint32(threshold)
    keep_h, twin, keep_x = H.shape[0] > 0, Z16.shape[0] > 0, training and norm != NO_NORM
    shift = beta if norm != NO_NORM else b  # added inside the activation: beta after gamma, or the bias
    for i in range(n):
        if norm == BATCH_NORM:
            for j in range(m):
                x = (Z[i, j] + b[j] - mean[j]) * inv[j]
                if keep_x:
                    XH[i, j] = x
                Z[i, j] = x * gamma[j]
        elif norm == LAYER_NORM:
            row_mean, row_inv = mean[i], inv[i]
            for j in range(m):
                x = (Z[i, j] + b[j] - row_mean) * row_inv
                if keep_x:
                    XH[i, j] = x
                Z[i, j] = x * gamma[j]
        if dropout:
            words = _dropout_words(m, i, run, ids, l, scratch)
        _output_row(Z, shift, i, code, H, keep_h, words, cut, dropout, scale, A_prev, residual)
    if twin:  # a pass of its own, as in forward.py's _bias_activation
        for i in range(n):
            _bf16_row(Z, Z16, i)


@kernel
def _layer_backward(
    G,
    skip,
    dA,
    code,
    H,
    norm,
    gamma,
    XH,
    inv,
    dgamma,
    dbeta,
    db,
    with_grads,
    accumulate,
    sums,
    threshold,
    run,
    ids,
    l,
    D16,
):
    """The backward epilogue of hidden layer l with its options: from ``dC/dA`` to ``delta = dC/dZ``, in place of G,
    with the gradients of gamma, beta and b.

    NumPy (batch norm): ``g = G + skip; dn = g * keep / (1 - p) * fprime(H); dgamma = (dn * x_hat).sum(0); dbeta =
    dn.sum(0); delta = gamma * inv_std / n * (n dn - dbeta - x_hat dgamma); db = delta.sum(0)``; layer norm takes the
    sums of ``dn * gamma`` over each row instead. G: (n, m), ``delta_above @ W_above.T`` on entry, delta on exit. skip:
    (n, m) the gradient of the layer above's output through its residual connection, added to G, or (0, m); dA: (n,
    m) output, ``dC/dA`` of this layer (for the BP2 below, when this layer has a residual connection), or (0, m); it
    may be the same buffer as skip. code: activation code; H: (n, m), the activation output f(N) (the layer's output
    when it keeps none apart). norm, gamma, XH (x_hat), inv: as the forward epilogue left them. dgamma, dbeta, db:
    (m,) outputs when ``with_grads`` (added to when ``accumulate``). sums: float64 scratch of at least 3 m. threshold,
    run, ids, l: the dropout of the forward pass (the same mask). D16: delta's bfloat16 twin, output, or (0, m).
    Thread-safe for distinct outputs.
    """
    if with_grads and not accumulate:
        db[:] = 0.0
        dgamma[:] = 0.0
        dbeta[:] = 0.0
    n, m = G.shape
    dropout = run[2] != 0 and threshold > 0
    scale = like(4294967296.0 / (4294967296.0 - threshold), G)
    scratch = sums[2 * m :]  # the dropout hashes of a row (the first 2 m hold batch norm's column sums)
    with_skip, store_da, twin = skip.shape[0] > 0, dA.shape[0] > 0, D16.shape[0] > 0
    nf, mf = like(n, G), like(m, G)
    s1, s2 = sums[:m], sums[m : 2 * m]
    if norm == BATCH_NORM:
        for j in range(m):
            s1[j] = 0.0
            s2[j] = 0.0
    for i in range(n):
        if with_skip:  # the gradient through the residual connection of the layer above
            for j in range(m):
                G[i, j] += skip[i, j]
        if store_da:  # dC/dA, which this layer's own residual connection passes down
            for j in range(m):
                dA[i, j] = G[i, j]
        if dropout:
            _dropout_row(G, i, run, ids, l, threshold, scale, scratch)
        _derivative_row(G, H, i, code)
        if norm == BATCH_NORM:
            for j in range(m):
                s1[j] += G[i, j]
                s2[j] += G[i, j] * XH[i, j]
        elif norm == LAYER_NORM:  # the row's sums of dN gamma and dN gamma x_hat, then its delta
            r1 = 0.0
            r2 = 0.0
            for j in range(m):
                t = G[i, j] * gamma[j]
                r1 += t
                r2 += t * XH[i, j]
            if with_grads:
                for j in range(m):
                    dgamma[j] += G[i, j] * XH[i, j]
                    dbeta[j] += G[i, j]
            c = like(inv[i] / m, G)
            r1_, r2_ = like(r1, G), like(r2, G)
            for j in range(m):
                G[i, j] = c * (mf * gamma[j] * G[i, j] - r1_ - XH[i, j] * r2_)
        if norm != BATCH_NORM and with_grads:
            for j in range(m):
                db[j] += G[i, j]
    if norm != BATCH_NORM:
        if twin:  # a pass of its own, as in forward.py's _bias_activation
            for i in range(n):
                _bf16_row(G, D16, i)
        return
    if with_grads:
        for j in range(m):
            dgamma[j] += s2[j]
            dbeta[j] += s1[j]
    for i in range(n):  # delta = gamma inv_std / n (n dN - sum dN - x_hat sum dN x_hat)
        for j in range(m):
            G[i, j] = gamma[j] * inv[j] / nf * (nf * G[i, j] - like(s1[j], G) - XH[i, j] * like(s2[j], G))
        if with_grads:
            for j in range(m):
                db[j] += G[i, j]
    if twin:
        for i in range(n):
            _bf16_row(G, D16, i)
