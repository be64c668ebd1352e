"""PyTorch bridge: a ``torch.nn.Module`` dense MLP whose forward and backward run fastbp's compiled kernels.

Contract. ``fastbp.torch.MLP`` is an ordinary module: ``Y = model(X)`` maps ``(*, n_in)`` to ``(*, n_out)``, any
torch loss goes on top (e.g. ``CrossEntropyLoss`` on the logits of the default identity output), and
``loss.backward()`` fills ``p.grad`` of every parameter, so any torch optimizer, scheduler, gradient clipping or
``state_dict`` round trip works. Inside, one ``torch.autograd.Function`` runs the whole stack of layers:

- forward: per layer a GEMM into the output, then one fused pass for bias and activation (``_dense_forward``);
  hidden activations ``A[l]`` go to a reused workspace, the output to a new tensor;
- backward, with the upstream gradient ``G = dLoss/dY``: ``delta[L] = G * f'(A[L])`` (BP1 with the torch loss's
  gradient; ``delta[L] = G`` for the identity output), then per layer ``dW[l] = A[l-1].T @ delta[l]`` (BP4,
  ``_weight_grad``), ``db[l] = sum_i delta[l]`` (BP3) and ``delta[l-1] = (delta[l] @ W[l].T) * f'(A[l-1])`` with
  the bias gradient fused (BP2, ``_hidden_delta``); ``dX = delta[0] @ W[0].T`` when the input requires grad. The
  gradients are views into one new flat buffer laid out like the parameters.

Each pass is ONE compiled call (kernels/bridge.py) on the tensors' memory, given by address: no copies (CPU only;
the input is made contiguous and of the module's dtype first, by differentiable torch ops). Calling the layer
kernels one by one from Python cost about 3 us each in Numba's dispatcher, more than the kernels take at shape S.
The passes go layer by layer from Python, on ``Tensor.numpy()`` views, only when the parameters are not views into
one flat buffer (``torch.func.functional_call``) or some GEMMs go through torch.mm (below).

Unlike torch's ``Linear`` (weight ``(out, in)``), the weights keep fastbp's convention ``W[l]: (fan_in, fan_out)``,
``Z = A_prev @ W + b``, and every parameter is a view into ONE flat buffer laid out like ``fastbp.MLP.params``
(``flat_params``).

Memory: hidden activations live in workspaces taken from a per-module pool for the lifetime of the autograd graph
(returned when the graph is freed), so a training loop reuses two of them; the output and the gradients are new
tensors, which autograd hands to ``p.grad`` without a copy.

Threads: while torch uses several threads (``blas_threads="auto"``), fastbp's BLAS runs on the calling thread, and
the large GEMMs run through ``torch.mm`` on torch's own pool (into fastbp's buffers, followed by fastbp's fused
epilogues) when that was timed faster for the batch size (``_Engine.calibrate``); see "BLAS threads" below for the
measurements behind it.

Not supported: double backward (``create_graph=True``; a clear RuntimeError), devices other than the CPU, dtypes
other than float32 and float64, ``torch.func`` transforms (vmap, grad; ``torch.func.functional_call`` works).
"""

import itertools
import math
import os
import time

import numpy as np
import torch

from ._validation import check_dtype, check_int
from .kernels import activations as _act
from .kernels import layout as _lay
from .kernels.backward import _activation_derivative, _hidden_delta, _weight_grad
from .kernels.bridge import _bridge_backward_entry, _bridge_forward_entry
from .kernels.forward import _bias_activation, _dense_forward
from .network import MLP as _FastMLP

__all__ = ["MLP"]

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
_NUMPY_DTYPES = {t: d for d, t in _TORCH_DTYPES.items()}

#: torch modules equal to each activation, for :meth:`MLP.to_sequential`.
_TORCH_ACTIVATIONS = {
    _act.IDENTITY: torch.nn.Identity,
    _act.SIGMOID: torch.nn.Sigmoid,
    _act.TANH: torch.nn.Tanh,
    _act.RELU: torch.nn.ReLU,
    _act.LEAKY_RELU: lambda: torch.nn.LeakyReLU(_act.LEAKY_SLOPE),
    _act.SOFTMAX: lambda: torch.nn.Softmax(dim=-1),
}


