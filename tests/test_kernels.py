"""Properties of the compiled kernels as a whole: one specialization per dtype and tier, no allocation per call,
fastmath flags from one place."""

import inspect
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import EXP_MAX_ULPS, make_batch

import fastbp
from fastbp import _config
from fastbp.kernels import backward, bridge, checked, drivers, epoch, forward, loss, optimizers, step

KERNEL_MODULES = (forward, loss, backward, drivers, bridge, epoch, optimizers, step, checked)


def _dispatchers():
    for module in KERNEL_MODULES:
        for name, obj in vars(module).items():
            if hasattr(obj, "targetoptions") and obj.py_func.__module__ == module.__name__:
                yield f"{module.__name__}.{name}", obj


COMPILATIONS_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import fastbp
    from fastbp.kernels import backward, bridge, checked, drivers, epoch, forward, loss, optimizers, step

    from fastbp import _onednn
    from fastbp.kernels import layers

    rng = np.random.default_rng(0)
    bf16 = _onednn.info()["reason"] is None
    # plain networks first: what they compile (kernels/boundary.py, the plain tier)
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
    for dtype in ("float32", "float64"):
        net = fastbp.MLP([4, 6, 6, 3], dtype=dtype, seed=0)
        fastbp.Trainer(net, fastbp.Adam(), batch_size=8, progress=False).fit(X, y, epochs=1, validation_data=(X, y))
        net.value_and_grad(X, y)
        net.predict(X)
    kernels = {"_layer_forward": layers._layer_forward, "_layer_backward": layers._layer_backward,
               "_backward": backward._backward}
    plain_first = {name: len(kernel.signatures) for name, kernel in kernels.items()}
    for dtype in ("float32", "float64"):
        for sizes in ([3, 2], [3, 5, 2], [7, 1, 9, 4], [2, 13, 11, 7, 5, 3], [10, 64, 3], [6, 8, 8, 8, 3]):
            for output in ("softmax", "sigmoid", "tanh"):
                # float32 networks alternate the matmul precisions (bfloat16 runs the full tier, kernels/boundary.py)
                precision = "bfloat16" if bf16 and dtype == "float32" and len(sizes) % 2 else "float32"
                # and a mix of layer options (normalization, residual connections, dropout) on the deeper ones
                hidden = len(sizes) - 2
                norm = [[None, "batch", "layer"][k % 3] for k in range(hidden)] if hidden > 1 else None
                residual = [sizes[k] == sizes[k + 1] for k in range(hidden)]
                net = fastbp.MLP(sizes, ["tanh", "relu", "sigmoid", "leaky_relu"][: hidden], output,
                                 l2=0.1, dtype=dtype, trainable=[True] * hidden + [False],
                                 matmul_precision=precision, norm=norm, residual=residual,
                                 dropout=0.2 if hidden > 2 else 0.0)
                X = rng.standard_normal((20, sizes[0]))
                Y = rng.integers(0, sizes[-1], 20) if output == "softmax" else rng.random((20, sizes[-1]))
                # the arrays as given (float64) and in the network's dtype: the Python path and the checked entry
                # points (kernels/checked.py) both call the entry points of the work, in one specialization
                Xd, Yd = X.astype(dtype), (Y if output == "softmax" else Y.astype(dtype))
                for data in ((X, Y), (Xd, Yd)):
                    net.value_and_grad(*data)
                    net.predict(data[0])
                    objective = fastbp.FlatObjective(net, *data)
                    objective(net.params.astype(float))
                    objective(net.params.astype(float))
                for opt in (fastbp.SGD(0.1, momentum=0.5), fastbp.Adam()):
                    trainer = fastbp.Trainer(net, opt, batch_size=8, progress=False)
                    trainer.fit(X, Y, epochs=1, validation_data=(X, Y))
                    trainer.train_step(X, Y)
                    trainer.train_step(Xd, Yd)
                    trainer.evaluate(Xd, Yd)
                    # the step of a loop driven from Python, called as fastbp.distributed calls it
                    hyper, schedule = opt.hyper(), trainer._schedule(None).params()
                    state, sq = opt.state, np.zeros(net.n_layers)
                    step._step_entry(
                        net._marker, net._entry_network, trainer._spare.ctypes.data, 1.0, float("inf"),
                        trainer._grads.ctypes.data, opt.kind, hyper.ctypes.data, hyper.size, 0,
                        schedule.ctypes.data, schedule.size, opt.lr, opt.clip_norm, opt.t, state.ctypes.data,
                        state.shape[0], sq.ctypes.data,
                    )
                try:
                    import torch
                    import fastbp.torch
                except ImportError:
                    continue
                if net._has_options:  # the bridge refuses layer options
                    continue
                model = fastbp.torch.MLP.from_fastbp(net)
                model.requires_grad_(True)  # the frozen output layer too: a network of one layer has no other
                for x_grad in (False, True):
                    model(torch.from_numpy(X.astype(dtype)).requires_grad_(x_grad)).sum().backward()

    def callers(callee, entries):
        # for each entry point and compiled signature: whether its machine code is built from the callee's compiled
        # code (linked into it, then inlined: _config.kernel), found among the libraries it links
        libraries = {id(callee.overloads[sig].library) for sig in callee.signatures}
        def links(library):
            return any(id(lib) in libraries or links(lib) for lib in library._linking_libraries)

        return {entry.__name__: [links(entry.overloads[sig].library) for sig in entry.signatures] for entry in entries}

    signatures = {}
    for module in (backward, bridge, checked, drivers, epoch, forward, loss, optimizers, step):
        for name, obj in vars(module).items():
            if hasattr(obj, "targetoptions") and obj.py_func.__module__ == module.__name__:
                signatures[module.__name__ + "." + name] = [[str(a) for a in sig] for sig in obj.signatures]
    calls = {
        "_backward": callers(backward._backward, [drivers._value_and_grad_entry, epoch._train_epoch_entry,
                                                  bridge._bridge_backward_entry]),
        "_forward_hidden": callers(forward._forward_hidden, [drivers._value_and_grad_entry, drivers._predict_entry,
                                                            epoch._train_epoch_entry, epoch._evaluate_entry,
                                                            bridge._bridge_forward_entry]),
        "_step": callers(step._step, [epoch._train_epoch_entry, step._step_entry]),
    }
    print(json.dumps({"signatures": signatures, "calls": calls, "plain_first": plain_first, "bits": reproduce()}))
    """
)

#: Training, gradients and predictions of a few networks (both dtypes, the layer options, two optimizers), as hashes
#: of their bytes: the process that compiles the kernels and one that loads them from the cache must agree.
REPRODUCE = textwrap.dedent(
    """
    def reproduce():
        import hashlib
        import numpy as np
        import fastbp

        X, y = fastbp.data.load_digits()
        X, y = X[:256] / 16, y[:256]
        bits = []
        for dtype in ("float32", "float64"):
            for options in ({}, {"norm": "batch", "residual": True, "dropout": 0.1}, {"norm": "layer", "dropout": 0.2}):
                for optimizer in (fastbp.SGD(0.05, momentum=0.9), fastbp.Adam()):
                    net = fastbp.MLP([64, 64, 64, 10], dtype=dtype, seed=3, **options)
                    trainer = fastbp.Trainer(net, optimizer, batch_size=32, seed=7, progress=False)
                    history = trainer.fit(X, y, epochs=2, validation_split=0.25)
                    _, grads = net.value_and_grad(X[:64], y[:64])
                    parts = (net.params, net.buffers, grads, net.predict(X[:64]), history["loss"] + history["val_loss"])
                    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in parts))
                    bits.append(f"{dtype} {options} {type(optimizer).__name__}: {digest.hexdigest()[:16]}")
        return bits
    """
)
COMPILATIONS_SCRIPT = REPRODUCE + COMPILATIONS_SCRIPT


@pytest.fixture(scope="module")
def compilations(tmp_path_factory):
    """In a fresh process with an empty cache (so every compilation is seen, and its machine code can be read):
    many architectures, both dtypes, every entry point (the PyTorch bridge's where torch is installed). Returns the
    signatures of every kernel and, for the shared passes, whether each entry point's code calls them."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path_factory.mktemp("numba-cache"))}
    proc = subprocess.run(
        [sys.executable, "-c", COMPILATIONS_SCRIPT], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout), "env": env}


