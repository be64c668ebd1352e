"""PyTorch bridge: a ``torch.nn.Module`` dense MLP whose forward and backward run fastbp's compiled kernels.

Contract. ``fastbp.torch.MLP`` is an ordinary module: ``Y = model(X)`` maps ``(*, n_in)`` to ``(*, n_out)``, any
torch loss goes on top (e.g. ``CrossEntropyLoss`` on the logits of the default identity output), and
``loss.backward()`` fills ``p.grad`` of every parameter, so any torch optimizer, scheduler, gradient clipping or
``state_dict`` round trip works. Inside, one ``torch.autograd.Function`` runs the whole stack of layers:

- forward: fastbp's forward pass (kernels/forward.py: per layer a GEMM into the output, then one fused pass for bias
  and activation); hidden activations ``A[l]`` go to a reused workspace, the output to a new tensor;
- backward, with the upstream gradient ``G = dLoss/dY``: ``delta[L] = G * f'(A[L])`` (BP1 with the torch loss's
  gradient; ``delta[L] = G`` for the identity output), then fastbp's backward pass (kernels/backward.py, the one the
  trainer runs): per layer BP4, BP3 and BP2 down to the lowest layer that needs a gradient, and ``dX = delta[0] @
  W[0].T`` when the input requires grad. The gradients are views into one new flat buffer laid out like the
  parameters.

Each pass is ONE compiled call (kernels/bridge.py) on the tensors' memory, given by address: no copies (CPU only;
the input is made contiguous and of the module's dtype first, by differentiable torch ops). When the parameters are
not views into one flat buffer (``torch.func.functional_call`` with other tensors), the forward pass gathers them
into a new flat buffer first, which its backward pass reads.

Unlike torch's ``Linear`` (weight ``(out, in)``), the weights keep fastbp's convention ``W[l]: (fan_in, fan_out)``,
``Z = A_prev @ W + b``, and every parameter is a view into ONE flat buffer laid out like ``fastbp.MLP.params``
(``flat_params``).

Memory: hidden activations live in workspaces taken from a per-module pool for the lifetime of the autograd graph
(returned when the graph is freed), so a training loop reuses two of them; the output and the gradients are new
tensors, which autograd hands to ``p.grad`` without a copy.

Threads: while torch uses several threads (``blas_threads="auto"``), fastbp's BLAS runs on the calling thread only,
or the GEMMs go to the BLAS that torch itself links (MKL in the x86 wheels; it runs on torch's own thread pool),
whichever was timed faster for the batch size (``_Engine.calibrate``); see "BLAS threads" below.

Not supported: double backward (``create_graph=True``; a clear RuntimeError), devices other than the CPU, dtypes
other than float32 and float64, ``torch.func`` transforms (vmap, grad, jacrev) and batched backward passes (a clear
RuntimeError; ``torch.func.functional_call`` works), forward-mode AD. ``torch.compile`` of a model that contains the
module compiles the torch code around it; the module itself runs as one opaque call (a graph break).
"""

import ctypes
import itertools
import math
import os
import threading
import time

import numpy as np
import torch

from . import _tuning
from ._validation import check_dtype, check_int
from .kernels import activations as _act
from .kernels import layout as _lay
from .kernels.bridge import _bridge_backward_entry, _bridge_forward_entry
from .kernels.gemm import BLAS_GEMM, BLAS_GEMM_BATCH, BLAS_LIBRARY
from .network import MLP as _FastMLP
from .network import workspace_entry
from .threads import _is_gemm_library

__all__ = ["MLP", "ShapeError"]

_NO_TWIN = np.zeros(0, dtype=np.uint16)

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
_NUMPY_DTYPES = {t: d for d, t in _TORCH_DTYPES.items()}


class _Exp(torch.nn.Module):
    """``torch.exp`` as a module (torch has none), for an "exp" output in ``MLP.to_sequential``."""

    def forward(self, x):
        """Elementwise exp of x (any shape), in x's dtype."""
        return torch.exp(x)


