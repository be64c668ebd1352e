"""Where the time of a training step goes (``fastbp bench --profile``).

For a shape of BENCHMARKS.md, the whole step of the compiled epoch loop is timed against its parts, each timed
alone from compiled code on the step's own shapes and thread count:

- every GEMM of the step (forward, weight gradients, deltas), and all of them in sequence on distinct buffers, so
  that each meets the caches as in a real step rather than warmed by its own repetition: the floor that the matrix
  products put under a step of ANY implementation on this BLAS;
- the work around the GEMMs: the hidden layers' bias + activation passes, the output layer (softmax, loss, output
  delta and bias gradient), the hidden layers' derivative and bias-gradient passes, and the SGD update.

The GEMM share shows what limits the step: near 100%, only a faster GEMM makes it faster.
"""

import itertools

import numpy as np
from numba import njit

from . import bench
from .bench import LR
from .kernels.activations import RELU, SOFTMAX
from .kernels.backward import _activation_derivative
from .kernels.boundary import _array1d, _array2d
from .kernels.forward import _bias_activation
from .kernels.gemm import _gemm
from .kernels.layout import N_COLUMNS
from .kernels.loss import CROSS_ENTROPY, _output_delta
from .kernels.optimizers import SGD, _update
from .network import MLP

# Every timed loop rebuilds its arrays from addresses, as the entry points of the training loop do (boundary.py):
# an array passed from Python carries a reference count that each inlined call inside the loop would increment
# and decrement with atomic instructions (measured: more than half the time of the softmax kernel of shape S).


@njit(cache=True)
def _matrix(table, i, marker):
    """Row i of an int64 table (address, rows, cols) as an array of marker's dtype (see boundary.py)."""
    return _array2d(table[i, 0], table[i, 1], table[i, 2], marker)


@njit(cache=True)
def _repeat_gemm(k, trans_a, trans_b, table, marker):
    A, B, C = _matrix(table, 0, marker), _matrix(table, 1, marker), _matrix(table, 2, marker)
    for _ in range(k):
        _gemm(trans_a, trans_b, 1.0, A, B, 0.0, C)


@njit(cache=True)
def _gemm_sequence(k, table, L, marker):
    """The GEMMs of k training steps in order: forward, then per layer from the top dW and the delta below.
    table rows: X, then W, A, D, dW of each layer."""
    X = _matrix(table, 0, marker)
    for _ in range(k):
        _gemm(0, 0, 1.0, X, _matrix(table, 1, marker), 0.0, _matrix(table, 2, marker))
        for l in range(1, L):
            W, A, A_prev = (
                _matrix(table, 1 + 4 * l, marker),
                _matrix(table, 2 + 4 * l, marker),
                _matrix(table, 4 * l - 2, marker),
            )
            _gemm(0, 0, 1.0, A_prev, W, 0.0, A)
        for l in range(L - 1, 0, -1):
            W, D, dW = (
                _matrix(table, 1 + 4 * l, marker),
                _matrix(table, 3 + 4 * l, marker),
                _matrix(table, 4 + 4 * l, marker),
            )
            A_prev, D_prev = _matrix(table, 4 * l - 2, marker), _matrix(table, 4 * l - 1, marker)
            _gemm(1, 0, 1.0, A_prev, D, 0.0, dW)
            _gemm(0, 1, 1.0, D, W, 0.0, D_prev)
        _gemm(1, 0, 1.0, X, _matrix(table, 3, marker), 0.0, _matrix(table, 4, marker))


@njit(cache=True)
def _repeat_bias_relu(k, table, marker):
    """Rows of table: A and b (as 1 x m) of one layer."""
    A, b = _matrix(table, 0, marker), _matrix(table, 1, marker)[0]
    for _ in range(k):
        _bias_activation(A, b, RELU)


@njit(cache=True)
def _repeat_output(k, table, p_labels, marker):
    """Rows of table: Z, b (1 x m), delta, db (1 x m) of the output layer."""
    Z, b, delta, db = (
        _matrix(table, 0, marker),
        _matrix(table, 1, marker)[0],
        _matrix(table, 2, marker),
        _matrix(table, 3, marker)[0],
    )
    n, m = Z.shape
    labels = _array1d(p_labels, n, np.int64(0))
    Y, sw = _array2d(0, 0, m, marker), _array1d(0, 0, marker)
    total = 0.0
    for _ in range(k):
        total += _output_delta(Z, b, Y, labels, sw, SOFTMAX, CROSS_ENTROPY, 1.0 / n, delta, db, 1, 0)
    return total