def _specialization(sig):
    """(dtype, tier) of a compiled signature: a float32 specialization has float32 arrays somewhere (float64 scalars
    such as lr and l2 occur in both); the full tier's take the marker as a 1-tuple, or gemm as (blas, bf16)
    (kernels/boundary.py)."""
    joined = " ".join(sig)
    dtype = "float32" if "float32" in joined else "float64"
    full = any(t in joined for t in ("UniTuple(float32 x 1)", "UniTuple(float64 x 1)", "UniTuple(int64 x 2)"))
    return dtype, "full" if full else "plain"


def test_changing_depth_width_and_data_compiles_nothing_new(compilations):
    # Each kernel must end with at most one specialization per dtype and tier (plain networks, and networks with
    # layer options or bfloat16 precision), whatever the depth, widths, options and data.
    signatures = compilations["signatures"]
    for entry in ("drivers._value_and_grad_entry", "epoch._train_epoch_entry", "backward._backward"):
        kinds = sorted(_specialization(sig) for sig in signatures[f"fastbp.kernels.{entry}"])
        assert kinds == [(d, t) for d in ("float32", "float64") for t in ("full", "plain")], (entry, kinds)
    for name, sigs in signatures.items():
        kinds = [_specialization(sig) for sig in sigs]
        assert len(kinds) == len(set(kinds)), f"{name} has several specializations of one dtype and tier: {sigs}"