#: torch modules equal to each activation, for ``MLP.to_sequential``.
_TORCH_ACTIVATIONS = {
    _act.IDENTITY: torch.nn.Identity,
    _act.SIGMOID: torch.nn.Sigmoid,
    _act.TANH: torch.nn.Tanh,
    _act.RELU: torch.nn.ReLU,
    _act.LEAKY_RELU: lambda: torch.nn.LeakyReLU(_act.LEAKY_SLOPE),
    _act.SOFTMAX: lambda: torch.nn.Softmax(dim=-1),
    _act.EXP: _Exp,
}


class ShapeError(ValueError, RuntimeError):
    """A tensor of the wrong shape for the network: a ``ValueError``, as fastbp's other shape errors, and a
    ``RuntimeError``, as torch's ``Linear`` raises for it, so that code written for either catches it."""


def _numpy_dtype(dtype):
    """np.float32 or np.float64 from a torch dtype, a NumPy dtype or a name."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _NUMPY_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        return _NUMPY_DTYPES[dtype]
    return check_dtype(dtype)


# ---------------------------------------------------------------------------------------------------- BLAS threads
# In a torch program torch's OpenMP pool owns the cores, and a second pool fights it: OpenBLAS's idle worker spins
# after a threaded GEMM while a parallel torch op needs the core, and libgomp's spinning worker slows the next
# threaded OpenBLAS GEMM (a training step of shape M took over 10x as long; docs/measurements.md).
# So by default (``blas_threads="auto"``) the bridge runs fastbp's GEMMs on the calling thread only while torch uses
# more than one thread, restoring the previous setting after each pass, or calls the GEMM of the BLAS that torch
# links, which runs on torch's own pool; with ``torch.set_num_threads(1)`` the cores are free and fastbp's BLAS
# keeps its threads.

_BLAS_CONTROLS = None
_TORCH_GEMM = None


def _torch_gemm():
    """dtype -> address of the Fortran ``sgemm_``/``dgemm_`` that torch's own library exports (MKL in the x86
    wheels, on torch's OpenMP pool); empty when it exports none (the GEMMs then stay on fastbp's BLAS)."""
    global _TORCH_GEMM
    if _TORCH_GEMM is None:
        found = {}
        library = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
        try:
            lib = ctypes.CDLL(library)
            for dtype, name in ((np.float32, "sgemm_"), (np.float64, "dgemm_")):
                found[np.dtype(dtype)] = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        except (OSError, AttributeError):
            found = {}
        _TORCH_GEMM = found
    return _TORCH_GEMM


def _blas_controls():
    """(get, set) thread-count functions of the BLAS library that fastbp's GEMM binding calls (``BLAS_LIBRARY``, or
    SciPy's; every loaded BLAS if it cannot be told apart). The OpenBLAS entry points are called directly through
    ctypes (cheaper than threadpoolctl's wrappers), when threadpoolctl exposes them."""
    global _BLAS_CONTROLS
    if _BLAS_CONTROLS is None:
        from threadpoolctl import ThreadpoolController

        blas = [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
        controls = []
        for lc in [lc for lc in blas if _is_gemm_library(lc.filepath, BLAS_LIBRARY)] or blas:
            get = set_ = None
            if lc.internal_api == "openblas" and getattr(lc, "threading_layer", None) == "pthreads":
                symbol = getattr(lc, "_get_symbol", lambda name: None)
                get, set_ = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
            if get is None or set_ is None:
                get, set_ = lc.get_num_threads, lc.set_num_threads
            controls.append((get, set_))
        _BLAS_CONTROLS = controls
    return _BLAS_CONTROLS


# The passes that have set fastbp's BLAS threads and the settings from before the first of them, which the last one
# restores: passes of several Python threads overlap, and one that saved another's temporary setting would
# "restore" that one.
_BLAS_LOCK = threading.Lock()
_BLAS_SETTING = {"passes": 0, "saved": ()}


def _limit_blas(n):
    """Set fastbp's BLAS to n threads (None: leave it alone; "auto": 1 when torch uses several threads, else leave
    it alone); returns what ``_restore_blas`` needs."""
    if n == "auto":
        n = 1 if torch.get_num_threads() > 1 else None
    if n is None:
        return False
    with _BLAS_LOCK:
        controls = _blas_controls()
        if _BLAS_SETTING["passes"] == 0:
            _BLAS_SETTING["saved"] = [(set_, get()) for get, set_ in controls]
        _BLAS_SETTING["passes"] += 1
        for get, set_ in controls:
            if get() != n:
                set_(n)
    return True


def _restore_blas(limited):
    """Undo ``_limit_blas`` (its result): the settings from before come back when no other pass holds one."""
    if limited:
        with _BLAS_LOCK:
            _BLAS_SETTING["passes"] -= 1
            if _BLAS_SETTING["passes"] == 0:
                for set_, count in _BLAS_SETTING["saved"]:
                    if count is not None:
                        set_(count)


# ------------------------------------------------------------------------------------------------------- workspace
class _Workspace:
    """Hidden activations and the two ping-pong delta buffers of the backward pass, for up to ``capacity`` rows, and
    their addresses as the compiled entries take them (kernels/boundary.py)."""

    __slots__ = ("buffers", "capacity", "entry", "nbytes")

    def __init__(self, capacity, hidden_widths, max_width, dtype):
        self.capacity = capacity
        acts = np.empty(capacity * sum(hidden_widths), dtype=dtype)
        delta_a, delta_b = np.empty(capacity * max_width, dtype=dtype), np.empty(capacity * max_width, dtype=dtype)
        # no layer options (no third delta buffer, no auxiliary workspace), no bfloat16 twins
        nothing, no_sums = np.empty(0, dtype=dtype), np.empty(0, dtype=np.float64)
        self.buffers = (acts, delta_a, delta_b, nothing, nothing, no_sums)
        self.nbytes = sum(buffer.nbytes for buffer in self.buffers)
        self.entry = workspace_entry(self.buffers, (_NO_TWIN,) * 4)


class _Lease:
    """Holds a workspace for one autograd graph; gives it back to the pool when the graph (its ctx) is freed, unless
    it is larger than ``_tuning.BRIDGE_POOL_BYTES`` (then freed)."""

    __slots__ = ("pool", "workspace")

    def __init__(self, pool, workspace):
        self.pool = pool
        self.workspace = workspace

    def __del__(self):
        if self.workspace.nbytes <= _tuning.BRIDGE_POOL_BYTES:
            self.pool.append(self.workspace)


# ---------------------------------------------------------------------------------------------------------- engine
class _Engine:
    """The architecture, the parameters' addresses, the workspace pool, the choice of GEMM, and the two passes, each
    ONE compiled call (kernels/bridge.py). Shared by the module and every autograd node it creates; holds no
    reference to the module."""

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
        # (bit length of the row count, torch threads, dtype) -> whether the GEMMs go to torch's BLAS
        self.choices = {}
        self.set_dtype(dtype)

    def set_dtype(self, dtype):
        self.dtype = np.dtype(dtype)
        self.torch_dtype = _TORCH_DTYPES[self.dtype]
        self.marker = self.dtype.type(0)  # selects the compiled entries' specialization
        self.pool = []  # a new list: workspaces of the old dtype still leased go back to the old one
        self.key = None  # the parameters the entry below was made for: see _param_key
        self.flat_entry = None  # (p_params, n_params, p_layout, n_layers) when the parameters are one flat buffer

    def __getstate__(self):
        # Workspaces and addresses would be pickled detached from the parameters: rebuild them.
        state = dict(self.__dict__)
        state.update(pool=[], key=None, flat_entry=None, wants={}, choices={})
        return state

    def unflatten(self, flat):
        """Per-layer (W list, b list) views into a flat 1-D array or tensor laid out like ``params``."""
        Ws, bs = [], []
        for (w, b), fan_in, fan_out in zip(self.offsets, self.sizes[:-1], self.sizes[1:], strict=True):
            Ws.append(flat[w:b].reshape(fan_in, fan_out))
            bs.append(flat[b : b + fan_out])
        return Ws, bs

    def use(self, params):
        """Point the passes at the parameter tensors ``params`` (W0, b0, W1, ...; CPU, the engine's dtype): their
        flat entry when they are contiguous views at their places in one buffer (as ``MLP`` keeps them), else
        none (each forward pass then gathers them)."""
        self.key = _param_key(params)
        ptrs = [ptr for ptr, _, _ in self.key]
        base, size = ptrs[0], self.dtype.itemsize
        flat = all(p.is_contiguous() for p in params) and all(
            ptr == base + size * start for ptr, start in zip(ptrs, self.starts, strict=True)
        )
        self.flat_entry = (base, self.n_params, self.layout.ctypes.data, self.n_layers) if flat else None

    def parameters(self, params):
        """(the parameters as the compiled passes take them, without the GEMM, and the buffer that holds them): the
        parameters' own flat buffer, or a new gathered copy when they are not one."""
        if self.flat_entry is not None:
            return self.flat_entry, None
        with torch.no_grad():
            gathered = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
        return (gathered.ctypes.data, self.n_params, self.layout.ctypes.data, self.n_layers), gathered

    def gemm(self, n, calibrate_on=None):
        """Address of the GEMM of the passes on a batch of n rows: fastbp's BLAS, or, with ``blas_threads="auto"``
        while torch uses several threads, torch's BLAS if that was timed faster for batches of this size within a
        factor of 2, this thread count and dtype (``calibrate`` on ``calibrate_on`` = (network, X, workspace,
        out) of a forward pass, when not measured yet)."""
        threads = torch.get_num_threads()
        torch_gemm = _torch_gemm().get(self.dtype)
        if not (self.blas_threads == "auto" and threads > 1 and torch_gemm is not None):
            return BLAS_GEMM[self.dtype]
        key = (n.bit_length(), threads, self.dtype.char)
        choice = self.choices.get(key)
        if choice is None:
            choice = self.choices[key] = self.calibrate(*calibrate_on, torch_gemm)
        return torch_gemm if choice else BLAS_GEMM[self.dtype]

    def calibrate(self, network, X, workspace, out, torch_gemm):
        """Whether the forward pass of X is faster with torch's BLAS (on torch's threads) than with fastbp's BLAS on
        the calling thread: the two alternately, ``_tuning.CALIBRATION_ROUNDS`` times each, on this batch (the output
        is overwritten); the faster minimum wins, for the backward passes too. Which is faster depends on the machine
        (the BLAS kernels each library picks for the CPU, the number of cores). Call with fastbp's BLAS limited as in
        a pass."""
        best = {True: math.inf, False: math.inf}
        for _ in range(_tuning.CALIBRATION_ROUNDS):
            for choice, gemm in ((True, torch_gemm), (False, BLAS_GEMM[self.dtype])):
                start = time.perf_counter()
                self._run(self._network(network, gemm), X, workspace, out)
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

    def forward(self, X, workspace, out, params):
        """``out = network(X)``, hidden activations into the workspace. X: (n, n_in); out: (n, n_out), output:
        C-contiguous CPU tensors of the engine's dtype; params: the parameter tensors. Returns (the network as the
        backward pass takes it, the buffer it reads the parameters from: None, or a gathered copy to keep alive)."""
        network, gathered = self.parameters(params)
        limited = _limit_blas(self.blas_threads)
        try:
            network = self._network(network, self.gemm(X.shape[0], calibrate_on=(network, X, workspace, out)))
            self._run(network, X, workspace, out)
        finally:
            _restore_blas(limited)
        return network, gathered

    def _network(self, params, gemm):
        """The network as the passes take it (kernels/boundary.py): the parameters ``params``, the GEMM at ``gemm``
        with the batch GEMM of fastbp's BLAS when ``gemm`` is that BLAS's (none with torch's), and no bfloat16 GEMM,
        twin or buffers (the bridge computes in the dtype's own precision, without layer options)."""
        batch = BLAS_GEMM_BATCH[self.dtype] if gemm == BLAS_GEMM[self.dtype] else 0
        return (*params, gemm, batch, 0, 0, 0, 0)

    def _run(self, network, X, workspace, out):
        _bridge_forward_entry(self.marker, network, X.data_ptr(), X.shape[0], workspace.entry, out.data_ptr())

    def backward(self, G, X, out, workspace, network, needs):
        """Gradients from the upstream gradient ``G = dLoss/dY``, as autograd wants them: a tuple
        ``(dX, None, dW0, db0, dW1, db1, ...)`` of new tensors, None where ``needs`` (ctx.needs_input_grad: X,
        engine, W0, b0, ...) is False; the weights and biases are views into one new flat buffer.

        G: (n, n_out), X: (n, n_in): C-contiguous CPU tensors; out: (n, n_out) NumPy array, the forward's output;
        workspace: the hidden activations of the forward pass; network: what it returned (its parameters and GEMM).
        The 1/n of a mean loss is already in G (torch's loss put it there).
        """
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


_NO_TRANSFORMS = (
    "fastbp.torch.MLP does not support torch.func transforms (vmap, grad, jacrev, ...; functional_call works) nor a "
    "batched backward (is_grads_batched, a vectorized jacobian): use the equivalent torch.nn.Sequential from "
    "model.to_sequential()"
)

_NO_EXPORT = (
    "fastbp.torch.MLP cannot be exported, traced or scripted (torch.export, torch.jit.trace, torch.jit.script): its "
    "passes are compiled code outside torch's graph; export, trace or script the equivalent torch.nn.Sequential from "
    "model.to_sequential()"
)


# --------------------------------------------------------------------------------------------- autograd function
class _DenseStack(torch.autograd.Function):
    """All layers as one autograd node: inputs ``(X, engine, W0, b0, W1, b1, ...)``, output ``(n, n_out)``."""

    @staticmethod
    def forward(ctx, X, engine, *params):
        n = X.shape[0]
        lease = engine.acquire(n)
        out_np = np.empty((n, engine.sizes[-1]), dtype=engine.dtype)
        out = torch.from_numpy(out_np)
        network, gathered = engine.forward(X, lease.workspace, out, params)
        # Saved for autograd's check that none was modified in place before backward (the backward pass reads their
        # memory); the output only when its activation's derivative needs it.
        ctx.save_for_backward(X, None if engine.codes[-1] == _act.IDENTITY else out, *params)
        # The NumPy array of the output, not the tensor: ctx -> output -> ctx (its grad_fn) would be a reference
        # cycle, freed only by the garbage collector. An alias of the input, which keeps its storage and shape even
        # if X.data is replaced. The gathered parameters (if any) stay alive for the backward pass. The parameters
        # and their addresses: see backward.
        ctx.state = (engine, lease, X.detach(), out_np, network, gathered, params, [p.data_ptr() for p in params])
        return out

    @staticmethod
    def backward(ctx, G):
        try:
            G.data_ptr()
        except RuntimeError:  # no storage: a batched backward (is_grads_batched, a vectorized jacobian), a transform
            raise RuntimeError(_NO_TRANSFORMS) from None
        if torch.is_grad_enabled():
            raise RuntimeError(
                "fastbp.torch.MLP does not support double backward (backward with create_graph=True, or "
                "differentiating a gradient); use the equivalent torch.nn.Sequential from model.to_sequential()"
            )
        ctx.saved_tensors  # noqa: B018 (raises if an input or a parameter was modified in place since the forward)
        engine, lease, X, out_np, network, gathered, params, ptrs = ctx.state
        # .double(), .to(), share_memory(), p.data = ... give the same parameter objects new storage (and may free the
        # old one, which the backward pass would read): refuse, as the version counters refuse in-place changes. The
        # objects themselves, not saved_tensors, which saved-tensor hooks may replace by copies. A forward pass that
        # gathered the parameters left the backward pass its copy (in ctx.state): reading flat_params, which makes
        # them views of one buffer again, must not break it.
        if gathered is None and [p.data_ptr() for p in params] != ptrs:
            raise RuntimeError(
                "the parameters of fastbp.torch.MLP were given new storage (.double(), .to(), share_memory(), "
                "p.data = ...) between the forward pass and backward(); run the forward pass again"
            )
        if not G.is_contiguous():
            G = G.contiguous()
        return engine.backward(G, X, out_np, lease.workspace, network, ctx.needs_input_grad)


# torch.autograd.Function.apply (Python) binds default arguments and checks for functorch transforms before calling
# the C++ apply: 2 us per call. The bridge supports no functorch transform, so it calls the C++ apply directly.
_apply_dense_stack = super(torch.autograd.Function, _DenseStack).apply


@torch.compiler.disable
def _eager_forward(module, X):
    """``module(X)`` outside of torch.compile's tracing, which cannot follow the compiled passes."""
    return module.forward(X)


def _is_exporting():
    """Whether torch.export is tracing (torch.compiler.is_exporting, where this torch has it)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return is_exporting is not None and is_exporting()


def _param_key(params):
    """What the compiled passes' view of the parameters depends on: each one's address, shape and strides (a
    reshape or a transpose of the same memory, ``p.data = p.data.T`` or a ``functional_call`` with ``W.T``, keeps the
    address). The forward pass checks the parameters again whenever it changes."""
    return [(p.data_ptr(), p.shape, p.stride()) for p in params]


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
        Output activation: "identity" (logits, for ``CrossEntropyLoss`` or ``MSELoss``), "softmax", "exp" (e.g.
        for ``PoissonNLLLoss(log_input=False)``), or any hidden activation.
    dtype : torch.float32 or torch.float64 (or "float32" / "float64"), default torch.float32
    seed : int or None, default 0
        fastbp's initialisation (He normal before relu-type units, Glorot uniform otherwise; zero biases), the
        same values as ``fastbp.MLP(layer_sizes, ..., seed=seed)``; not torch's ``Linear`` initialisation.
    blas_threads : "auto", int or None, default "auto"
        Threads of fastbp's BLAS during this module's forward and backward (the setting is restored after each).
        "auto": while torch uses several threads (``torch.get_num_threads() > 1``), the GEMMs run either on
        fastbp's BLAS limited to 1 thread, so that torch's pool keeps the other cores (two pools on the same cores
        slow each other down by milliseconds per step: see the module source), or on the BLAS that torch links, on
        torch's own pool: the first forward pass of each batch size times both (``CALIBRATION_ROUNDS`` of
        ``fastbp._tuning`` forward passes each, on that batch) and keeps the faster for batch sizes within a
        factor of 2, that thread count and dtype, so results can differ between machines, or runs, in the last
        bits. After ``torch.set_num_threads(1)``, every GEMM on fastbp's BLAS with its own setting
        (``fastbp.set_num_threads``). An int: every GEMM on fastbp's BLAS with that many threads; None: every GEMM
        on fastbp's BLAS with its own setting.

    Notes
    -----
    Parameters of the module: ``W0, b0, W1, b1, ...``; ``W{l}`` is (fan_in, fan_out) (the transpose of torch
    ``Linear.weight``) and ``b{l}`` is (fan_out,), all views into ``flat_params``.

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
        network, for ``CrossEntropyLoss``); ``blas_threads`` as for the class. The dtype is the network's. A frozen
        layer (``net.trainable``) gets ``requires_grad=False`` on its weight and bias. The network's ``l2`` and
        ``precision`` are not part of a module: in torch they are the optimizer's ``weight_decay`` and
        ``torch.autocast``. Networks with layer options (normalization, residual connections, dropout) are refused with
        a ValueError that names them: the bridge computes plain dense layers; build the same network from torch.nn
        modules instead.
        """
        if net._has_options:
            hidden = slice(0, net.n_layers - 1)
            options = ", ".join(
                f"{name}={list(values[hidden])!r}"
                for name, values in (("norm", net.norms), ("residual", net.residuals), ("dropout", net.dropouts))
                if any(values)
            )
            raise ValueError(
                f"fastbp.torch.MLP computes plain dense layers, but this network has layer options ({options}): "
                "build the same network from torch.nn modules (Linear, BatchNorm1d or LayerNorm, the activation, "
                "Dropout, the skip connection; Linear.weight is W.T) and copy the parameters, or train it with "
                "fastbp.Trainer"
            )
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
        for W, b, trainable in zip(model.coefs, model.intercepts, net.trainable, strict=True):
            W.requires_grad_(trainable)
            b.requires_grad_(trainable)
        return model

    def to_fastbp(self, output=None, loss=None):
        """A ``fastbp.MLP`` with this architecture and a copy of the parameters (``output`` defaults to this
        module's; ``loss`` to the canonical loss of the output). A layer whose weight and bias both have
        ``requires_grad=False`` is frozen in the network (fastbp freezes whole layers: a layer with one of the two
        trainable stays trainable)."""
        net = _FastMLP(
            list(self.layer_sizes),
            list(self.activations),
            output=output or self.output,
            loss=loss,
            dtype=self._engine.dtype,
            trainable=[W.requires_grad or b.requires_grad for W, b in zip(self.coefs, self.intercepts, strict=True)],
        )
        net.params[:] = self.flat_params.detach().numpy()
        return net

    def to_sequential(self):
        """The equivalent ``torch.nn.Sequential`` of ``Linear`` and activation modules (weights copied,
        ``Linear.weight = W.T``, frozen where this module's are: ``requires_grad``), in this module's dtype; e.g. for
        export or double backward."""
        layers = []
        codes = self._engine.codes
        for l, (W, b) in enumerate(zip(self.coefs, self.intercepts, strict=True)):
            fan_in, fan_out = W.shape
            linear = torch.nn.Linear(fan_in, fan_out, dtype=W.dtype)
            with torch.no_grad():
                linear.weight.copy_(W.T)
                linear.bias.copy_(b)
            linear.weight.requires_grad_(W.requires_grad)
            linear.bias.requires_grad_(b.requires_grad)
            layers.append(linear)
            if codes[l] != _act.IDENTITY:
                layers.append(_TORCH_ACTIVATIONS[codes[l]]())
        return torch.nn.Sequential(*layers)

    # ------------------------------------------------------------------ parameters
    @property
    def coefs(self):
        """List of the weight parameters ``W[l]``, (fan_in, fan_out) tensors of the module's dtype."""
        return [getattr(self, f"W{l}") for l in range(self._engine.n_layers)]

    @property
    def intercepts(self):
        """List of the bias parameters ``b[l]``, (fan_out,) tensors of the module's dtype."""
        return [getattr(self, f"b{l}") for l in range(self._engine.n_layers)]

    @property
    def flat_params(self):
        """Every parameter as ONE 1-D tensor (n_params,) of the module's dtype, laid out like ``fastbp.MLP.params``
        (W[0] row-major, b[0], W[1], ...); the parameters are views into it, so writing into it (under
        ``torch.no_grad()``, e.g. ``model.flat_params.copy_(theta)``) sets them."""
        self._repack()
        return self._flat

    @property
    def n_params(self):
        """The number of parameters (int), the length of ``flat_params``."""
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
        missing = [name for name, p in zip(names, params, strict=True) if p is None]
        if missing and names == expected:
            raise TypeError(
                f"parameter {missing[0]} of fastbp.torch.MLP is None: the compiled passes need every weight and bias "
                "(to freeze one, set its requires_grad to False)"
            )
        if names != expected:
            raise RuntimeError(
                f"the parameters of fastbp.torch.MLP must be {expected}, found {names}: its compiled passes take "
                "exactly its own weights and biases (no parametrization, pruning or added parameter); use the "
                "equivalent torch.nn.Sequential from model.to_sequential() for those"
            )
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1 or next(iter(dtypes)) not in _NUMPY_DTYPES:
            raise TypeError(
                f"fastbp.torch.MLP computes in float32 or float64, its parameters are {sorted(map(str, dtypes))}"
            )
        if any(p.device.type != "cpu" for p in params):
            raise RuntimeError("fastbp.torch.MLP runs on the CPU only; its parameters are on another device")
        for p, shape in zip(params, engine.shapes, strict=True):
            if tuple(p.shape) != shape:
                raise ShapeError(f"a parameter of fastbp.torch.MLP has shape {tuple(p.shape)}, expected {shape}")

    def _use_params(self, params):
        """Point the kernels at the current parameter tensors (checked), refreshed whenever a parameter's storage,
        shape or strides change (the forward pass compares ``_param_key``). Parameters are not modified, so
        ``torch.func.functional_call`` works: parameters that are not one flat buffer are gathered by each forward
        pass."""
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
        if not in_place and engine.flat_entry is not None:
            # Already views at their places in one buffer of their own (vector_to_parameters): adopt that buffer, so
            # that their storage, which a pending backward pass reads, stays theirs.
            first = params[0]
            flat = torch.empty(0, dtype=first.dtype)
            flat.set_(first.untyped_storage(), first.storage_offset(), (engine.n_params,))
            self._flat = flat
        elif not in_place:
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
        """``_repack`` when the parameters are CPU tensors of a dtype the kernels compute in; otherwise leave them
        (a module may be moved to another device or dtype, and back) and let the next forward raise, naming it."""
        params = tuple(self._parameters.values())
        if all(p is not None and p.device.type == "cpu" and p.dtype in _NUMPY_DTYPES for p in params):
            self._repack()
        else:
            self._engine.key = None

    def _load_from_state_dict(self, *args, **kwargs):
        # load_state_dict copies into the parameters in place, or with assign=True replaces them: gather them again.
        super()._load_from_state_dict(*args, **kwargs)
        self._repack()

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first: refused here, rather than by TorchScript's compiler on forward's code
        raise RuntimeError(_NO_EXPORT)

    # ------------------------------------------------------------------ compute
    def forward(self, X):
        """Network output for X: (*, n_in) tensor -> (*, n_out) tensor of the module's dtype."""
        if torch.compiler.is_compiling():  # torch.compile: the compiled passes run as one opaque call (a graph break)
            if _is_exporting():  # torch.export: no graph break to fall back on
                raise RuntimeError(_NO_EXPORT)
            return _eager_forward(self, X)
        if torch._C._get_tracing_state() is not None:  # torch.jit.trace
            raise RuntimeError(_NO_EXPORT)
        if torch._C._are_functorch_transforms_active():
            raise RuntimeError(_NO_TRANSFORMS)
        engine = self._engine
        params = tuple(self._parameters.values())
        try:
            key = _param_key(params)
        except AttributeError:  # a parameter set to None: the check names it
            self._check_params(params)
            raise
        if key != engine.key:
            self._use_params(params)
        if not isinstance(X, torch.Tensor):
            raise TypeError(f"X must be a torch.Tensor, got {type(X).__name__}")
        if X.layout != torch.strided:  # sparse input: dense, as the compiled passes read it (differentiably)
            X = X.to_dense()
        if X.dtype != engine.torch_dtype:
            if X.is_complex():
                raise TypeError(f"X must be real, got {X.dtype}")
            X = X.to(engine.torch_dtype)
        n_in = engine.sizes[0]
        if X.dim() != 2 or X.shape[1] != n_in:
            if X.dim() == 0 or X.shape[-1] != n_in:
                raise ShapeError(f"X must have shape (*, {n_in}), got {tuple(X.shape)}")
            lead = X.shape[:-1]
            return self.forward(X.reshape(-1, n_in)).reshape(*lead, engine.sizes[-1])
        if not X.is_cpu:
            raise RuntimeError(f"X must be on the CPU, got device {X.device}")
        if not X.is_contiguous():
            X = X.contiguous()
        if torch.is_grad_enabled():
            return _apply_dense_stack(X, engine, *params)
        # Inference: no autograd node, and the workspace goes back to the pool at once.
        n = X.shape[0]
        lease = engine.acquire(n)
        out = torch.from_numpy(np.empty((n, engine.sizes[-1]), dtype=engine.dtype))
        engine.forward(X, lease.workspace, out, params)
        return out

    def extra_repr(self):
        return (
            f"layer_sizes={list(self.layer_sizes)}, activation={list(self.activations)}, output={self.output!r}, "
            f"dtype={self.dtype}"
        )