def _numpy_dtype(dtype):
    """np.float32 or np.float64 from a torch dtype, a NumPy dtype or a name."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _NUMPY_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        return _NUMPY_DTYPES[dtype]
    return check_dtype(dtype)


# ---------------------------------------------------------------------------------------------------- BLAS threads
# In a torch program torch's OpenMP pool owns the cores, and a second pool fights it. Measured on 2 cores (torch 2.13,
# SciPy's OpenBLAS 0.3.30 with 2 threads): OpenBLAS's idle worker spins for ~100 ms after a threaded GEMM, during
# which a parallel torch op (an optimizer step on 1M values) takes 3-5 ms instead of 0.05 ms; and libgomp's
# spinning worker slows the next threaded GEMM from 0.7 to 3.5-4.5 ms for a few ms after a torch op. A training
# step of shape M took 26 ms instead of about 1 ms. So by default (``blas_threads="auto"``) the bridge runs fastbp's
# GEMMs on the calling thread only while torch uses more than one thread, restoring the previous setting after each
# forward and backward; with ``torch.set_num_threads(1)`` the cores are free and fastbp's BLAS keeps its threads.

_BLAS_CONTROLS = None

#: With ``blas_threads="auto"`` while torch uses several threads, a GEMM of at least this many multiply-adds
#: (n * fan_in * fan_out) may run through ``torch.mm`` (into fastbp's buffers, on torch's own thread pool, so all
#: cores work and no second pool fights torch's), followed by fastbp's fused epilogue; smaller GEMMs run on fastbp's
#: BLAS on the calling thread, where torch's per-call overhead would cost more than the other cores gain. Whether
#: the large ones do is measured once per batch size (``_Engine.calibrate``): on 2 cores (shape M, 784-256-256-10,
#: batch 128, float32) torch's GEMMs of a step took 956 us and OpenBLAS's on one thread 901 us with its AVX-512
#: kernels, but about twice that with the AVX2 kernels that this machine's default OPENBLAS_CORETYPE selects; with
#: more cores torch's threads gain more. 2^20 is OpenBLAS's own order of size for starting a second thread.
TORCH_GEMM_MIN = 1 << 20

#: Timed forward passes of each kind when :meth:`_Engine.calibrate` chooses between torch.mm and fastbp's BLAS.
CALIBRATION_ROUNDS = 3


def _blas_controls():
    """(get, set) thread-count functions of the BLAS library that fastbp's GEMM binding calls (SciPy's; every
    loaded BLAS if SciPy's cannot be told apart). The OpenBLAS entry points are called directly through ctypes
    (0.3 us for a get and a set, against 2.3 us through threadpoolctl's wrappers), when threadpoolctl exposes them."""
    global _BLAS_CONTROLS
    if _BLAS_CONTROLS is None:
        import scipy
        from threadpoolctl import ThreadpoolController

        root = os.path.realpath(os.path.dirname(scipy.__file__))
        prefixes = (root + os.sep, root + ".libs" + os.sep)
        blas = [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
        controls = []
        for lc in [lc for lc in blas if os.path.realpath(lc.filepath).startswith(prefixes)] or blas:
            get = set_ = None
            if lc.internal_api == "openblas" and getattr(lc, "threading_layer", None) == "pthreads":
                symbol = getattr(lc, "_get_symbol", lambda name: None)
                get, set_ = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
            if get is None or set_ is None:
                get, set_ = lc.get_num_threads, lc.set_num_threads
            controls.append((get, set_))
        _BLAS_CONTROLS = controls
    return _BLAS_CONTROLS


def _limit_blas(n):
    """Set fastbp's BLAS to n threads (None: leave it alone; "auto": 1 when torch uses several threads, else leave
    it alone); returns what :func:`_restore_blas` needs."""
    if n == "auto":
        n = 1 if torch.get_num_threads() > 1 else None
    changed = None
    if n is not None:
        for get, set_ in _blas_controls():
            count = get()
            if count != n and count is not None:
                set_(n)
                changed = [*(changed or ()), (set_, count)]
    return changed


def _mm(A, B, out):
    """``out[...] = A @ B`` by torch.mm on views of the NumPy arrays (no copy; B may be a transposed view)."""
    torch.mm(torch.from_numpy(A), torch.from_numpy(B), out=torch.from_numpy(out))


def _restore_blas(changed):
    if changed:
        for set_, count in changed:
            set_(count)


# ------------------------------------------------------------------------------------------------------- workspace
class _Workspace:
    """Hidden activations and the two ping-pong delta buffers of the backward pass, for up to ``capacity`` rows."""

    __slots__ = ("_views", "acts", "capacity", "deltas", "entry", "hidden_widths")

    def __init__(self, capacity, hidden_widths, max_width, dtype):
        self.capacity = capacity
        self.hidden_widths = hidden_widths
        self.acts = np.empty(capacity * sum(hidden_widths), dtype=dtype)
        self.deltas = (np.empty(capacity * max_width, dtype=dtype), np.empty(capacity * max_width, dtype=dtype))
        self._views = (-1, None)
        # As the compiled entries take it (kernels/boundary.py).
        acts, (delta_a, delta_b) = self.acts, self.deltas
        self.entry = (acts.ctypes.data, acts.size, delta_a.ctypes.data, delta_b.ctypes.data, delta_a.size)

    def activations(self, n):
        """(n, width) C-contiguous views of ``acts``, one per hidden layer (cached for the last n)."""
        if self._views[0] != n:
            views, start = [], 0
            for width in self.hidden_widths:
                views.append(self.acts[start : start + n * width].reshape(n, width))
                start += n * width
            self._views = (n, views)
        return self._views[1]

    def delta(self, k, n, width):
        """(n, width) view of ping-pong delta buffer k (0 or 1)."""
        return self.deltas[k][: n * width].reshape(n, width)


class _Lease:
    """Holds a workspace for one autograd graph; gives it back to the pool when the graph (its ctx) is freed."""

    __slots__ = ("pool", "workspace")

    def __init__(self, pool, workspace):
        self.pool = pool
        self.workspace = workspace

    def __del__(self):
        self.pool.append(self.workspace)


# ---------------------------------------------------------------------------------------------------------- engine
class _Engine:
    """The architecture, views of the parameters, the workspace pool, and the two passes.

    Each pass is ONE compiled call (kernels/bridge.py) when the parameters are views into one flat buffer and no
    GEMM goes through torch (see :meth:`torch_layers`); otherwise it runs layer by layer from Python on NumPy views.
    Shared by the module and every autograd node it creates; holds no reference to the module.
    """

    def __init__(self, sizes, layout, dtype, blas_threads):
        self.blas_threads = blas_threads
        self.sizes = tuple(sizes)
        self.layout = np.array(layout, dtype=np.int64)  # fastbp's layout table (kernels/layout.py)
        self.codes = tuple(int(c) for c in self.layout[:, _lay.ACTIVATION])
        self.n_layers = len(self.codes)
        self.hidden_widths = self.sizes[1:-1]
        self.max_width = max(self.sizes[1:])
        offsets, offset = [], 0
        for fan_in, fan_out in itertools.pairwise(self.sizes):
            offsets.append((offset, offset + fan_in * fan_out))
            offset += fan_in * fan_out + fan_out
        self.offsets = tuple(offsets)
        self.n_params = offset
        # Per parameter, in the module's order W0, b0, W1, b1, ...: shape and offset in the flat buffer.
        self.shapes = tuple(s for fan_in, fan_out in itertools.pairwise(sizes) for s in ((fan_in, fan_out), (fan_out,)))
        self.starts = tuple(start for pair in self.offsets for start in pair)
        self.slices = tuple(
            (start, start + math.prod(shape), shape) for start, shape in zip(self.starts, self.shapes, strict=True)
        )
        self.wants = {}  # ctx.needs_input_grad -> (needs array for the compiled backward, its address, any wanted)
        self.no_torch = (False,) * self.n_layers
        # (bit length of the row count, torch threads, dtype) -> whether the large GEMMs go through torch.mm
        self.choices = {}
        self.set_dtype(dtype)

    def set_dtype(self, dtype):
        self.dtype = np.dtype(dtype)
        self.torch_dtype = _TORCH_DTYPES[self.dtype]
        self.marker = self.dtype.type(0)  # selects the compiled entries' specialization
        self.pool = []  # a new list: workspaces of the old dtype still leased go back to the old one
        self.ptrs = None  # data pointers of the parameters the views below were taken from
        self.Ws = self.bs = None
        self.flat_entry = None  # (p_params, n_params, p_layout, n_layers) when the parameters are one flat buffer

    def __getstate__(self):
        # NumPy views, workspaces and addresses would be pickled detached from the parameters: rebuild them.
        state = dict(self.__dict__)
        state.update(pool=[], ptrs=None, Ws=None, bs=None, flat_entry=None, wants={}, choices={})
        return state

    def unflatten(self, flat):
        """Per-layer (W list, b list) views into a flat 1-D array or tensor laid out like ``params``."""
        Ws, bs = [], []
        for (w, b), fan_in, fan_out in zip(self.offsets, self.sizes[:-1], self.sizes[1:], strict=True):
            Ws.append(flat[w:b].reshape(fan_in, fan_out))
            bs.append(flat[b : b + fan_out])
        return Ws, bs

    def use(self, params):
        """Point the passes at the parameter tensors ``params`` (W0, b0, W1, ...; CPU, the engine's dtype): NumPy
        views of each (a non-contiguous one is copied), and the flat entry of the compiled passes when the
        parameters are contiguous views at their places in one buffer (as :class:`MLP` keeps them)."""
        arrays = [_as_numpy(p if p.is_contiguous() else p.contiguous()) for p in params]
        self.Ws, self.bs = arrays[0::2], arrays[1::2]
        ptrs = [p.data_ptr() for p in params]
        cacheable = all(p.is_contiguous() for p in params)
        self.ptrs = ptrs if cacheable else None
        base, size = ptrs[0], self.dtype.itemsize
        flat = cacheable and all(ptr == base + size * start for ptr, start in zip(ptrs, self.starts, strict=True))
        self.flat_entry = (base, self.n_params, self.layout.ctypes.data, self.n_layers) if flat else None

    def torch_layers(self, n, calibrate_on=None):
        """Per layer, whether its GEMMs on a batch of n rows go through torch.mm: with ``blas_threads="auto"`` while
        torch uses several threads, the GEMMs of at least TORCH_GEMM_MIN multiply-adds do if that was timed faster
        for batches of this size within a factor of 2 and this thread count (:meth:`calibrate`, on ``calibrate_on``
        = (X, workspace, out) of a forward pass, when not measured yet; without it, not measured means torch.mm)."""
        threads = torch.get_num_threads()
        if not (self.blas_threads == "auto" and threads > 1):
            return self.no_torch
        big = tuple(n * fan_in * fan_out >= TORCH_GEMM_MIN for fan_in, fan_out in itertools.pairwise(self.sizes))
        if not any(big):
            return big
        key = (n.bit_length(), threads, self.dtype.char)
        choice = self.choices.get(key)
        if choice is None and calibrate_on is not None:
            choice = self.choices[key] = self.calibrate(*calibrate_on, big)
        return self.no_torch if choice is False else big

    def calibrate(self, X, workspace, out, big):
        """Whether the forward pass of X is faster with the GEMMs of the layers ``big`` through torch.mm on torch's
        threads than with every GEMM on fastbp's BLAS on the calling thread (as :meth:`forward` runs each): the two
        alternately, CALIBRATION_ROUNDS times each, on this batch (the output is overwritten); the faster minimum
        wins, for the backward passes too. Which is faster depends on the machine: on 2 cores with OpenBLAS's
        AVX-512 kernels, fastbp's BLAS on one thread (shape M: a training step 1.32x torch eager's, against 0.97x
        through torch.mm); with its AVX2 kernels, torch.mm (0.99x against 0.70x). Call with fastbp's BLAS limited
        as in a pass."""
        best = {True: math.inf, False: math.inf}
        for _ in range(CALIBRATION_ROUNDS):
            for choice, layers in ((True, big), (False, self.no_torch)):
                start = time.perf_counter()
                self._run(X, workspace, out, layers)
                best[choice] = min(best[choice], time.perf_counter() - start)
        return best[True] < best[False]

    def acquire(self, n):
        """A lease on a workspace of at least n rows, from the pool or new (smaller pooled ones are dropped)."""
        pool = self.pool
        while True:
            try:
                workspace = pool.pop()
            except IndexError:
                workspace = _Workspace(max(n, 1), self.hidden_widths, self.max_width, self.dtype)
                break
            if workspace.capacity >= n:
                break
        return _Lease(pool, workspace)

    def forward(self, X, workspace, out):
        """``out = network(X)``, hidden activations into the workspace; per layer a GEMM and one fused bias and
        activation pass. X: (n, n_in); out: (n, n_out), output: C-contiguous CPU tensors of the engine's dtype.
        Returns the network as the compiled backward pass takes it (kernels/boundary.py) if this pass ran compiled
        (its parameters one flat buffer, no GEMM through torch.mm), else None."""
        limited = _limit_blas(self.blas_threads)
        try:
            via_torch = self.torch_layers(X.shape[0], calibrate_on=(X, workspace, out))
            return self._run(X, workspace, out, via_torch)
        finally:
            _restore_blas(limited)

    def _run(self, X, workspace, out, via_torch):
        """One forward pass (see :meth:`forward`) with the GEMMs of the layers ``via_torch`` by torch.mm: ONE
        compiled call when there are none and the parameters are one flat buffer, else layer by layer."""
        n = X.shape[0]
        network = None if any(via_torch) else self.flat_entry
        if network is not None:
            _bridge_forward_entry(self.marker, network, X.data_ptr(), n, workspace.entry, out.data_ptr())
        else:
            self._forward_layers(_as_numpy(X), workspace.activations(n), out.numpy(), via_torch)
        return network

    def _forward_layers(self, X, acts, out, via_torch):
        """The forward pass layer by layer from Python, with the GEMMs of the layers ``via_torch`` by torch.mm and
        the others by fastbp's ``_dense_forward``. X: (n, n_in); acts: list of (n, h_l) views; out: (n, n_out),
        output: C-contiguous NumPy arrays of the engine's dtype."""
        Ws, bs, codes = self.Ws, self.bs, self.codes
        A_prev = X
        for l in range(self.n_layers):
            A = acts[l] if l < self.n_layers - 1 else out
            if via_torch[l]:
                _mm(A_prev, Ws[l], A)
                _bias_activation(A, bs[l], codes[l])
            else:
                _dense_forward(A_prev, Ws[l], bs[l], codes[l], A)
            A_prev = A

    def backward(self, G, X, out, workspace, Ws, network, needs):
        """Gradients from the upstream gradient ``G = dLoss/dY``, as autograd wants them: a tuple
        ``(dX, None, dW0, db0, dW1, db1, ...)`` of new tensors, None where ``needs`` (ctx.needs_input_grad: X,
        engine, W0, b0, ...) is False.

        BP1 with the given upstream gradient ``delta[L] = G * f'(A[L])``, then from the top: BP4 ``dW[l] =
        A[l-1].T @ delta[l]``, BP3 ``db[l] = sum_i delta[l]``, BP2 ``delta[l-1] = (delta[l] @ W[l].T) *
        f'(A[l-1])``, down to the lowest layer that needs a gradient; ``dX = delta[0] @ W[0].T``.
        G: (n, n_out), X: (n, n_in): C-contiguous CPU tensors; out: (n, n_out) NumPy array, the forward's output.
        workspace: the hidden activations of the forward pass; Ws: the weights it used (NumPy views), network:
        what it returned. The 1/n of a mean loss is already in G (torch's loss put it there).
        """
        n = G.shape[0]
        if network is not None and not any(self.torch_layers(n)):
            return self._compiled_backward(G, X, out, workspace, network, needs)
        # The graph's dtype: the engine's may have changed since its forward pass (functional_call in float64).
        dtype, no_db = out.dtype, np.empty(0, dtype=out.dtype)
        G, X, acts = _as_numpy(G), _as_numpy(X), workspace.activations(n)
        L = self.n_layers
        need_X = needs[0]
        lowest = 0 if need_X else next((l for l in range(L) if needs[2 + 2 * l] or needs[3 + 2 * l]), L)
        grads = [None] * (2 + 2 * L)
        if lowest == L:
            return tuple(grads)
        shapes, codes, sizes = self.shapes, self.codes, self.sizes
        via_torch = self.torch_layers(n)
        limited = _limit_blas(self.blas_threads)
        try:
            # BP1 with the upstream gradient (G itself for the identity output).
            code = codes[-1]
            slot = 0  # the ping-pong delta buffer the next delta goes to
            if code == _act.IDENTITY:
                delta = G
            else:
                delta = workspace.delta(0, n, sizes[-1])
                _output_delta(code, G, out, delta)
                slot = 1
            if needs[1 + 2 * L]:
                db = np.empty(sizes[-1], dtype=dtype)
                np.add.reduce(delta, axis=0, out=db)  # BP3 of the output layer
                grads[1 + 2 * L] = torch.from_numpy(db)
            for l in range(L - 1, lowest - 1, -1):
                A_prev = X if l == 0 else acts[l - 1]
                if needs[2 + 2 * l]:
                    dW = np.empty(shapes[2 * l], dtype=dtype)
                    if via_torch[l]:
                        _mm(A_prev.T, delta, dW)  # BP4
                    else:
                        _weight_grad(A_prev, delta, 0.0, dW)  # BP4
                    grads[2 + 2 * l] = torch.from_numpy(dW)
                if l > lowest:
                    delta_prev = workspace.delta(slot, n, sizes[l])
                    with_db = needs[1 + 2 * l]
                    db = np.empty(sizes[l], dtype=dtype) if with_db else no_db
                    if via_torch[l]:  # BP2, BP3
                        _mm(delta, Ws[l].T, delta_prev)
                        _activation_derivative(delta_prev, A_prev, codes[l - 1], db, int(with_db), 0)
                    else:
                        _hidden_delta(delta, Ws[l], A_prev, codes[l - 1], delta_prev, db, int(with_db), 0)
                    if with_db:
                        grads[1 + 2 * l] = torch.from_numpy(db)
                    delta, slot = delta_prev, 1 - slot
            if need_X:
                dX = np.empty_like(X)
                if via_torch[0]:
                    _mm(delta, Ws[0].T, dX)
                else:
                    _hidden_delta(delta, Ws[0], dX, _act.IDENTITY, dX, no_db, 0, 0)
                grads[0] = torch.from_numpy(dX)
        finally:
            _restore_blas(limited)
        return tuple(grads)

    def _compiled_backward(self, G, X, out, workspace, network, needs):
        """:meth:`backward` in one compiled call, into one new flat gradient buffer whose views are returned."""
        wanted = self.wants.get(needs)
        if wanted is None:
            array = np.array([needs[0], *needs[2:]], dtype=np.int64)
            wanted = self.wants[needs] = (array, array.ctypes.data, any(array))
        array, p_needs, any_wanted = wanted
        if not any_wanted:
            return (None,) * len(needs)
        n, dtype = G.shape[0], out.dtype  # the graph's dtype (the engine's may have changed since its forward)
        flat = np.empty(self.n_params, dtype=dtype)
        dX = torch.from_numpy(np.empty(X.shape, dtype=dtype)) if needs[0] else None
        # The output is read only for its activation's derivative; any valid (n, n_out) buffer stands in for it.
        p_out = G.data_ptr() if self.codes[-1] == _act.IDENTITY else out.ctypes.data
        limited = _limit_blas(self.blas_threads)
        try:
            _bridge_backward_entry(
                dtype.type(0),
                network,
                p_needs,
                n,
                G.data_ptr(),
                X.data_ptr(),
                p_out,
                workspace.entry,
                flat.ctypes.data,
                0 if dX is None else dX.data_ptr(),
            )
        finally:
            _restore_blas(limited)
        grads = [dX, None]
        for want, (start, stop, shape) in zip(needs[2:], self.slices, strict=True):
            grads.append(torch.from_numpy(flat[start:stop].reshape(shape)) if want else None)
        return tuple(grads)


def _output_delta(code, G, A, delta):
    """``delta[...] = G * f'(A)`` for an output activation f (A its output); softmax's Jacobian-vector product
    ``A * (G - sum_j G_j A_j)``. G, A, delta: (n, n_out) arrays of one dtype; delta is the output."""
    if code == _act.SIGMOID:
        np.subtract(1, A, out=delta)
        delta *= A
        delta *= G
    elif code == _act.TANH:
        np.multiply(A, A, out=delta)
        np.subtract(1, delta, out=delta)
        delta *= G
    elif code == _act.RELU:
        np.multiply(G, A > 0, out=delta)
    elif code == _act.LEAKY_RELU:
        one, slope = delta.dtype.type(1), delta.dtype.type(_act.LEAKY_SLOPE)
        np.multiply(G, np.where(A > 0, one, slope), out=delta)
    elif code == _act.SOFTMAX:
        np.subtract(G, np.einsum("ij,ij->i", G, A)[:, None], out=delta)
        delta *= A
    else:
        raise AssertionError(f"unknown activation code {code}")


def _as_numpy(T):
    """The NumPy view of a CPU tensor (``Tensor.numpy`` refuses tensors that require grad: detach them first)."""
    return T.detach().numpy() if T.requires_grad else T.numpy()


# --------------------------------------------------------------------------------------------- autograd function
class _DenseStack(torch.autograd.Function):
    """All layers as one autograd node: inputs ``(X, engine, W0, b0, W1, b1, ...)``, output ``(n, n_out)``."""

    @staticmethod
    def forward(ctx, X, engine, *params):
        n = X.shape[0]
        lease = engine.acquire(n)
        out_np = np.empty((n, engine.sizes[-1]), dtype=engine.dtype)
        out = torch.from_numpy(out_np)
        Ws = engine.Ws
        network = engine.forward(X, lease.workspace, out)
        # Saved for autograd's check that none was modified in place before backward (the backward pass reads their
        # memory); the output only when its activation's derivative needs it.
        ctx.save_for_backward(X, None if engine.codes[-1] == _act.IDENTITY else out, *params)
        # The NumPy array of the output, not the tensor: ctx -> output -> ctx (its grad_fn) would be a reference
        # cycle, freed only by the garbage collector. An alias of the input, which keeps its storage and shape even
        # if X.data is replaced. The parameters and their addresses: see backward.
        ctx.state = (engine, lease, X.detach(), out_np, Ws, network, params, [p.data_ptr() for p in params])
        return out

    @staticmethod
    def backward(ctx, G):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "fastbp.torch.MLP does not support double backward (backward with create_graph=True, or "
                "differentiating a gradient); use the equivalent torch.nn.Sequential from model.to_sequential()"
            )
        ctx.saved_tensors  # noqa: B018 (raises if an input or a parameter was modified in place since the forward)
        engine, lease, X, out_np, Ws, network, params, ptrs = ctx.state
        # .double(), .to(), share_memory(), p.data = ... give the same parameter objects new storage (and may free the
        # old one, which the backward pass would read): refuse, as the version counters refuse in-place changes. The
        # objects themselves, not saved_tensors, which saved-tensor hooks may replace by copies.
        if [p.data_ptr() for p in params] != ptrs:
            raise RuntimeError(
                "the parameters of fastbp.torch.MLP were given new storage (.double(), .to(), share_memory(), "
                "p.data = ...) between the forward pass and backward(); run the forward pass again"
            )
        if not G.is_contiguous():
            G = G.contiguous()
        return engine.backward(G, X, out_np, lease.workspace, Ws, network, ctx.needs_input_grad)


# torch.autograd.Function.apply (Python) binds default arguments and checks for functorch transforms before calling
# the C++ apply: 2 us per call (measured 5.7 against 3.7 us). The bridge supports no functorch transform, so it calls
# the C++ apply directly.
_apply_dense_stack = super(torch.autograd.Function, _DenseStack).apply


# ---------------------------------------------------------------------------------------------------------- module
class MLP(torch.nn.Module):
    """A dense MLP as a ``torch.nn.Module``, computed by fastbp's compiled kernels (CPU, float32 or float64).

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_in, h1, ..., n_out]``.
    activation : str or sequence of str, default "relu"
        Hidden activation(s): "identity", "sigmoid" ("logistic"), "tanh", "relu", "leaky_relu" (slope 0.01).
    output : str, default "identity"
        Output activation: "identity" (logits, for ``CrossEntropyLoss`` or ``MSELoss``), "softmax", or any
        hidden activation.
    dtype : torch.float32 or torch.float64 (or "float32" / "float64"), default torch.float32
    seed : int or None, default 0
        fastbp's initialisation (He normal before relu-type units, Glorot uniform otherwise; zero biases), the
        same values as ``fastbp.MLP(layer_sizes, ..., seed=seed)``; not torch's ``Linear`` initialisation.
    blas_threads : "auto", int or None, default "auto"
        Threads of fastbp's BLAS during this module's forward and backward (the setting is restored after each).
        "auto": while torch uses several threads (``torch.get_num_threads() > 1``), fastbp's BLAS is limited to 1
        thread, so that torch's pool keeps the other cores (two pools on the same cores slow each other down by
        milliseconds per step: see the module source), and GEMMs of at least ``TORCH_GEMM_MIN`` multiply-adds run
        through ``torch.mm`` on torch's pool if that is faster: the first forward pass of each batch size times both
        ways (``CALIBRATION_ROUNDS`` forward passes each, on that batch) and keeps the faster for batch sizes within
        a factor of 2 and that thread count, so results can differ between machines, or runs, in the last bits;
        after ``torch.set_num_threads(1)``, every
        GEMM on fastbp's BLAS with its own setting (``fastbp.set_num_threads``). An int: every GEMM on fastbp's
        BLAS with that many threads; None: every GEMM on fastbp's BLAS with its own setting.

    Parameters of the module: ``W0, b0, W1, b1, ...``; ``W{l}`` is (fan_in, fan_out) (the transpose of torch
    ``Linear.weight``) and ``b{l}`` is (fan_out,), all views into :attr:`flat_params`.

    Forward: X (*, n_in) tensor (converted to the module's dtype and made contiguous if needed; CPU only) ->
    (*, n_out) tensor of the module's dtype. Backward computes the gradients of the parameters and, when X
    requires grad, of X; parameters with ``requires_grad=False`` get none (their weight GEMM is skipped).
    Thread-safe for concurrent forward/backward calls on distinct graphs.
    """

    def __init__(
        self, layer_sizes, activation="relu", output="identity", dtype=torch.float32, seed=0, blas_threads="auto"
    ):
        super().__init__()
        dtype = _numpy_dtype(dtype)
        if blas_threads is not None and blas_threads != "auto":
            blas_threads = check_int(blas_threads, "blas_threads", minimum=1)
        net = _FastMLP(layer_sizes, activation=activation, output=output, dtype=dtype, seed=seed)
        self.layer_sizes = net.layer_sizes
        self.activations = net.activations
        self.output = net.output
        self._engine = _Engine(net.layer_sizes, net.layout, dtype, blas_threads)
        self._flat = torch.from_numpy(net.params.copy())
        Ws, bs = self._engine.unflatten(self._flat)
        for l, (W, b) in enumerate(zip(Ws, bs, strict=True)):
            self.register_parameter(f"W{l}", torch.nn.Parameter(W))
            self.register_parameter(f"b{l}", torch.nn.Parameter(b))
        self._use_params(tuple(self._parameters.values()))

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_fastbp(cls, net, output=None, blas_threads="auto"):
        """A module with the architecture and (copied) parameters of a ``fastbp.MLP``.

        ``output``: the output activation, default ``net.output`` (pass "identity" to get the logits of a softmax
        network, for ``CrossEntropyLoss``). The dtype is the network's.
        """
        model = cls(
            list(net.layer_sizes),
            list(net.activations),
            output or net.output,
            dtype=net.dtype,
            seed=0,
            blas_threads=blas_threads,
        )
        with torch.no_grad():
            model.flat_params.copy_(torch.from_numpy(net.params))
        return model

    def to_fastbp(self, output=None, loss=None):
        """A ``fastbp.MLP`` with this architecture and a copy of the parameters (``output`` defaults to this
        module's; ``loss`` to the canonical loss of the output)."""
        net = _FastMLP(
            list(self.layer_sizes),
            list(self.activations),
            output=output or self.output,
            loss=loss,
            dtype=self._engine.dtype,
        )
        net.params[:] = self.flat_params.detach().numpy()
        return net

    def to_sequential(self):
        """The equivalent ``torch.nn.Sequential`` of ``Linear`` and activation modules (weights copied,
        ``Linear.weight = W.T``), in this module's dtype; e.g. for export or double backward."""
        layers = []
        codes = self._engine.codes
        for l, (W, b) in enumerate(zip(self.coefs, self.intercepts, strict=True)):
            fan_in, fan_out = W.shape
            linear = torch.nn.Linear(fan_in, fan_out, dtype=W.dtype)
            with torch.no_grad():
                linear.weight.copy_(W.T)
                linear.bias.copy_(b)
            layers.append(linear)
            if codes[l] != _act.IDENTITY:
                layers.append(_TORCH_ACTIVATIONS[codes[l]]())
        return torch.nn.Sequential(*layers)

    # ------------------------------------------------------------------ parameters
    @property
    def coefs(self):
        """List of the weight parameters ``W[l]``, (fan_in, fan_out)."""
        return [getattr(self, f"W{l}") for l in range(self._engine.n_layers)]

    @property
    def intercepts(self):
        """List of the bias parameters ``b[l]``, (fan_out,)."""
        return [getattr(self, f"b{l}") for l in range(self._engine.n_layers)]

    @property
    def flat_params(self):
        """Every parameter as ONE 1-D tensor (n_params,), laid out like ``fastbp.MLP.params`` (W[0] row-major,
        b[0], W[1], ...); the parameters are views into it, so writing into it (under ``torch.no_grad()``, e.g.
        ``model.flat_params.copy_(theta)``) sets them."""
        self._repack()
        return self._flat

    @property
    def n_params(self):
        return self._engine.n_params

    @property
    def dtype(self):
        """torch dtype of the parameters and outputs."""
        return self._engine.torch_dtype

    def _check_params(self, params):
        """Raise if the registered parameters cannot be computed with (names, dtypes, device, shapes)."""
        engine = self._engine
        names = list(self._parameters)
        expected = [f"{kind}{l}" for l in range(engine.n_layers) for kind in ("W", "b")]
        if names != expected or any(p is None for p in params):
            raise RuntimeError(f"the parameters of fastbp.torch.MLP must be {expected}, found {names}")
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1 or next(iter(dtypes)) not in _NUMPY_DTYPES:
            raise TypeError(
                f"fastbp.torch.MLP computes in float32 or float64, its parameters are {sorted(map(str, dtypes))}"
            )
        if any(p.device.type != "cpu" for p in params):
            raise ValueError("fastbp.torch.MLP runs on the CPU only; its parameters are on another device")
        for p, shape in zip(params, engine.shapes, strict=True):
            if tuple(p.shape) != shape:
                raise ValueError(f"a parameter of fastbp.torch.MLP has shape {tuple(p.shape)}, expected {shape}")

    def _use_params(self, params):
        """Point the kernels at the current parameter tensors: NumPy views (no copy) of each, refreshed whenever a
        parameter's storage changes (the forward pass compares data pointers). Parameters are not modified, so
        ``torch.func.functional_call`` works; a non-contiguous one is copied, and then not cached."""
        self._check_params(params)
        engine = self._engine
        dtype = _NUMPY_DTYPES[params[0].dtype]
        if dtype != engine.dtype:
            engine.set_dtype(dtype)
        engine.use(params)

    def _repack(self):
        """Make the parameters views into one flat buffer again (copying their values) when something gave them
        other storage: ``.double()``, ``.to()``, ``p.data = ...``, ``load_state_dict(..., assign=True)``."""
        params = tuple(self._parameters.values())
        self._use_params(params)
        engine = self._engine
        flat = self._flat
        # In place: the engine found the parameters one flat buffer (Engine.use), and that buffer is this module's.
        in_place = (
            engine.flat_entry is not None and engine.flat_entry[0] == flat.data_ptr() and flat.dtype == params[0].dtype
        )
        if not in_place:
            flat = torch.empty(engine.n_params, dtype=params[0].dtype)
            Ws, bs = engine.unflatten(flat)
            with torch.no_grad():
                for p, view in zip(params, [t for pair in zip(Ws, bs, strict=True) for t in pair], strict=True):
                    view.copy_(p)
                    p.data = view
            self._flat = flat
            self._use_params(params)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .double(), .share_memory() ... may give the parameters new storage: re-make the flat buffer.
        result = super()._apply(fn, *args, **kwargs)
        self._regather()
        return result

    def __setstate__(self, state):
        # copy.deepcopy and pickle copy each parameter on its own: make them views into one flat buffer again (the
        # compiled passes need that).
        super().__setstate__(state)
        self._regather()

    def _regather(self):
        """:meth:`_repack` when the parameters are CPU tensors of a dtype the kernels compute in; otherwise leave them
        (a module may be moved to another device or dtype, and back) and let the next forward raise, naming it."""
        params = tuple(self._parameters.values())
        if all(p is not None and p.device.type == "cpu" and p.dtype in _NUMPY_DTYPES for p in params):
            self._repack()
        else:
            self._engine.ptrs = None

    def _load_from_state_dict(self, *args, **kwargs):
        # load_state_dict copies into the parameters in place, or with assign=True replaces them: gather them again.
        super()._load_from_state_dict(*args, **kwargs)
        self._repack()

    # ------------------------------------------------------------------ compute
    def forward(self, X):
        """Network output for X: (*, n_in) tensor -> (*, n_out) tensor of the module's dtype."""
        engine = self._engine
        params = tuple(self._parameters.values())
        if [p.data_ptr() for p in params] != engine.ptrs:
            self._use_params(params)
        if not isinstance(X, torch.Tensor):
            raise TypeError(f"X must be a torch.Tensor, got {type(X).__name__}")
        if X.dtype != engine.torch_dtype:
            if X.is_complex():
                raise TypeError(f"X must be real, got {X.dtype}")
            X = X.to(engine.torch_dtype)
        n_in = engine.sizes[0]
        if X.dim() != 2 or X.shape[1] != n_in:
            if X.dim() == 0 or X.shape[-1] != n_in:
                raise ValueError(f"X must have shape (*, {n_in}), got {tuple(X.shape)}")
            lead = X.shape[:-1]
            return self.forward(X.reshape(-1, n_in)).reshape(*lead, engine.sizes[-1])
        if not X.is_cpu:
            raise ValueError(f"X must be on the CPU, got device {X.device}")
        if not X.is_contiguous():
            X = X.contiguous()
        if torch.is_grad_enabled():
            return _apply_dense_stack(X, engine, *params)
        # Inference: no autograd node, and the workspace goes back to the pool at once.
        n = X.shape[0]
        lease = engine.acquire(n)
        out = torch.from_numpy(np.empty((n, engine.sizes[-1]), dtype=engine.dtype))
        engine.forward(X, lease.workspace, out)
        return out

    def extra_repr(self):
        return (
            f"layer_sizes={list(self.layer_sizes)}, activation={list(self.activations)}, output={self.output!r}, "
            f"dtype={self.dtype}"
        )
