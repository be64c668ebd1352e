"""The benchmark report: fastbp against a lean NumPy step and every installed peer, in one run.

One training step = forward + backward + plain SGD update on one mini-batch: ReLU hidden layers, softmax +
cross-entropy (docs/benchmarks.md). Every contender trains on the same STEPS_PER_CALL mini-batches in turn (new data
at each step, as in training; the batches are made before timing, so no contender pays for gathering them). Each
contender's step is timed in rounds interleaved A B C ... A B C ..., each
round a loop lasting at least ``min_time``; the report gives the median time per step (min and max over rounds),
GFLOP/s, the percent of the machine's single-GEMM peak measured in the same run, and the ratio of each peer's
time to fastbp's, computed within each round and then the median taken (absolute times drift on a shared
machine, same-round ratios much less).

Contenders: ``fastbp`` (the compiled epoch loop, per step), ``numpy`` (the lean NumPy step a user would write:
vectorised, no input checks, ``numpy_train_step``), ``reference`` (``fastbp.reference.value_and_grad``, which
checks its inputs, then ``params -= lr * grads``; at S and M only, where its checks show), ``torch`` (eager:
``nn.Sequential`` of ``Linear``/``ReLU``, ``CrossEntropyLoss``, ``optim.SGD``), ``jax`` (the whole step under
``jax.jit``). Missing peers are skipped with a printed note.
scikit-learn's ``MLPClassifier`` is compared on whole ``fit`` calls (digits, same hyper-parameters).

The deep shape ``D`` (``DEEP``) has layer options (batch norm, residual connections, dropout): there the peers
build the same model (PyTorch from ``Linear``/``BatchNorm1d``/``ReLU``/``Dropout`` with the skip connection, JAX the
same functions under ``jax.jit``, dropout from each framework's own generator), and ``plain`` is fastbp's network of
the same widths without the options, to show what they cost. The NumPy peers have no step at D.
"""

import itertools
import os
import platform
import statistics
import time

import numpy as np

from . import _files, reference
from .network import MLP
from .optim import SGD
from .threads import _is_gemm_library
from .trainer import Trainer

SHAPES = {
    "S": ([64, 128, 10], 32),
    "M": ([784, 256, 256, 10], 128),
    "L": ([784, 1024, 1024, 10], 256),
    "XL": ([1024, 4096, 4096, 1024], 512),
}
#: The matrix of docs/benchmarks.md: every shape in float32, S and M in float64 too, and every shape in bfloat16 matmul
#: precision (a float32 network; its peers in float32, and PyTorch under bfloat16 autocast) where it is available.
#: The deep shape: 784-256x4-10 with batch norm on every hidden layer, a residual connection on every one that keeps
#: its width, and dropout 0.1 (docs/benchmarks.md).
DEEP = {"D": ([784, 256, 256, 256, 256, 10], 128)}
LAYER_OPTIONS = {"D": {"norm": "batch", "residual": [False, True, True, True], "dropout": 0.1}}
MATRIX = [(s, "float32") for s in SHAPES] + [("S", "float64"), ("M", "float64"), ("D", "float32")]
MATRIX_BF16 = [(s, "bfloat16") for s in SHAPES]
QUICK = [("S", "float32"), ("M", "float32")]
QUICK_BF16 = [("M", "bfloat16")]


def matrix(quick=False):
    """The cells of a run: ``MATRIX`` (or ``QUICK``), with the bfloat16 cells where bfloat16 matmul precision
    is available on this machine."""
    from . import _onednn

    bf16 = _onednn.info()["reason"] is None
    return (QUICK + QUICK_BF16 * bf16) if quick else (MATRIX + MATRIX_BF16 * bf16)


LR = 1e-3
STEPS_PER_CALL = 16


def flops_per_step(sizes, n):
    """6 n sum(fan_in fan_out) - 2 n fan_in_0 fan_out_0: forward 2 and backward 4 flops per weight and sample,
    except the gradient with respect to X, which nobody needs."""
    weights = sum(a * b for a, b in itertools.pairwise(sizes))
    return 6 * n * weights - 2 * n * sizes[0] * sizes[1]


def per_call(fn, min_time):
    """Seconds per call of fn, from a loop lasting at least ``min_time`` (after one warm-up call)."""
    fn()
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / reps
        reps = max(2 * reps, int(reps * 1.2 * min_time / max(elapsed, 1e-9)) + 1)


#: Seconds of idle time before each contender's timed loop. OpenBLAS's worker threads spin for about 0.1 s after a
#: threaded GEMM, and PyTorch's and OpenMP's for a few ms after a parallel op; on 2 cores a contender started while
#: the previous one's workers still spin runs several times slower (measured: up to 5x for a GEMM, 60x for a torch
#: parallel op). The pause lets them park, so each contender is timed on an idle machine.
SETTLE = 0.3


def interleaved(functions, rounds, min_time):
    """Time ``{name: (fn, steps per call)}`` in rounds A B C ... A B C ...; returns name -> seconds per step, one
    value per round (compare contenders round by round: the machine drifts between rounds). Each timing starts after
    ``SETTLE`` seconds of idle time."""
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, (fn, steps) in functions.items():
            time.sleep(SETTLE)
            times[name].append(per_call(fn, min_time) / steps)
    return times