@njit(cache=True)
def _repeat_relu_derivative(k, table, marker):
    """Rows of table: delta, A, db (1 x m) of one hidden layer."""
    D, A, db = _matrix(table, 0, marker), _matrix(table, 1, marker), _matrix(table, 2, marker)[0]
    for _ in range(k):
        _activation_derivative(D, A, RELU, db, 1, 0)


@njit(cache=True)
def _repeat_update(k, table, p_layout, L, marker):
    """Rows of table: params, grads, out (each 1 x n_params), sq_norms (1 x L, float64 at its address)."""
    params, grads, out = _matrix(table, 0, marker)[0], _matrix(table, 1, marker)[0], _matrix(table, 2, marker)[0]
    layout = _array2d(p_layout, L, N_COLUMNS, np.int64(0))
    sq_norms = _array1d(table[3, 0], L, np.float64(0))
    hyper = _array1d(table[4, 0], 3, np.float64(0))
    state = _array2d(0, 0, params.shape[0], marker)
    total = 0.0
    for _ in range(k):
        total += _update(SGD, hyper, LR, 1, 1.0, layout, params, grads, state, out, sq_norms, 1)
    return total


def _table(*arrays):
    """int64 (len(arrays), 3): address, rows, cols of each C-contiguous array (1-D arrays as one row)."""
    rows = []
    for a in arrays:
        assert a.flags.c_contiguous
        shape = a.shape if a.ndim == 2 else (1, a.shape[0])
        rows.append((a.ctypes.data, *shape))
    return np.array(rows, dtype=np.int64)


def step_gemms(sizes, n):
    """(name, m, k, n_cols, trans_a, trans_b) of every GEMM of one step: forward, weight gradients, deltas."""
    gemms = []
    for l, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        gemms.append((f"forward {l}", n, fan_in, fan_out, 0, 0))
        gemms.append((f"dW {l}", fan_in, n, fan_out, 1, 0))
        if l > 0:
            gemms.append((f"delta {l - 1}", n, fan_out, fan_in, 0, 1))
    return gemms


def _repeats(work, per_rep):
    """Repetitions inside one compiled call, so that a call lasts about 1 ms or more (Python's call overhead
    then disappears from the figure)."""
    return max(1, int(work / per_rep))


def _timer(sizes, n, dtype, min_time):
    """name -> function returning seconds per step of that part, for one shape (arrays made once)."""
    rng = np.random.default_rng(0)
    pairs = list(itertools.pairwise(sizes))
    marker = np.dtype(dtype).type(0)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    Ws = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype) for a, b in pairs]
    bs = [rng.standard_normal(b).astype(dtype) for _, b in pairs]
    As = [np.abs(rng.standard_normal((n, b))).astype(dtype) for _, b in pairs]
    Ds = [rng.standard_normal((n, b)).astype(dtype) for _, b in pairs]
    dWs = [np.empty_like(W) for W in Ws]
    dbs = [np.zeros_like(b) for b in bs]
    labels = rng.integers(0, sizes[-1], n).astype(np.int64)
    net = MLP(sizes, dtype=dtype, seed=0)
    grads = (rng.standard_normal(net.n_params) * 1e-3).astype(dtype)
    out, sq_norms, hyper = np.empty_like(net.params), np.zeros(len(pairs)), np.zeros(3)
    keep = [X, Ws, bs, As, Ds, dWs, dbs, labels, net, grads, out, sq_norms, hyper]  # alive while timed
    hidden = range(len(pairs) - 1)
    small = _repeats(1e6, n * sum(sizes[1:]))

    def timed(fn, k):
        return lambda: (keep, bench.per_call(lambda: fn(k), min_time) / k)[1]

    def summed(fns):
        return lambda: sum(fn() for fn in fns)

    sequence = _table(X, *[a for l in range(len(pairs)) for a in (Ws[l], As[l], Ds[l], dWs[l])])
    bias = [_table(As[l], bs[l]) for l in hidden]
    deriv = [_table(Ds[l], As[l], dbs[l]) for l in hidden]
    output = _table(As[-1], bs[-1], Ds[-1], dbs[-1])
    update = np.array([[a.ctypes.data, 1, a.size] for a in (net.params, grads, out, sq_norms, hyper)], dtype=np.int64)
    parts = {
        "GEMMs in sequence": timed(
            lambda k: _gemm_sequence(k, sequence, len(pairs), marker), _repeats(2e8, bench.flops_per_step(sizes, n))
        ),
        "hidden bias + ReLU": summed([timed(lambda k, t=t: _repeat_bias_relu(k, t, marker), small) for t in bias]),
        "output softmax, loss, delta, bias grad": timed(
            lambda k: _repeat_output(k, output, labels.ctypes.data, marker), small
        ),
        "hidden ReLU' + bias grad": summed(
            [timed(lambda k, t=t: _repeat_relu_derivative(k, t, marker), small) for t in deriv]
        ),
        "SGD update": timed(
            lambda k: _repeat_update(k, update, net._layout.ctypes.data, len(pairs), marker),
            _repeats(1e7, net.n_params),
        ),
    }
    for name, m, k, cols, ta, tb in step_gemms(sizes, n):
        A = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
        B = rng.standard_normal((cols, k) if tb else (k, cols)).astype(dtype)
        C = np.empty((m, cols), dtype=dtype)
        keep.append((A, B, C))
        table = _table(A, B, C)
        parts[name] = timed(
            lambda r, t=table, ta=ta, tb=tb: _repeat_gemm(r, ta, tb, t, marker),
            _repeats(2e8, 2 * m * k * cols),
        )
    return parts


