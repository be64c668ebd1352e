"""Activation functions and their derivatives, by integer code.

Every derivative is written in terms of the activation OUTPUT ``A = f(Z)``, so the pre-activation ``Z`` never
has to be stored (DESIGN.md): sigmoid' = A (1 - A), tanh' = 1 - A^2, relu' = [A > 0], leaky_relu' = 1 or slope,
identity' = 1. Softmax is only an output activation; its Jacobian is not elementwise and is handled in
:mod:`fastbp.kernels.loss`.

The helpers are inlined into their callers; callers branch on the code once, outside their loops, and pass
the code as a constant, so each loop body is specialised to one activation and vectorises.
"""

import math

from .._config import leaf

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX = 0, 1, 2, 3, 4, 5

#: Public names (and aliases) -> code. Softmax is valid for the output layer only.
ACTIVATIONS = {
    "identity": IDENTITY,
    "linear": IDENTITY,
    "sigmoid": SIGMOID,
    "logistic": SIGMOID,
    "tanh": TANH,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "softmax": SOFTMAX,
}
NAMES = {
    IDENTITY: "identity",
    SIGMOID: "sigmoid",
    TANH: "tanh",
    RELU: "relu",
    LEAKY_RELU: "leaky_relu",
    SOFTMAX: "softmax",
}
HIDDEN = ("identity", "linear", "sigmoid", "logistic", "tanh", "relu", "leaky_relu")

LEAKY_SLOPE = 0.01


@leaf
def _sigmoid(z):
    """1 / (1 + exp(-z)) without overflow: one exp of -|z|, and e * s rather than 1 - s for z < 0, which keeps
    full relative precision for large negative z."""
    e = math.exp(-abs(z))
    s = 1.0 / (1.0 + e)
    return s if z >= 0 else e * s


@leaf
def _activate(z, code):
    """f(z) for a scalar z and an elementwise activation code (not softmax)."""
    if code == SIGMOID:
        return _sigmoid(z)
    if code == TANH:
        return math.tanh(z)
    # Written as "z <= 0" so that NaN propagates (NaN <= 0 is False): a relu must not hide a diverged network.
    if code == RELU:
        return 0.0 if z <= 0 else z
    if code == LEAKY_RELU:
        return LEAKY_SLOPE * z if z <= 0 else z
    return z


@leaf
def _derivative(a, code):
    """f'(z) expressed through the output a = f(z), for an elementwise activation code."""
    if code == SIGMOID:
        return a * (1.0 - a)
    if code == TANH:
        return 1.0 - a * a
    if code == RELU:
        return 1.0 if a > 0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if a > 0 else LEAKY_SLOPE
    return 1.0


@leaf
def _bias_exp_row(Z, b, i):
    """Z[i] <- exp(Z[i] + b - max(Z[i] + b)), one exp per element in the array's dtype; returns
    ``(max, sum of the exps, sum of the logits z in float64)``, so that ``lse = max + log(sum)`` and
    ``softmax = Z[i] / sum``. The shift by the maximum keeps every exp in (0, 1], so nothing overflows and the sum
    is at least 1. The logits' sum is finite exactly when every logit is (a -inf logit gives a zero exp and would
    otherwise go unnoticed)."""
    m = Z.shape[1]
    z_max = Z[i, 0] + b[0]
    z_sum = 0.0
    for j in range(m):
        z = Z[i, j] + b[j]
        Z[i, j] = z
        z_max = max(z_max, z)
        z_sum += z
    total = 0.0
    for j in range(m):
        e = math.exp(Z[i, j] - z_max)
        Z[i, j] = e
        total += e
    return z_max, total, z_sum