def same_round_ratio(times, numerator, denominator):
    """Median over rounds of times[numerator] / times[denominator]."""
    return float(np.median(np.array(times[numerator]) / np.array(times[denominator])))


def blas_gemm(dtype):
    """The GEMM of fastbp's passes (``fastbp.kernels.gemm.BLAS_GEMM``) as a Python function ``gemm(A, B, C)``:
    ``C[...] = A @ B`` for C-ordered arrays A (m, k), B (k, n), C (m, n) of ``dtype`` (float32 or float64), through
    ctypes with the arguments of the compiled call (kernels/gemm.py)."""
    import ctypes
    import sys

    from .kernels.gemm import BLAS_GEMM

    real = ctypes.c_float if np.dtype(dtype) == np.float32 else ctypes.c_double
    integer = ctypes.c_int64 if sys.byteorder == "little" else ctypes.c_int32
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)(BLAS_GEMM[np.dtype(dtype)])
    ref = ctypes.byref
    no = ctypes.c_char(b"N")

    def gemm(A, B, C):
        (m, k), n = A.shape, B.shape[1]
        ints = [integer(v) for v in (n, m, k)]  # row-major C = A @ B as column-major C.T = B.T @ A.T
        pointers = [ctypes.c_void_p(x.ctypes.data) for x in (B, A, C)]
        args = [ref(no), ref(no), *map(ref, ints), ref(real(1.0)), pointers[0], ref(integer(n)), pointers[1]]
        fn(*args, ref(integer(k)), ref(real(0.0)), pointers[2], ref(integer(n)))

    return gemm


def gemm_peak(dtype, size=2048, repeats=3):
    """GFLOP/s of the BLAS GEMM fastbp calls (:func:`blas_gemm`) on size x size matrices: best of repeats."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((size, size)).astype(dtype)
    B = rng.standard_normal((size, size)).astype(dtype)
    C = np.zeros((size, size), dtype=dtype)
    gemm = blas_gemm(dtype)
    gemm(A, B, C)
    best = min(_timed(lambda: gemm(A, B, C)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def best_peak(peaks, dtype):
    """Measure ``gemm_peak`` again and keep the best in ``peaks`` (dtype -> GFLOP/s); returns it. Called before
    each cell: one measurement taken while another process held a core would make every percentage of the run too
    high (seen: 127% at L)."""
    peaks[dtype] = max(peaks.get(dtype, 0.0), gemm_peak(dtype))
    return peaks[dtype]


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------- contenders
def _data(sizes, batch, dtype, steps=STEPS_PER_CALL):
    """X (batch * steps, n_in) of ``dtype`` and int64 labels y: the ``steps`` consecutive mini-batches that every
    contender trains on in turn, so that each step meets new data (as in training) and the same data for all."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch * steps, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch * steps)
    return X, y


def _batches(X, y, batch):
    """The (X, y) mini-batches of ``batch`` consecutive rows, as views."""
    return [(X[i : i + batch], y[i : i + batch]) for i in range(0, X.shape[0], batch)]


def shape_of(shape):
    """(sizes, batch, layer options) of a shape name of ``SHAPES`` or ``DEEP``."""
    sizes, batch = SHAPES[shape] if shape in SHAPES else DEEP[shape]
    return sizes, batch, LAYER_OPTIONS.get(shape, {})


def fastbp_step(sizes, batch, dtype, trainable=None, matmul_precision="float32", options=None):
    """The compiled epoch loop over the STEPS_PER_CALL batches, in order (no shuffling, so the batches are views of
    X, as the peers' are): returns (function, steps per call). ``trainable``: per-layer flags of the network
    (frozen layers skip their weight-gradient GEMM); ``options``: the network's layer options (norm, residual,
    dropout)."""
    X, y = _data(sizes, batch, dtype)
    net = MLP(sizes, dtype=dtype, seed=0, trainable=trainable, matmul_precision=matmul_precision, **(options or {}))
    trainer = Trainer(net, SGD(LR), batch_size=batch, progress=False, divergence_factor=None)
    Xc, Y2d, labels = net.check_batch(X, y)
    perm = np.arange(X.shape[0], dtype=np.int64)
    schedule = trainer._schedule(None)
    return (lambda: trainer._run(Xc, Y2d, labels, perm, batch, schedule)), STEPS_PER_CALL


# ---------------------------------------------------------------------------------------------- the lean NumPy peer
# What a user writes in NumPy for this network (ReLU hidden layers, softmax + cross-entropy): vectorised, the
# parameters as a list of (W, b) arrays, no input checks. The peer of every per-call entry point.


def numpy_layers(sizes, dtype):
    """The network's initial parameters, the same values as ``MLP(sizes, dtype=dtype, seed=0)``'s, as a list of
    ``(W (fan_in, fan_out), b (fan_out,))`` arrays of ``dtype`` per layer (copies)."""
    net = MLP(sizes, dtype=dtype, seed=0)
    return [(W.copy(), b.copy()) for W, b in zip(net.coefs, net.intercepts, strict=True)]


def numpy_forward(layers, X):
    """Lean NumPy forward pass: the (n, n_out) softmax outputs for X (n, n_in) of the layers' dtype."""
    A = X
    for W, b in layers[:-1]:
        A = np.maximum(A @ W + b, 0)
    W, b = layers[-1]
    Z = A @ W + b
    Z -= Z.max(axis=1, keepdims=True)
    np.exp(Z, out=Z)
    Z /= Z.sum(axis=1, keepdims=True)
    return Z


