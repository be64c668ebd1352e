"""Where the time of a training step goes (``fastbp bench --profile``).

For a shape of docs/benchmarks.md, the whole step of the compiled epoch loop is timed against its parts, each timed
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
from .kernels.forward import _bias_activation
from .kernels.gemm import BLAS_GEMM, _gemm
from .kernels.layout import _unowned
from .kernels.loss import CROSS_ENTROPY, _output_delta
from .kernels.optimizers import SGD, _update
from .network import MLP

# Every timed loop first takes views of its arrays that own nothing (layout._unowned), as the arrays of the training
# loop are: an array passed from Python carries a reference count that each inlined call inside the loop would
# increment and decrement with atomic instructions (measured: more than half the time of the softmax kernel of S).


@njit(cache=True)
def _repeat_gemm(k, gemm, trans_a, trans_b, A, B, C):
    A, B, C = _unowned(A), _unowned(B), _unowned(C)
    for _ in range(k):
        _gemm(gemm, trans_a, trans_b, 1.0, A, B, 0.0, C)


@njit(cache=True)
def _gemm_sequence(k, gemm, X, W0, A0, D0, dW0, W1, A1, D1, dW1, W2, A2, D2, dW2):
    """The GEMMs of k training steps of a network of 2 or 3 layers (W2... empty for 2) in order: forward, then per
    layer from the top dW and the delta below."""
    X, W0, A0, D0, dW0 = _unowned(X), _unowned(W0), _unowned(A0), _unowned(D0), _unowned(dW0)
    W1, A1, D1, dW1 = _unowned(W1), _unowned(A1), _unowned(D1), _unowned(dW1)
    W2, A2, D2, dW2 = _unowned(W2), _unowned(A2), _unowned(D2), _unowned(dW2)
    three = W2.size > 0
    for _ in range(k):
        _gemm(gemm, 0, 0, 1.0, X, W0, 0.0, A0)
        _gemm(gemm, 0, 0, 1.0, A0, W1, 0.0, A1)
        if three:
            _gemm(gemm, 0, 0, 1.0, A1, W2, 0.0, A2)
            _gemm(gemm, 1, 0, 1.0, A1, D2, 0.0, dW2)
            _gemm(gemm, 0, 1, 1.0, D2, W2, 0.0, D1)
        _gemm(gemm, 1, 0, 1.0, A0, D1, 0.0, dW1)
        _gemm(gemm, 0, 1, 1.0, D1, W1, 0.0, D0)
        _gemm(gemm, 1, 0, 1.0, X, D0, 0.0, dW0)


@njit(cache=True)
def _repeat_bias_relu(k, A, b):
    A, b = _unowned(A), _unowned(b)
    A16 = np.empty((0, A.shape[1]), np.uint16)  # no bfloat16 twin
    for _ in range(k):
        _bias_activation(A, b, RELU, A16)


@njit(cache=True)
def _repeat_output(k, Z, b, Y, labels, sw, delta, db):
    Z, b, Y, labels, sw, delta, db = (
        _unowned(Z),
        _unowned(b),
        _unowned(Y),
        _unowned(labels),
        _unowned(sw),
        _unowned(delta),
        _unowned(db),
    )
    total = 0.0
    for _ in range(k):
        total += _output_delta(Z, b, Y, labels, sw, SOFTMAX, CROSS_ENTROPY, 1.0 / Z.shape[0], delta, db, 1, 0)
    return total


@njit(cache=True)
def _repeat_relu_derivative(k, D, A, db):
    D, A, db = _unowned(D), _unowned(A), _unowned(db)
    D16 = np.empty((0, D.shape[1]), np.uint16)  # no bfloat16 twin
    for _ in range(k):
        _activation_derivative(D, A, RELU, db, 1, 0, D16)


@njit(cache=True)
def _repeat_update(k, hyper, layout, params, grads, state, out, sq_norms):
    hyper, layout, params, grads = _unowned(hyper), _unowned(layout), _unowned(params), _unowned(grads)
    state, out, sq_norms = _unowned(state), _unowned(out), _unowned(sq_norms)
    out16 = np.empty(0, np.uint16)  # no bfloat16 twin
    total = 0.0
    for _ in range(k):
        total += _update(SGD, hyper, LR, 1, 1.0, layout, params, grads, state, out, out16, sq_norms, 1)
    return total


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
    if len(sizes) not in (3, 4):
        raise ValueError(f"the profile covers networks of 2 or 3 layers, got layer sizes {sizes}")
    rng = np.random.default_rng(0)
    gemm = BLAS_GEMM[np.dtype(dtype)]
    pairs = list(itertools.pairwise(sizes))
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    Ws = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype) for a, b in pairs]
    bs = [rng.standard_normal(b).astype(dtype) for _, b in pairs]
    As = [np.abs(rng.standard_normal((n, b))).astype(dtype) for _, b in pairs]
    Ds = [rng.standard_normal((n, b)).astype(dtype) for _, b in pairs]
    dWs = [np.empty_like(W) for W in Ws]
    dbs = [np.zeros_like(b) for b in bs]
    labels = rng.integers(0, sizes[-1], n).astype(np.int64)
    no_Y, no_sw, no_state = np.zeros((0, sizes[-1]), dtype), np.zeros(0, dtype), np.zeros((0, 1), dtype)
    net = MLP(sizes, dtype=dtype, seed=0)
    grads = (rng.standard_normal(net.n_params) * 1e-3).astype(dtype)
    out, sq_norms, hyper = np.empty_like(net.params), np.zeros(len(pairs)), np.zeros(3)
    hidden = range(len(pairs) - 1)
    small = _repeats(1e6, n * sum(sizes[1:]))
    empty = np.zeros((0, 0), dtype)
    layers = [a for l in range(3) for a in ((Ws[l], As[l], Ds[l], dWs[l]) if l < len(pairs) else (empty,) * 4)]

    def timed(fn, k):
        return lambda: bench.per_call(lambda: fn(k), min_time) / k

    def summed(fns):
        return lambda: sum(fn() for fn in fns)

    parts = {
        "GEMMs in sequence": timed(
            lambda k: _gemm_sequence(k, gemm, X, *layers), _repeats(2e8, bench.flops_per_step(sizes, n))
        ),
        "hidden bias + ReLU": summed([timed(lambda k, l=l: _repeat_bias_relu(k, As[l], bs[l]), small) for l in hidden]),
        "output softmax, loss, delta, bias grad": timed(
            lambda k: _repeat_output(k, As[-1], bs[-1], no_Y, labels, no_sw, Ds[-1], dbs[-1]), small
        ),
        "hidden ReLU' + bias grad": summed(
            [timed(lambda k, l=l: _repeat_relu_derivative(k, Ds[l], As[l], dbs[l]), small) for l in hidden]
        ),
        "SGD update": timed(
            lambda k: _repeat_update(k, hyper, net._layout, net.params, grads, no_state, out, sq_norms),
            _repeats(1e7, net.n_params),
        ),
    }
    for name, m, k, cols, ta, tb in step_gemms(sizes, n):
        A = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
        B = rng.standard_normal((cols, k) if tb else (k, cols)).astype(dtype)
        C = np.empty((m, cols), dtype=dtype)
        parts[name] = timed(
            lambda r, A=A, B=B, C=C, ta=ta, tb=tb: _repeat_gemm(r, gemm, ta, tb, A, B, C),
            _repeats(2e8, 2 * m * k * cols),
        )
    return parts


def profile(shape, dtype="float32", rounds=5, min_time=0.2):
    """Seconds per step of the whole step and of each part (see the module docstring), medians over ``rounds`` rounds
    that alternate the step and its parts. ``shape``: a name of ``fastbp.bench.SHAPES``, or a pair (layer sizes, batch);
    ``min_time``: seconds each timing runs at least. Returns a dict: shape, dtype, sizes, batch, flops (of the GEMMs),
    step, parts (name -> seconds, in the order: GEMM sequence, the other work, then each GEMM)."""
    if isinstance(shape, str) and shape not in bench.SHAPES:
        deep = " (the step of a network with layer options is not broken down)" if shape in bench.DEEP else ""
        raise ValueError(f"shape must be one of {', '.join(bench.SHAPES)} or (sizes, batch), got {shape!r}{deep}")
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
    """Seconds per step of the step's GEMMs, each timed alone, summed (from a ``profile`` result)."""
    return sum(result["parts"][g[0]] for g in step_gemms(result["sizes"], result["batch"]))


def profile_table(result, peak):
    """A Markdown table of one ``profile`` result; ``peak``: the GEMM peak in GFLOP/s of the same run."""
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