def test_a_plain_network_compiles_no_code_of_the_layer_options(compilations):
    # The plain tier (kernels/boundary.py): a network without layer options in its dtype's precision selects the
    # specializations that never type the options' kernels, and any option selects the full tier.
    plain = fastbp.MLP([4, 6, 3], seed=0)
    assert np.isscalar(plain._marker) and plain._marker.dtype == plain.dtype
    for options in ({"norm": "batch"}, {"residual": [False, True]}, {"dropout": 0.1}):
        net = fastbp.MLP([4, 6, 6, 3], seed=0, **options)
        assert isinstance(net._marker, tuple) and net._marker[0].dtype == net.dtype, options
    # and in the fresh process, plain networks of both dtypes trained, evaluated and differentiated before any other
    # compiled nothing of the options, while their passes were compiled
    assert compilations["plain_first"] == {"_layer_forward": 0, "_layer_backward": 0, "_backward": 2}


def test_one_backward_pass_one_forward_pass_and_one_step_serve_every_entry_point(compilations):
    # The trainer's epoch loop, value_and_grad (and FlatObjective, through it), and the PyTorch bridge run the SAME
    # compiled backward pass: one specialization per dtype and tier, whose compiled code each entry point links (and
    # inlines). The same for the forward pass over the hidden layers, and for the optimizer step of the epoch loop and
    # of the loop driven from Python (fastbp.distributed; tests/test_distributed.py counts its calls).
    signatures, calls = compilations["signatures"], compilations["calls"]
    for callee in ("backward._backward", "forward._forward_hidden"):
        assert len(signatures[f"fastbp.kernels.{callee}"]) == 4, callee  # float32 and float64, each tier
    assert len(signatures["fastbp.kernels.step._step"]) == 2  # the step has no tiers: float32 and float64
    for callee, entries in calls.items():
        for entry, per_signature in entries.items():
            if entry.startswith("_bridge") and not per_signature:
                pytest.importorskip("torch")  # not compiled: torch is not installed
            assert per_signature and all(per_signature), (callee, entry)