def numpy_value_and_grad(layers, X, y):
    """Lean NumPy forward and backward pass: ``(loss, [(dW, db) per layer])``, the mean cross-entropy of X (n, n_in)
    against the int labels y (n,) and its gradient, arrays of the layers' dtype."""
    acts = [X]
    for W, b in layers[:-1]:
        acts.append(np.maximum(acts[-1] @ W + b, 0))
    W, b = layers[-1]
    Z = acts[-1] @ W + b
    Z -= Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    S = E.sum(axis=1, keepdims=True)
    n = X.shape[0]
    rows = np.arange(n)
    loss = float(np.mean(np.log(S[:, 0]) - Z[rows, y]))
    delta = E / S
    delta[rows, y] -= 1
    delta /= n
    grads = []
    for l in range(len(layers) - 1, -1, -1):
        grads.append((acts[l].T @ delta, delta.sum(axis=0)))
        if l:
            delta = (delta @ layers[l][0].T) * (acts[l] > 0)
    return loss, grads[::-1]


def numpy_train_step(layers, X, y, lr=LR):
    """Lean NumPy training step: ``numpy_value_and_grad``, then SGD on the layers in place; returns the loss."""
    loss, grads = numpy_value_and_grad(layers, X, y)
    for (W, b), (dW, db) in zip(layers, grads, strict=True):
        W -= lr * dW
        b -= lr * db
    return loss


def numpy_epoch(layers, X, y, batch, rng, lr=LR):
    """Lean NumPy epoch over X (n, n_in) and int labels y (n,): the rows shuffled by ``rng`` (a NumPy Generator), each
    batch of ``batch`` rows gathered by fancy indexing, one ``numpy_train_step`` per batch; returns the mean loss
    over the samples."""
    perm = rng.permutation(X.shape[0])
    loss = 0.0
    for start in range(0, len(perm), batch):
        idx = perm[start : start + batch]
        loss += numpy_train_step(layers, X[idx], y[idx], lr) * len(idx)
    return loss / len(perm)


def numpy_step(sizes, batch, dtype):
    """The lean NumPy step (``numpy_train_step``) over the STEPS_PER_CALL batches."""
    batches = _batches(*_data(sizes, batch, dtype), batch)
    layers = numpy_layers(sizes, dtype)

    def steps():
        for X, y in batches:
            numpy_train_step(layers, X, y)

    return steps, len(batches)


def reference_step(sizes, batch, dtype):
    """The NumPy reference, which checks its inputs: ``reference.value_and_grad``, then an SGD update of the flat
    parameters."""
    batches = _batches(*_data(sizes, batch, dtype), batch)
    net = MLP(sizes, dtype=dtype, seed=0)

    def steps():
        for X, y in batches:
            _, grads = reference.value_and_grad(net, X, y)
            net.params[:] -= LR * grads

    return steps, len(batches)


def _torch_model(sizes, options):
    """The ReLU network as a torch module: ``nn.Sequential`` of ``Linear``/``ReLU``, or with layer options
    (``norm="batch"``, ``residual`` per hidden layer, ``dropout``) a module that adds each residual layer's input to
    its output."""
    import torch

    if not options:
        layers = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers[:-1])
    if options.get("norm") not in (None, "batch"):
        raise ValueError(f"the torch peer builds batch norm only, not {options['norm']!r}")
    hidden = len(sizes) - 2
    residual = options.get("residual", False)
    residual = residual if isinstance(residual, list) else [residual] * hidden

    class Deep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList()
            for fan_in, fan_out in itertools.pairwise(sizes[:-1]):
                norm = [torch.nn.BatchNorm1d(fan_out)] if options.get("norm") else []
                layers = [torch.nn.Linear(fan_in, fan_out), *norm, torch.nn.ReLU()]
                self.blocks.append(torch.nn.Sequential(*layers, torch.nn.Dropout(options.get("dropout", 0.0))))
            self.out = torch.nn.Linear(sizes[-2], sizes[-1])

        def forward(self, x):
            for block, skip in zip(self.blocks, residual, strict=True):
                x = x + block(x) if skip else block(x)
            return self.out(x)

    return Deep()


def torch_step(sizes, batch, dtype, autocast=False, options=None):
    """PyTorch eager; with ``autocast``, the forward pass under ``torch.autocast("cpu", dtype=torch.bfloat16)``
    (bfloat16 matrix products, float32 parameters), PyTorch's own mixed precision. ``options``: layer options of
    the model (``_torch_model``), trained in ``train()`` mode."""
    import contextlib

    import torch

    model = _torch_model(sizes, options).to(getattr(torch, dtype)).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = [(torch.from_numpy(X), torch.from_numpy(y)) for X, y in _batches(*_data(sizes, batch, dtype), batch)]

    def mixed():
        return torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def steps():
        for tX, ty in batches:
            opt.zero_grad()
            with mixed():
                out = model(tX)
            loss_fn(out.float() if autocast else out, ty).backward()  # autocast's bfloat16 output: the loss in float32
            opt.step()

    return steps, len(batches)


def torch_bf16_step(sizes, batch, dtype):
    """``torch_step`` under bfloat16 autocast (float32 data and parameters)."""
    return torch_step(sizes, batch, dtype, autocast=True)