def profile(shape, dtype="float32", rounds=5, min_time=0.2):
    """Seconds per step of the whole step and of each part (see the module docstring), medians over ``rounds``
    rounds that alternate the step and its parts. ``shape``: a name of :data:`fastbp.bench.SHAPES`, or a pair
    (layer sizes, batch). Returns a dict: shape, dtype, sizes, batch, flops (of the GEMMs), step, parts (name ->
    seconds, in the order: GEMM sequence, the other work, then each GEMM)."""
    sizes, batch = bench.SHAPES[shape] if isinstance(shape, str) else shape
    step, per = bench.fastbp_step(sizes, batch, dtype)
    parts = _timer(sizes, batch, dtype, min_time)
    steps, times = [], {name: [] for name in parts}
    for _ in range(rounds):
        steps.append(bench.per_call(step, min_time) / per)
        for name, fn in parts.items():
            times[name].append(fn())
    return {
        "shape": shape if isinstance(shape, str) else "-",
        "dtype": dtype,
        "sizes": list(sizes),
        "batch": batch,
        "flops": sum(2 * m * k * n for _, m, k, n, _, _ in step_gemms(sizes, batch)),
        "step": float(np.median(steps)),
        "parts": {name: float(np.median(t)) for name, t in times.items()},
    }


def gemms_alone(result):
    """Seconds per step of the step's GEMMs, each timed alone, summed (from a :func:`profile` result)."""
    return sum(result["parts"][g[0]] for g in step_gemms(result["sizes"], result["batch"]))


def profile_table(result, peak):
    """A Markdown table of one :func:`profile` result; ``peak``: the GEMM peak in GFLOP/s of the same run."""
    step, parts = result["step"], result["parts"]
    gemm_names = [g[0] for g in step_gemms(result["sizes"], result["batch"])]
    alone = gemms_alone(result)
    sequence = parts["GEMMs in sequence"]
    other = [name for name in parts if name not in gemm_names and name != "GEMMs in sequence"]
    rows = [
        f"{result['shape']} {'-'.join(map(str, result['sizes']))} batch {result['batch']} {result['dtype']}: "
        f"whole step {1e6 * step:.1f} us",
        "",
        "| part | us per step | % of the step | GFLOP/s |",
        "|---|---|---|---|",
        f"| GEMMs in sequence on distinct buffers | {1e6 * sequence:.1f} | {100 * sequence / step:.0f}% | "
        f"{result['flops'] / sequence / 1e9:.0f} |",
        f"| GEMMs each alone, summed | {1e6 * alone:.1f} | {100 * alone / step:.0f}% | "
        f"{result['flops'] / alone / 1e9:.0f} ({100 * result['flops'] / alone / 1e9 / peak:.0f}% of peak) |",
    ]
    for name in other:
        rows.append(f"| {name} | {1e6 * parts[name]:.2f} | {100 * parts[name] / step:.0f}% | |")
    rest = step - sequence - sum(parts[name] for name in other)
    rows.append(
        f"| rest (loop, batch views, checks; negative: the parts overlap or ran slower alone) | "
        f"{1e6 * rest:.2f} | {100 * rest / step:.0f}% | |"
    )
    for name, m, k, n, _, _ in step_gemms(result["sizes"], result["batch"]):
        t = parts[name]
        rows.append(
            f"| {name}: ({m} x {k}) @ ({k} x {n}) | {1e6 * t:.2f} | {100 * t / step:.0f}% | "
            f"{2 * m * k * n / t / 1e9:.0f} |"
        )
    return "\n".join(rows)