def test_a_process_that_loads_the_kernels_from_the_cache_computes_the_same_bits(compilations):
    # The process of the fixture compiled every kernel; this one loads them all from that cache (no compilation: the
    # epoch loop's cache misses are counted). Training, gradients and predictions must agree bit for bit.
    script = REPRODUCE + textwrap.dedent(
        """
        import json
        from fastbp.kernels import epoch
        bits = reproduce()
        print(json.dumps({"bits": bits, "compiled": sum(epoch._train_epoch_entry.stats.cache_misses.values())}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=compilations["env"], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    warm = json.loads(proc.stdout)
    assert warm["compiled"] == 0
    assert warm["bits"] == compilations["bits"]


def test_the_layer_kernels_of_the_backward_pass_are_called_from_it_only():
    # BP2 and BP4 (and the output layer's BP1 epilogue outside the loss) appear in one loop: a second copy of the
    # backward pass would have to call them too.
    package = pathlib.Path(fastbp.__file__).resolve().parent
    kernels = (
        ("_weight_grad(", {"backward.py"}),
        ("_matmul_pair(", {"backward.py", "gemm.py"}),  # BP4 with BP2's GEMM, defined in gemm.py
        # BP2's epilogue; the bridge's output error from torch's gradient; the profile times it alone
        ("_activation_derivative(", {"backward.py", "bridge.py", "breakdown.py"}),
    )
    for kernel, allowed in kernels:
        users = {path.name for path in package.rglob("*.py") if kernel in path.read_text()}
        assert users == allowed, (kernel, users)


def test_every_kernel_takes_fastmath_flags_from_the_config():
    for name, d in _dispatchers():
        assert d.targetoptions.get("fastmath") == set(_config.FASTMATH), name
    assert not {"nnan", "ninf", "fast"} & _config.FASTMATH
    package = pathlib.Path(fastbp.__file__).parent
    for path in package.rglob("*.py"):
        if path.name != "_config.py":
            assert "fastmath=" not in path.read_text(), f"{path} hard-codes fastmath flags"


def test_every_kernel_documents_its_shapes_and_outputs():
    for name, d in _dispatchers():
        doc = inspect.getdoc(d.py_func) or ""
        if d.targetoptions.get("inline", "never") == "never":  # layer kernels and drivers, not inlined leaves
            assert "NumPy" in doc and "thread-safe" in doc.lower(), name


ALLOCATIONS_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import fastbp
    from numba.core.runtime import rtsys

    @__import__("numba").njit
    def allocates(n):  # positive control: the counter does see an allocation
        return np.empty(n).size

    rng = np.random.default_rng(0)
    results = {}
    for dtype in ("float32", "float64"):
        for output, loss in (("softmax", None), ("sigmoid", None), ("tanh", "squared_error")):
            net = fastbp.MLP([20, 16, 8, 4], "relu", output, loss, l2=0.01, dtype=dtype)
            X = rng.standard_normal((32, 20))
            Y = rng.integers(0, 4, 32) if output == "softmax" else rng.random((32, 4))
            X, Y2d, labels = net.check_batch(X, Y)
            g = np.empty(net.n_params, dtype=dtype)
            net.value_and_grad(X, Y, out=g)  # warm-up: compile and size the workspace
            before = rtsys.get_allocation_stats()
            for k in range(20):
                net.value_and_grad(X, Y, out=g, accumulate=k % 2)
            after = rtsys.get_allocation_stats()
            results[dtype + output] = after.alloc - before.alloc
            # the checked entry points (kernels/checked.py): the arrays in the network's dtype, every public call
            Xd, Yd = X.astype(dtype), (Y if output == "softmax" else Y.astype(dtype))
            trainer = fastbp.Trainer(net, fastbp.Adam(), batch_size=32, progress=False)
            objective, theta = fastbp.FlatObjective(net, Xd, Yd), net.params.astype(float)

            def calls():
                net.value_and_grad(Xd, Yd, out=g)
                net.value_and_grad(Xd, Yd, out=g, accumulate=True, scale=0.5, sample_weight=Xd[:, 0] ** 2)
                net.predict(Xd)
                trainer.train_step(Xd, Yd)
                trainer.evaluate(Xd, Yd)
                objective(theta)

            calls()
            calls()  # warm-up: the first train_step and objective call take the Python path
            before = rtsys.get_allocation_stats()
            for k in range(20):
                calls()
            results[dtype + output + " checked"] = rtsys.get_allocation_stats().alloc - before.alloc
    allocates(1)
    before = rtsys.get_allocation_stats()
    allocates(10)
    control = rtsys.get_allocation_stats().alloc - before.alloc
    print(sum(results.values()), control)
    """
)