def jax_step(sizes, batch, dtype, options=None):
    """The whole step under ``jax.jit``. ``options``: batch norm (batch statistics, running statistics returned with
    the parameters, momentum 0.1), residual connections and dropout (``jax.random`` keyed by the step), as fastbp's
    layer options."""
    import jax

    # set for every cell, so that a float64 cell before leaves no 64-bit labels or random numbers to the next ones
    jax.config.update("jax_enable_x64", dtype == "float64")
    import jax.numpy as jnp

    options = options or {}
    hidden = len(sizes) - 2
    residual = options.get("residual", False)
    residual = residual if isinstance(residual, list) else [residual] * hidden
    norm, rate = options.get("norm") == "batch", options.get("dropout", 0.0)
    net = MLP(sizes, dtype=dtype, seed=0)
    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in zip(net.coefs, net.intercepts, strict=True)]
    if norm:  # gamma and beta after each hidden layer's (W, b); running means and variances apart
        params = [(*p, jnp.ones(p[1].shape, dtype), jnp.zeros(p[1].shape, dtype)) for p in params[:-1]] + params[-1:]
    stats = [(jnp.zeros(m, dtype), jnp.ones(m, dtype)) for m in sizes[1:-1]] if norm else []

    def loss(params, stats, X, y, key):
        A, new_stats = X, []
        for l, layer in enumerate(params[:-1]):
            Z = A @ layer[0] + layer[1]
            if norm:
                mean, var = Z.mean(axis=0), Z.var(axis=0)
                Z = layer[2] * (Z - mean) / jnp.sqrt(var + 1e-5) + layer[3]
                n = X.shape[0]
                running_mean, running_var = stats[l]
                new_stats.append((0.9 * running_mean + 0.1 * mean, 0.9 * running_var + 0.1 * var * n / (n - 1)))
            H = jax.nn.relu(Z)
            if rate:
                keep = jax.random.bernoulli(jax.random.fold_in(key, l), 1.0 - rate, H.shape)
                H = jnp.where(keep, H / (1.0 - rate), 0.0)
            A = A + H if residual[l] else H
        W, b = params[-1]
        logp = jax.nn.log_softmax(A @ W + b)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), new_stats

    base = jax.random.key(0)

    @jax.jit
    def update(params, stats, X, y, step):
        key = jax.random.fold_in(base, step)  # in the jitted step: no eager op per step (dead code without dropout)
        grads, new_stats = jax.grad(loss, has_aux=True)(params, stats, X, y, key)
        return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), new_stats

    batches = [(jnp.asarray(X), jnp.asarray(y)) for X, y in _batches(*_data(sizes, batch, dtype), batch)]
    state = {"params": params, "stats": stats, "step": 0}

    def steps():
        for jX, jy in batches:
            state["params"], state["stats"] = update(state["params"], state["stats"], jX, jy, state["step"])
            state["step"] += 1
        jax.block_until_ready(state["params"])

    return steps, len(batches)


def plain_step(sizes, batch, dtype, options=None, matmul_precision="float32"):
    """fastbp's network of the same widths and matmul precision without its layer options (what the options
    cost)."""
    return fastbp_step(sizes, batch, dtype, matmul_precision=matmul_precision)


CONTENDERS = {
    "fastbp": fastbp_step,
    "numpy": numpy_step,
    "reference": reference_step,
    "torch": torch_step,
    "jax": jax_step,
    "torch_bf16": torch_bf16_step,
    "plain": plain_step,
}
#: The contenders of a shape with layer options (``LAYER_OPTIONS``).
DEEP_CONTENDERS = ("fastbp", "plain", "torch", "jax")
#: The shapes where the NumPy reference's step is timed too: there its input checks show beside the lean step; at the
#: GEMM-bound shapes the two take the same time.
REFERENCE_SHAPES = ("S", "M")
#: Contenders that run in bfloat16 matmul precision (the others, in a bfloat16 cell, run in float32).
BF16_CONTENDERS = ("torch_bf16",)


def available_peers(names=("torch", "jax"), report=print):
    """The optional peers that can be imported; a note is printed for each missing one."""
    found = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            hint = "pip install torch==2.13.0" if name == "torch" else "pip install jax"
            report(f"note: {name} is not installed; its column is skipped ({hint})")
        except Exception as err:  # installed but broken (a missing library, mismatched versions)
            why = f"{type(err).__name__}: {err}"
            report(f"note: {name} is installed but fails to import ({why}); its column is skipped")
        else:
            found.append(name)
    return found


def gradient_check(sizes, batch, dtype, matmul_precision="float32", options=None):
    """Relative difference of fastbp's gradient from the reference's on this machine's BLAS (a guard against a
    BLAS kernel that computes wrong results on this processor; in bfloat16 precision, against the reference's exact
    bfloat16 products)."""
    X, y = _data(sizes, batch, dtype, 1)
    net = MLP(sizes, dtype=dtype, seed=0, matmul_precision=matmul_precision, **(options or {}))
    _, g = net.value_and_grad(X, y)
    _, ref = reference.value_and_grad(net, X, y)
    return float(np.linalg.norm(g.astype(np.float64) - ref) / np.linalg.norm(ref))


