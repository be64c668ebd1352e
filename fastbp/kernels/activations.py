"""Activation functions and their derivatives, by integer code.

Every derivative is written in terms of the activation OUTPUT ``A = f(Z)``, so the pre-activation ``Z`` never
has to be stored (docs/design.md): sigmoid' = A (1 - A), tanh' = 1 - A^2, relu' = [A > 0], leaky_relu' = 1 or slope,
identity' = 1, exp' = A. Softmax and exp are output activations only; softmax's Jacobian is not elementwise and is
handled in :mod:`fastbp.kernels.loss`.

The helpers are inlined into their callers. The row helpers (:func:`_activate_row`, :func:`_derivative_row`)
branch on the code once per row, outside the loop over the row, and pass the code as a constant, so each loop body
is specialised to one activation and vectorises, while the passes that call them are compiled once, not once per
code (their compile time, not their run time, would grow with the number of codes).
"""

import math

import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.extending import intrinsic, overload

from .._config import leaf, like
from .layout import _pointer_at

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX, EXP = 0, 1, 2, 3, 4, 5, 6

#: Public names (and aliases) -> code. Softmax and exp are valid for the output layer only.
ACTIVATIONS = {
    "identity": IDENTITY,
    "linear": IDENTITY,
    "sigmoid": SIGMOID,
    "logistic": SIGMOID,
    "tanh": TANH,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "softmax": SOFTMAX,
    "exp": EXP,
}
NAMES = {
    IDENTITY: "identity",
    SIGMOID: "sigmoid",
    TANH: "tanh",
    RELU: "relu",
    LEAKY_RELU: "leaky_relu",
    SOFTMAX: "softmax",
    EXP: "exp",
}
HIDDEN = ("identity", "linear", "sigmoid", "logistic", "tanh", "relu", "leaky_relu")

LEAKY_SLOPE = 0.01


@leaf
def _sigmoid(z):
    """1 / (1 + exp(-z)) without overflow: one exp of -|z|, and e * s rather than 1 - s for z < 0, which keeps
    full relative precision for large negative z."""
    e = math.exp(-abs(z))
    s = like(1.0, z) / (like(1.0, z) + e)
    return s if z >= 0 else e * s


# The helpers below compute in the type of their argument: a float64 literal would turn a float32 loop into a
# float64 one, with a conversion each way per element (the ReLU derivative pass took 1.6x as long).


@leaf
def _activate(z, code):
    """f(z) for a scalar z and an elementwise activation code (not softmax), in z's type."""
    if code == SIGMOID:
        return _sigmoid(z)
    if code == TANH:
        return math.tanh(z)
    # Written as "z <= 0" so that NaN propagates (NaN <= 0 is False): a relu must not hide a diverged network.
    if code == RELU:
        return like(0.0, z) if z <= 0 else z
    if code == LEAKY_RELU:
        return like(LEAKY_SLOPE, z) * z if z <= 0 else z
    if code == EXP:  # libm's exp (the vectorised one covers z <= 0 only); output layers are narrow
        return math.exp(z)
    return z


@leaf
def _derivative(a, code):
    """f'(z) expressed through the output a = f(z), for an elementwise activation code, in a's type."""
    one = like(1.0, a)
    if code == SIGMOID:
        return a * (one - a)
    if code == TANH:
        return one - a * a
    if code == RELU:  # "a <= 0" as in the forward pass: a NaN passes the gradient on, as in PyTorch
        return like(0.0, a) if a <= 0 else one
    if code == LEAKY_RELU:
        return one if a > 0 else like(LEAKY_SLOPE, a)
    if code == EXP:
        return a
    return one


@leaf
def _activate_loop(Z, b, i, code):
    """Z[i, j] <- f(Z[i, j] + b[j]) over row i, for a code that is a constant after inlining."""
    for j in range(Z.shape[1]):
        Z[i, j] = _activate(Z[i, j] + b[j], code)


@leaf
def _activate_row(Z, b, i, code):
    """Z[i, j] <- f(Z[i, j] + b[j]) over row i, for an elementwise activation code (not softmax): one loop per code,
    chosen once for the row."""
    if code == RELU:
        _activate_loop(Z, b, i, RELU)
    elif code == TANH:
        _activate_loop(Z, b, i, TANH)
    elif code == SIGMOID:
        _activate_loop(Z, b, i, SIGMOID)
    elif code == LEAKY_RELU:
        _activate_loop(Z, b, i, LEAKY_RELU)
    elif code == EXP:
        _activate_loop(Z, b, i, EXP)
    else:
        _activate_loop(Z, b, i, IDENTITY)