def test_value_and_grad_makes_no_runtime_allocation_after_warm_up():
    env = {**os.environ, "NUMBA_NRT_STATS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", ALLOCATIONS_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    allocations, control = map(int, proc.stdout.split())
    assert control >= 1  # the counter works
    assert allocations == 0


@pytest.mark.parametrize("n", [1, 2])
def test_set_num_threads(n):
    previous = fastbp.get_num_threads()
    try:
        assert fastbp.set_num_threads(n) == n
        assert fastbp.get_num_threads() == n
        assert all(info["num_threads"] == n for info in fastbp.blas_info())
    finally:
        fastbp.set_num_threads(previous)


def test_results_do_not_depend_on_the_thread_count(rng):
    net = fastbp.MLP([30, 50, 10], dtype="float64")
    X, y = make_batch(net, 40, rng)
    previous = fastbp.get_num_threads()
    try:
        fastbp.set_num_threads(1)
        one = net.value_and_grad(X, y)[1]
        fastbp.set_num_threads(2)
        two = net.value_and_grad(X, y)[1]
    finally:
        fastbp.set_num_threads(previous)
    np.testing.assert_allclose(one, two, rtol=1e-13)


def test_kernel_caches_are_invalidated_by_a_change_to_any_kernel_source():
    # A cached driver holds the code of the kernels it calls from other files, so each kernel's cache entry is
    # stamped with a hash of ALL kernel sources (see _config.py), not only of its own file. The profiler's timing
    # loops call kernels too: their stamp covers the kernels and the profiler, while the kernels' stamp does not
    # cover the profiler (editing a benchmark must not recompile the kernels).
    import hashlib

    from fastbp import breakdown

    package = pathlib.Path(fastbp.__file__).resolve().parent
    sources = sorted([package / "_config.py", *(package / "kernels").glob("*.py")])
    assert _config._SOURCES == sources
    kernels = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()
    assert _config.KERNEL_SOURCE_STAMP == kernels
    profiler = hashlib.sha256(kernels.encode() + (package / "breakdown.py").read_bytes()).hexdigest()
    assert breakdown._repeat_output._cache._impl.locator.get_source_stamp() == profiler != kernels
    for name, d in _dispatchers():
        if d.targetoptions.get("inline", "never") == "never":
            locator = d._cache._impl.locator
            assert type(locator).__name__.startswith("Fastbp"), name
            assert locator.get_source_stamp() == kernels


def test_finiteness_check_survives_the_fastmath_flags():
    # A NaN made inside fastmath code (log-sum-exp of an infinite logit) must be seen as non-finite; Numba's own
    # math.isfinite is folded to True under nsz + reassoc, which let a diverged loss through.
    import math

    import numba

    @numba.njit(fastmath=set(_config.FASTMATH), error_model="numpy")
    def check(a):
        z_max = -math.inf
        for v in a:
            z_max = max(z_max, v)
        total = 0.0
        for v in a:
            total += math.exp(v - z_max)
        lse = z_max + math.log(total)
        return _config.finite(lse), _config.finite(z_max), _config.finite(total)

    assert check(np.array([np.inf, 1.0])) == (False, False, False)
    assert check(np.array([2.0, 1.0])) == (True, True, True)


@pytest.mark.parametrize(("dtype", "bits"), [(np.float32, np.int32), (np.float64, np.int64)])
def test_order_keys_order_like_the_floats_and_give_the_row_maximum(dtype, bits):
    # The softmax's row maximum is an integer maximum over order keys (kernels/activations.py _order_key): the keys
    # must order as the floats do, over every kind of float, and map back to the same bits.
    import numba

    from fastbp.kernels.activations import _bias_shift_row, _key_float, _order_key

    @numba.njit(fastmath=set(_config.FASTMATH), error_model="numpy")
    def keys(a):
        k = np.empty(a.shape[0], a.view(bits).dtype)
        back = np.empty_like(a)
        for i in range(a.shape[0]):
            k[i] = _order_key(a[i])
            back[i] = _key_float(k[i])
        return k, back

    info = np.finfo(dtype)
    tiny = info.smallest_subnormal
    floats = np.array(
        [-np.inf, info.min, -1.5, -info.tiny, -tiny, -0.0, 0.0, tiny, info.tiny, 1.0, 2.5, info.max, np.inf], dtype
    )
    k, back = keys(floats)
    assert (np.diff(k.astype(np.int64)) > 0).all()
    np.testing.assert_array_equal(back.view(bits), floats.view(bits))
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(5000) * 10.0 ** rng.integers(-30, 30, 5000)).astype(dtype)
    k, _ = keys(a)
    np.testing.assert_array_equal(np.argsort(k, kind="stable"), np.argsort(a, kind="stable"))

    @numba.njit(fastmath=set(_config.FASTMATH), error_model="numpy")
    def shift(Z, b):
        return _bias_shift_row(Z, b, 0)

    for row in (a[:1000], floats[1:-1], np.array([-1.0, -np.inf], dtype), np.array([np.nan, 1.0, 2.0], dtype)):
        Z, b = row.reshape(1, -1).copy(), np.zeros(row.size, dtype)
        z_max, _ = shift(Z, b)
        assert np.array_equal(z_max, row.max(), equal_nan=True), (z_max, row.max())  # a NaN logit: a NaN maximum