def measure_cell(shape, dtype, contenders, rounds, min_time):
    """Time every contender on one (shape, dtype), interleaved; returns a result dict. dtype "bfloat16": fastbp in
    bfloat16 matmul precision, the float32 peers, and PyTorch under bfloat16 autocast (``torch_bf16``)."""
    sizes, batch, options = shape_of(shape)
    bf16 = dtype == "bfloat16"
    data = "float32" if bf16 else dtype
    steps = {}
    for name in contenders:
        if (name in BF16_CONTENDERS and not bf16) or (options and name not in DEEP_CONTENDERS):
            continue
        if (name == "reference" and shape not in REFERENCE_SHAPES) or (name == "plain" and not options):
            continue  # plain without layer options is fastbp's own network
        if name in ("fastbp", "plain"):  # fastbp's precision, and plain as fastbp without the options
            precision = "bfloat16" if bf16 else "float32"
            steps[name] = CONTENDERS[name](sizes, batch, data, matmul_precision=precision, options=options)
        elif options:
            steps[name] = CONTENDERS[name](sizes, batch, data, options=options)
        else:
            steps[name] = CONTENDERS[name](sizes, batch, data)
    times = interleaved(steps, rounds, min_time)
    flops = flops_per_step(sizes, batch)
    result = {
        "shape": shape,
        "sizes": sizes,
        "batch": batch,
        "dtype": dtype,
        "flops": flops,
        "peers": {},
        "options": options,
        "gradient_rel_diff": gradient_check(sizes, batch, data, "bfloat16" if bf16 else "float32", options),
    }
    for name, ts in times.items():
        ts = np.array(ts)
        result["peers"][name] = {
            "median_s": float(np.median(ts)),
            "min_s": float(ts.min()),
            "max_s": float(ts.max()),
            "gflops": flops / float(np.median(ts)) / 1e9,
            "ratio": same_round_ratio(times, name, "fastbp"),  # peer time / fastbp time, same round
            "times_s": [float(t) for t in ts],  # per round, in the order of the rounds (the ratios' inputs)
        }
    return result


def compare_fit(X_train, y_train, X_test, y_test, params, rounds=1):
    """Fit ``fastbp.sklearn.MLPClassifier`` and scikit-learn's ``MLPClassifier`` with the same ``params``,
    alternating (ours, theirs, ...) for ``rounds`` rounds; returns median fit seconds, epochs, per-epoch ratio and
    test accuracy of both. X: (n, d) float32 or float64; y: (n,) labels."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from .sklearn import MLPClassifier as FastMLPClassifier

    def fit(cls):
        time.sleep(SETTLE)  # let the other library's BLAS workers stop spinning (see SETTLE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            model = cls(**params).fit(X_train, y_train)
            return model, time.perf_counter() - start

    fit(FastMLPClassifier)  # warm-up: load the compiled kernels
    times = {"fastbp": [], "sklearn": []}
    for _ in range(rounds):
        ours, t = fit(FastMLPClassifier)
        times["fastbp"].append(t)
        theirs, t = fit(MLPClassifier)
        times["sklearn"].append(t)
    fastbp_s, sklearn_s = statistics.median(times["fastbp"]), statistics.median(times["sklearn"])
    return {
        "dtype": str(X_train.dtype),
        "epochs_fastbp": ours.n_iter_,
        "epochs_sklearn": theirs.n_iter_,
        "fastbp_fit_s": fastbp_s,
        "sklearn_fit_s": sklearn_s,
        "fastbp_epoch_s": fastbp_s / ours.n_iter_,
        "sklearn_epoch_s": sklearn_s / theirs.n_iter_,
        "ratio": (sklearn_s / theirs.n_iter_) / (fastbp_s / ours.n_iter_),
        "fastbp_accuracy": float(ours.score(X_test, y_test)),
        "sklearn_accuracy": float(theirs.score(X_test, y_test)),
        "times": times,
    }


def sklearn_fit(dtype, epochs=20, batch=32, hidden=(128,), rounds=1):
    """fastbp.sklearn.MLPClassifier against scikit-learn's on digits, whole fits with the same hyper-parameters
    (Adam, lr 1e-3, no L2, ``epochs`` epochs, random_state 0: the two fit the same model); see ``compare_fit``."""
    from . import data

    X, y = data.load_digits()
    X_train, X_test, y_train, y_test = data.prepare(X, y, seed=0)
    params = dict(
        hidden_layer_sizes=hidden,
        solver="adam",
        learning_rate_init=1e-3,
        alpha=0.0,
        batch_size=batch,
        max_iter=epochs,
        tol=0.0,
        n_iter_no_change=epochs + 1,
        random_state=0,
    )
    result = compare_fit(X_train.astype(dtype), y_train, X_test.astype(dtype), y_test, params, rounds)
    return {"epochs": epochs, **result}


def machine():
    """A one-line description of this machine and the BLAS in use."""
    from .kernels.gemm import BLAS_LIBRARY
    from .threads import blas_info, get_num_threads

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = ", ".join(
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} ({_owner(i, BLAS_LIBRARY)})"
        for i in blas_info()
    )
    return f"{cpu}, {get_num_threads()} threads, {blas}"


def _owner(info, gemm_library):
    """Whose copy a loaded BLAS library is: a wheel's, from its folder (``numpy.libs``: NumPy's wheel), or else the
    folder it was loaded from (a system's or conda's BLAS, shared); and whether fastbp's GEMMs call it: its path is
    ``gemm_library`` (``fastbp.kernels.gemm.BLAS_LIBRARY``), or SciPy's BLAS when that is None."""
    path = info.get("filepath") or ""
    directory = os.path.dirname(path)
    folder = os.path.basename(directory)
    if not folder:
        return "unknown copy"
    ours = _is_gemm_library(path, gemm_library)
    if not folder.endswith(".libs"):
        return f"from {directory}" + (", fastbp's GEMMs" if ours else "")
    return f"{folder.removesuffix('.libs')}'s" + (", fastbp's GEMMs" if ours else "")