@leaf
def _derivative_loop(G, A, i, code):
    """G[i, j] <- G[i, j] * f'(A[i, j]) over row i, for a code that is a constant after inlining."""
    for j in range(G.shape[1]):
        G[i, j] *= _derivative(A[i, j], code)


@leaf
def _derivative_row(G, A, i, code):
    """G[i, j] <- G[i, j] * f'(z) over row i, with f' taken from the activation output A[i, j] (elementwise code):
    one loop per code, chosen once for the row (none for the identity, whose derivative is 1)."""
    if code == RELU:
        _derivative_loop(G, A, i, RELU)
    elif code == TANH:
        _derivative_loop(G, A, i, TANH)
    elif code == SIGMOID:
        _derivative_loop(G, A, i, SIGMOID)
    elif code == LEAKY_RELU:
        _derivative_loop(G, A, i, LEAKY_RELU)
    elif code == EXP:
        _derivative_loop(G, A, i, EXP)


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (LLVM's fma intrinsic) for three floats of one type. Vectorisable, and,
    unlike a written ``a * b + c``, never re-associated by the fastmath flags (which would undo the two-constant
    argument reduction of :func:`_exp_nonpositive`)."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, args)

    return a(a, b, c), codegen


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float whose IEEE bits are the integer ``bits``: int32 -> float32, int64 -> float64 (a bit cast)."""
    floats = {types.int32: types.float32, types.int64: types.float64}
    if bits not in floats:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))

    return floats[bits](bits), codegen


@intrinsic
def _bits_of_float(typingctx, x):
    """The IEEE bits of a float as a signed integer: float32 -> int32, float64 -> int64 (a bit cast)."""
    ints = {types.float32: types.int32, types.float64: types.int64}
    if x not in ints:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))

    return ints[x](x), codegen


def _flip(u):
    """u with its 31 (int32) or 63 (int64) low bits flipped when u is negative (compiled code only; see the
    overload)."""
    raise NotImplementedError("_flip() is for compiled code")


@overload(_flip, inline="always")
def _flip_impl(u):
    if u == types.int32:
        shift32, mask32 = np.int32(31), np.int32(0x7FFFFFFF)

        def flip32(u):
            return np.int32(u ^ ((u >> shift32) & mask32))  # Numba widens int32 operations to int64

        return flip32
    if u == types.int64:
        shift64, mask64 = np.int64(63), np.int64(0x7FFFFFFFFFFFFFFF)

        def flip64(u):
            return u ^ ((u >> shift64) & mask64)

        return flip64
    return None


@leaf
def _order_key(z):
    """A signed integer that orders like the float z: its bits with the magnitude bits of a negative z flipped (-0
    just below +0, a NaN above +inf or below -inf by its sign). A row's maximum taken over these keys is an integer
    maximum, which LLVM vectorises; a float maximum it vectorises only without NaNs, which the fastmath flags do not
    assume (measured 6x faster on rows of 1000). :func:`_key_float` is its inverse."""
    return _flip(_bits_of_float(z))


@leaf
def _key_float(key):
    """The float whose :func:`_order_key` is ``key`` (int32 -> float32, int64 -> float64)."""
    return _float_from_bits(_flip(key))


def _exp_nonpositive(x):
    """exp(x) for a float x <= 0 (compiled code only; see the overload)."""
    raise NotImplementedError("_exp_nonpositive() is for compiled code")


@overload(_exp_nonpositive, inline="always")
def _exp_nonpositive_impl(x):
    """exp(x) for x <= 0 (softmax's shifted logits) in x's precision, written out so that a loop of them
    vectorises: Numba here has no vector math library, and a loop calling libm's exp runs one element at a time
    (about 5x slower than this one per float32 element).

    exp(x) = 2^k exp(r) with k = round(x / ln 2) and r = x - k ln 2 in [-ln2/2, ln2/2], ln 2 taken in two parts
    (Cody and Waite) through fma; exp(r) by a polynomial: Cephes' degree-7 minimax form for float32, the Taylor
    series to degree 13 for float64 (truncation error below 5e-18 on that interval); 2^k from its exponent bits.
    Accurate to about 1 unit in the last place (tests/test_kernels.py measures it against NumPy). Results below the
    smallest normal float are subnormal, as NumPy's: their bits are the integer nearest to the polynomial times
    2^(k + 1074) in float64 (2^(k + 149) in float32), the one rounding (a product by 2^k, which underflows, is what
    the fastmath flags would re-associate it into); for x < -103.98 in float32 (-745.14 in float64), where exp(x) is
    below half the smallest subnormal float, the result is 0; exp(-inf) = 0; NaN gives NaN. Positive x is outside
    its domain (the result is then meaningless).
    """
    if x == types.float32:
        lo, log2e, hi_ln2, lo_ln2 = (np.float32(v) for v in (-103.98, 1.4426950408889634, 0.6931472, -1.9046542e-09))
        c = tuple(np.float32(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2))
        c4, c5, one, half, zero = (np.float32(v) for v in (1.6666665459e-1, 5.0000001201e-1, 1.0, 0.5, 0.0))
        normal, below = np.float32(-126.0), np.float32(-127.0)  # the smallest normal exponent, and one under it

        def exp32(x):
            xc = lo if x < lo else x  # NaN stays NaN
            k = np.floor((xc if xc == xc else zero) * log2e + half)  # a NaN never reaches the int conversion
            r = _fma(-k, lo_ln2, _fma(-k, hi_ln2, xc))
            p = ((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c4) * r + c5
            q = p * r * r + r + one
            small = k < normal
            kn, ks = (normal, k) if small else (k, below)  # each lane's power in range, the other lane unused
            power = _float_from_bits(np.int32((np.int32(kn) + 127) << 23))  # Numba widens int32 sums
            sub = _float_from_bits(np.int32(np.rint(q * _float_from_bits(np.int32((np.int32(ks) + 276) << 23)))))
            e = sub if small else q * power
            return zero if x < lo else e

        return exp32
    if x == types.float64:
        lo, log2e, hi_ln2, lo_ln2 = -745.14, 1.4426950408889634, 0.6931471805599453, 2.3190468138462996e-17
        inv_fact = tuple(1.0 / math.factorial(k) for k in range(14))

        def exp64(x):
            xc = lo if x < lo else x
            k = np.floor((xc if xc == xc else 0.0) * log2e + 0.5)
            r = _fma(-k, lo_ln2, _fma(-k, hi_ln2, xc))
            p = inv_fact[13]
            for j in range(12, -1, -1):  # a constant trip count: unrolled
                p = p * r + inv_fact[j]
            small = k < -1022.0
            kn, ks = (-1022.0, k) if small else (k, -1023.0)  # each lane's power in range, the other lane unused
            power = _float_from_bits((np.int64(kn) + np.int64(1023)) << np.int64(52))
            scaled = p * _float_from_bits((np.int64(ks) + np.int64(2097)) << np.int64(52))  # p 2^(k + 1074)
            sub = _float_from_bits(np.int64(np.rint(scaled)))  # m 2^-1074, the subnormal's bits (2^52: 2^-1022)
            e = sub if small else p * power
            return 0.0 if x < lo else e

        return exp64
    return None


def _exp_block(Z):
    """Z <- exp(Z) in place for a 2-D float array with entries <= 0 (compiled code only; see the overload)."""
    raise NotImplementedError("_exp_block() is for compiled code")


@overload(_exp_block, inline="always")
def _exp_block_impl(Z):
    """One vectorisable loop over all of a C-contiguous block (rows of a narrow output layer are too short for a loop
    per row to vectorise); a loop per row for any other layout."""
    if Z.layout == "C":

        def flat(Z):
            z = carray(_pointer_at(Z, 0), Z.size)  # not reshape: see layout._matrix_at
            for k in range(z.shape[0]):
                z[k] = _exp_nonpositive(z[k])

        return flat

    def rows(Z):
        for i in range(Z.shape[0]):
            for j in range(Z.shape[1]):
                Z[i, j] = _exp_nonpositive(Z[i, j])

    return rows


@leaf
def _bias_shift_row(Z, b, i):
    """Z[i] <- Z[i] + b - max(Z[i] + b); returns ``(max, sum of the logits z in float64)``. Then
    ``exp(Z[i])`` (:func:`_exp_block`) is in (0, 1] with at least one 1: nothing overflows, the row's sum is at least
    1, ``lse = max + log(sum)`` and ``softmax = exp(Z[i]) / sum``. The logits' sum is finite exactly when every
    logit is (a -inf logit gives a zero exp and would otherwise go unnoticed)."""
    m = Z.shape[1]
    k_max = _order_key(Z[i, 0] + b[0])
    z_sum = 0.0
    for j in range(m):
        z = Z[i, j] + b[j]
        Z[i, j] = z
        k_max = max(k_max, _order_key(z))
        z_sum += z
    z_max = _key_float(k_max)
    for j in range(m):
        Z[i, j] -= z_max
    return z_max, z_sum


@leaf
def _row_sum(Z, i):
    """sum_j Z[i, j] in float64 (the softmax's sum of exps: a confident row's log(1 + tiny) needs more than float32)."""
    total = 0.0
    for j in range(Z.shape[1]):
        total += Z[i, j]
    return total