@pytest.mark.parametrize(("dtype", "lowest"), [(np.float32, -103.98), (np.float64, -745.14)])
def test_vectorised_exp_is_within_two_ulps_of_exp_and_keeps_its_edge_cases(dtype, lowest):
    # The softmax's exp is a polynomial written out (no vector libm here): compare it with exp in long double over a
    # dense grid and a logarithmic one near 0, in units in the last place of the dtype.
    import numba

    from fastbp.kernels.activations import _exp_block

    @numba.njit(fastmath=set(_config.FASTMATH), error_model="numpy")
    def exp_in_place(Z):
        _exp_block(Z)

    x = np.concatenate([np.linspace(lowest, 0.0, 400_000), -np.logspace(-30, np.log10(-lowest), 20_000)]).astype(dtype)
    got = x.copy().reshape(40, -1)  # C-contiguous: the one loop over the block
    exp_in_place(got)
    exact = np.exp(x.astype(np.longdouble))
    ulps = np.abs(got.ravel().astype(np.longdouble) - exact) / np.spacing(exact.astype(dtype)).astype(np.longdouble)
    assert ulps.max() <= EXP_MAX_ULPS, (ulps.max(), x[np.argmax(ulps)])
    # edge cases, also through the row-by-row loop of a non-contiguous block
    edges = np.array([[-np.inf, np.nan, 0.0, lowest - 1.0, -1e30, -0.0]], dtype)
    expected = np.array([0.0, np.nan, 1.0, 0.0, 0.0, 1.0], dtype)
    for block in (edges.copy(), np.asfortranarray(np.repeat(edges, 2, axis=0))):
        exp_in_place(block)
        np.testing.assert_array_equal(block, np.broadcast_to(expected, block.shape))