def bf16_gemm_peak(size=2048, repeats=3):
    """GFLOP/s of the bfloat16 GEMM fastbp calls (oneDNN's, bfloat16 operands, float32 accumulation and output) on
    size x size matrices: best of repeats."""
    import ctypes

    from . import _onednn

    gemm = ctypes.CFUNCTYPE(
        ctypes.c_int,
        ctypes.c_char,
        ctypes.c_char,
        *[ctypes.c_int64] * 3,
        ctypes.c_float,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_float,
        ctypes.c_void_p,
        ctypes.c_int64,
    )(_onednn.bf16_gemm())
    from .reference import round_bf16

    rng = np.random.default_rng(0)
    # normal values, as the steps' operands are (the GEMM's speed depends a little on the data: power and clock)
    A, B = (round_bf16(rng.standard_normal((size, size))).view(np.uint32) >> 16 for _ in range(2))
    A, B = A.astype(np.uint16), B.astype(np.uint16)
    C = np.zeros((size, size), dtype=np.float32)

    def call():
        gemm(b"N", b"N", size, size, size, 1.0, A.ctypes.data, size, B.ctypes.data, size, 0.0, C.ctypes.data, size)

    call()
    best = min(_timed(call) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def run(cells, rounds=5, min_time=0.2, with_sklearn=True, report=print):
    """Measure every (shape, dtype) cell; returns the full results dict (also what --json writes)."""
    contenders = ["fastbp", "numpy", "reference", *available_peers(report=report)]
    if "torch" in contenders:
        contenders.append("torch_bf16")
    if any(shape in LAYER_OPTIONS for shape, _ in cells):
        contenders.append("plain")
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "rounds": rounds,
        "min_time": min_time,
        "peak_gflops": {},
        "cells": [],
        "sklearn": [],
    }
    peaks = results["peak_gflops"]
    for shape, dtype in cells:
        if dtype == "bfloat16":
            peaks[dtype] = max(peaks.get(dtype, 0.0), bf16_gemm_peak())
        else:
            best_peak(peaks, dtype)
        cell = measure_cell(shape, dtype, contenders, rounds, min_time)
        cell["peak_percent"] = 100 * cell["peers"]["fastbp"]["gflops"] / peaks[dtype]
        results["cells"].append(cell)
        report(format_cell(cell))
    for cell in results["cells"]:  # against the best peak of the whole run
        cell["peak_percent"] = 100 * cell["peers"]["fastbp"]["gflops"] / peaks[cell["dtype"]]
    if with_sklearn:
        for dtype in ("float32", "float64"):
            results["sklearn"].append(sklearn_fit(dtype, rounds=min(rounds, 3)))
    return results


def format_cell(cell):
    f = cell["peers"]["fastbp"]
    parts = [
        f"{cell['shape']:>2} {cell['dtype']}: fastbp {1e6 * f['median_s']:.1f} us/step "
        f"({f['gflops']:.1f} GFLOP/s, {cell.get('peak_percent', float('nan')):.0f}% of the GEMM peak so far)"
    ]
    parts += [f"{PEER_NAMES[name]} {p['ratio']:.2f}x" for name, p in cell["peers"].items() if name != "fastbp"]
    parts[1:] = ["peer / fastbp: " + ", ".join(parts[1:])] if parts[1:] else []
    parts.append(f"gradient vs reference {cell['gradient_rel_diff']:.1e}")
    return "; ".join(parts)


def table(results):
    """Markdown table of the results (what README.md and docs/benchmarks.md carry)."""
    peers = [p for p in PEER_ORDER[1:] if any(p in c["peers"] for c in results["cells"])]
    head = ["shape", "dtype", "fastbp us/step (min-max)", "GFLOP/s", "% GEMM peak"]
    head += [f"{PEER_NAMES[p]} us/step" for p in peers] + [f"{PEER_NAMES[p]} / fastbp" for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in results["cells"]:
        f = c["peers"]["fastbp"]
        row = [
            c["shape"],
            c["dtype"],
            f"{1e6 * f['median_s']:.1f} ({1e6 * f['min_s']:.1f}-{1e6 * f['max_s']:.1f})",
            f"{f['gflops']:.1f}",
            f"{c['peak_percent']:.0f}%",
        ]
        row += [f"{1e6 * c['peers'][p]['median_s']:.1f}" if p in c["peers"] else "-" for p in peers]
        row += [f"{c['peers'][p]['ratio']:.2f}x" if p in c["peers"] else "-" for p in peers]
        lines.append("| " + " | ".join(row) + " |")
    peaks = ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in results["peak_gflops"].items())
    lines.append("")
    lines.append(
        f"GEMM peak (2048x2048, fastbp's BLAS for float32/float64 and oneDNN's bfloat16 GEMM for bfloat16, the best of "
        f"the measurements before each cell): {peaks}. dtype bfloat16: fastbp's float32 network in bfloat16 matmul "
        "precision, against the float32 peers and PyTorch under bfloat16 autocast (torch bf16). Ratios are peer time "
        f"/ fastbp time (higher is better for fastbp), medians over {results['rounds']} interleaved rounds."
    )
    if any(c.get("options") for c in results["cells"]):
        lines[-1] += (
            " Shape D: 784-256x4-10, batch 128, batch norm, residual connections, dropout 0.1; its peers build the "
            "same model, and plain is fastbp's network of the same widths without the options."
        )
    if results["sklearn"]:
        lines.append("")
        lines.append(
            "| MLPClassifier fit, fastbp.sklearn vs scikit-learn (digits, 64-128-10, Adam, batch 32) | "
            "fastbp time per epoch | sklearn time per epoch | sklearn / fastbp | fastbp accuracy | sklearn accuracy |"
        )
        lines.append("|---|---|---|---|---|---|")
        for s in results["sklearn"]:
            lines.append(
                f"| {s['dtype']}, {s['epochs']} epochs | {s['fastbp_epoch_s'] * 1e3:.2f} ms | "
                f"{s['sklearn_epoch_s'] * 1e3:.2f} ms | {s['ratio']:.1f}x | {s['fastbp_accuracy']:.4f} | "
                f"{s['sklearn_accuracy']:.4f} |"
            )
    return "\n".join(lines)


#: The float32 step-time targets of docs/benchmarks.md: shape -> minimum ratio (peer time / fastbp time) against each
#: named peer, "fastest" meaning the fastest peer measured (numpy included).
STEP_TARGETS = {
    "S": {"torch": 8.0, "numpy": 3.0, "jax": 3.0},
    "M": {"fastest": 1.05},
    "L": {"fastest": 1.0},
    "XL": {"fastest": 1.0},
}
#: XL must also reach this percent of the measured sgemm peak.
XL_PEAK_PERCENT = 90.0
#: Whole fits: scikit-learn's time / fastbp's by dtype, with test accuracy within ACCURACY_POINTS points. The fits
#: of ``sklearn_fit`` are at a small shape (digits, 64-128-10, batch 32), whose target is 8x in both dtypes (the
#: GEMM-bound shapes' targets are checked by scripts/sklearn_speed.py).
FIT_TARGETS = {"float32": 8.0, "float64": 8.0}
ACCURACY_POINTS = 1.0


#: The bfloat16 matmul precision targets of docs/benchmarks.md: shape -> minimum ratio against each named peer
#: ("fastest": the fastest float32 peer; "torch_bf16": PyTorch under bfloat16 autocast).
BF16_TARGETS = {
    "M": {"fastest": 1.3, "torch_bf16": 1.2},
    "L": {"fastest": 1.6, "torch_bf16": 1.2},
    "XL": {"fastest": 1.6, "torch_bf16": 1.2},
}
#: XL in bfloat16 must also reach this percent of the measured bfloat16 GEMM peak.
XL_BF16_PEAK_PERCENT = 70.0

#: The peers of docs/benchmarks.md: "the fastest peer" is the fastest of these, so all must have been measured.
STEP_PEERS = ("numpy", "torch", "jax")
#: The order of the contenders in the table and the chart.
PEER_ORDER = ("fastbp", *STEP_PEERS, "reference", "torch_bf16", "plain")
PEER_NAMES = {
    "numpy": "numpy",
    "reference": "numpy reference",
    "torch": "torch",
    "jax": "jax",
    "torch_bf16": "torch bf16",
    "plain": "plain",
}
#: The deep shape's targets: the ratios against torch eager and JAX doing the same model, and the cost of the layer
#: options, as the ratio of the plain network's time to fastbp's (0.8333: the options cost at most 20% more).
DEEP_TARGETS = {"D": {"torch": 2.0, "jax": 1.25, "plain": 1 / 1.2}}
NOT_MEASURED = "not measured"


def _step_targets(cells, dtype, wanted_by_shape, percent_of_peak):
    """Rows of ``targets`` for the step targets of one dtype ("float32" or "bfloat16")."""
    rows = []
    where = "" if dtype == "float32" else " in bfloat16"
    fastest = "the fastest peer" if dtype == "float32" else "the fastest float32 peer"
    for shape, wanted in wanted_by_shape.items():
        cell = cells.get((shape, dtype))
        peers = {} if cell is None else {n: p["ratio"] for n, p in cell["peers"].items() if n != "fastbp"}
        missing = [name for name in STEP_PEERS if name not in peers]
        for peer, minimum in wanted.items():
            name_of = fastest if peer == "fastest" else PEER_NAMES[peer]
            target = f"{shape}{where}: >= {minimum:g}x {name_of}"
            if cell is None:
                rows.append((target, f"{NOT_MEASURED} (no {shape} {dtype} cell)", None))
            elif peer == "fastest":
                float32 = {n: r for n, r in peers.items() if n in STEP_PEERS}
                if not float32:
                    rows.append((target, f"{NOT_MEASURED} (no peer)", None))
                    continue
                name = min(float32, key=float32.get)  # the smallest ratio is the fastest peer
                measured = f"{float32[name]:.2f}x ({name})"
                if missing:
                    rows.append((target, f"{measured}; {', '.join(missing)} {NOT_MEASURED}", None))
                else:
                    rows.append((target, measured, float32[name] >= minimum))
            elif peer in peers:
                rows.append((target, f"{peers[peer]:.2f}x", peers[peer] >= minimum))
            else:
                why = "not installed" if peer in STEP_PEERS else "not measured"
                rows.append((target, f"{NOT_MEASURED} ({PEER_NAMES[peer]} {why})", None))
        if shape == "XL":
            gemm = "sgemm" if dtype == "float32" else "bfloat16 GEMM"
            target = f"XL{where}: >= {percent_of_peak:g}% of the {gemm} peak"
            if cell is None:
                rows.append((target, f"{NOT_MEASURED} (no XL {dtype} cell)", None))
            else:
                percent = cell["peak_percent"]
                rows.append((target, f"{percent:.1f}%", percent >= percent_of_peak))
    return rows


def targets(results):
    """Each target of docs/benchmarks.md that a run of the matrix measures, plus "never slower than the lean NumPy
    step", checked against ``results`` (as returned by ``run``): a list of ``(target, measured, met)``,
    where met is True, False, or None when what the target needs was not measured (a cell not run, a peer not
    installed, no scikit-learn fit); ``measured`` then says what is missing. No target is left out."""
    rows = []
    cells = {(c["shape"], c["dtype"]): c for c in results["cells"]}
    for dtype, table, percent_of_peak in (
        ("float32", STEP_TARGETS, XL_PEAK_PERCENT),
        ("bfloat16", BF16_TARGETS, XL_BF16_PEAK_PERCENT),
    ):
        rows += _step_targets(cells, dtype, table, percent_of_peak)
    for shape, wanted in DEEP_TARGETS.items():
        cell = cells.get((shape, "float32"))
        for peer, minimum in wanted.items():
            if peer == "plain":
                target = f"{shape}: the layer options cost <= {100 * (1 / minimum - 1):.0f}% over the plain network"
            else:
                target = f"{shape}: >= {minimum:g}x {PEER_NAMES[peer]} (the same model)"
            if cell is None:
                rows.append((target, f"{NOT_MEASURED} (no {shape} float32 cell)", None))
            elif peer not in cell["peers"]:
                rows.append((target, f"{NOT_MEASURED} ({PEER_NAMES[peer]} not installed)", None))
            elif peer == "plain":
                cost = 1 / cell["peers"][peer]["ratio"] - 1
                rows.append((target, f"{100 * cost:+.0f}%", cell["peers"][peer]["ratio"] >= minimum))
            else:
                ratio = cell["peers"][peer]["ratio"]
                rows.append((target, f"{ratio:.2f}x", ratio >= minimum))
    numpy_cells = [c for c in results["cells"] if not c.get("options")]  # numpy has no step with layer options
    with_numpy = [c for c in numpy_cells if "numpy" in c["peers"]]
    target = "never slower than the lean NumPy step (every cell)"
    if with_numpy:
        slowest = min(with_numpy, key=lambda c: c["peers"]["numpy"]["ratio"])
        ratio = slowest["peers"]["numpy"]["ratio"]
        where = f"{ratio:.2f}x at its lowest ({slowest['shape']} {slowest['dtype']})"
        if len(with_numpy) < len(numpy_cells):
            rows.append((target, f"{where}; some cells without numpy", None))
        else:
            rows.append((target, where, ratio >= 1.0))
    else:
        rows.append((target, NOT_MEASURED, None))
    fits = {fit["dtype"]: fit for fit in results["sklearn"]}
    for dtype, minimum in FIT_TARGETS.items():
        target = f"scikit-learn fit {dtype}: >= {minimum:g}x, accuracy within {ACCURACY_POINTS:g} point"
        fit = fits.get(dtype)
        if fit is None:
            rows.append((target, NOT_MEASURED, None))
            continue
        points = 100 * abs(fit["fastbp_accuracy"] - fit["sklearn_accuracy"])
        met = fit["ratio"] >= minimum and points <= ACCURACY_POINTS
        rows.append((target, f"{fit['ratio']:.1f}x, {points:.2f} points apart", met))
    return rows


def targets_table(results):
    """Markdown table of ``targets``."""
    verdict = {True: "yes", False: "NO", None: NOT_MEASURED}
    lines = ["| target | measured in this run | met |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {verdict[met]} |" for target, measured, met in targets(results)]
    return "\n".join(lines)


def plot(results, path):
    """Bar chart of each contender's time per step relative to fastbp (log scale), one group per cell."""
    from .plot import pyplot

    plt = pyplot()
    cells = results["cells"]
    names = sorted({n for c in cells for n in c["peers"]}, key=PEER_ORDER.index)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cells)), 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + k * width for i, c in enumerate(cells) if name in c["peers"]]
        ys = [c["peers"][name]["ratio"] for c in cells if name in c["peers"]]
        ax.bar(xs, ys, width, label=PEER_NAMES.get(name, name))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cells))])
    ax.set_xticklabels([f"{c['shape']} {c['dtype']}" for c in cells])
    ax.set_yscale("log")
    ax.set_ylabel("time per step / fastbp's")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_title(f"training step, {results['date']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the axes: inside, it covered bars
    fig.tight_layout()
    try:
        return _files.save_figure(fig, path, dpi=100)  # atomically, as every file fastbp writes
    finally:
        plt.close(fig)


def save_json(results, path):
    return _files.save_json(results, path)
