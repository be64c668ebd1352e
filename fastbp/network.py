"""The network: architecture, flat parameter buffer, workspace, and the validated entry points to the kernels."""

import itertools
import threading

import numpy as np

from . import _onednn, _tuning
from . import _validation as v
from .kernels import activations as _act
from .kernels import checked as _checked
from .kernels import layout as _lay
from .kernels import loss as _loss
from .kernels.drivers import _predict_entry, _value_and_grad_entry
from .kernels.gemm import BLAS_GEMM, BLAS_GEMM_BATCH

#: Largest network accepted (2^34 parameters: 64 GiB in float32), so that absurd sizes fail with a ValueError
#: naming layer_sizes rather than a MemoryError or an integer overflow deep inside NumPy.
MAX_PARAMS = 2**34

_CANONICAL_LOSS = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "exp": "poisson"}


#: matmul_precision names -> precision (torch's "highest" and "medium", JAX's "bfloat16" and "float32").
_PRECISIONS = {"float32": "float32", "highest": "float32", "bfloat16": "bfloat16", "medium": "bfloat16"}


def workspace_entry(work, twins):
    """The workspace as the compiled entry points take it (kernels/boundary.py): ``work`` = (acts, delta_a,
    delta_b, delta_c, aux, sums) arrays of the dtype (sums float64; delta_c, aux and sums may be empty for networks
    without layer options), ``twins`` = (x16, acts16, delta_a16, delta_b16) uint16 arrays, empty in the dtype's own
    precision."""
    acts, delta_a, delta_b, delta_c, aux, sums = work
    x16, acts16, delta_a16, delta_b16 = twins

    def address(a):
        return a.ctypes.data if a.size else 0

    return (
        acts.ctypes.data,
        acts.size,
        delta_a.ctypes.data,
        delta_b.ctypes.data,
        address(delta_c),
        delta_a.size,
        address(aux),
        aux.size,
        address(sums),
        sums.size,
        address(x16),
        x16.size,
        address(acts16),
        address(delta_a16),
        address(delta_b16),
    )


_INF = float("inf")
_NDARRAY = np.ndarray

_NORMS = {"batch": _lay.BATCH_NORM, "layer": _lay.LAYER_NORM}
_NORM_NAMES = {_lay.NO_NORM: None, _lay.BATCH_NORM: "batch", _lay.LAYER_NORM: "layer"}
_lay_name_batch = "batch"


def _per_hidden_layer(value, name, sizes, scalar_types, what, default):
    """``value`` for each hidden layer, as (name of each value in messages, value) pairs: the same for all (named
    ``name``), or a sequence of one per hidden layer (``name[i]``). ``what``: the accepted values, for the message
    of a wrong type; a value other than ``default`` for a network without hidden layers is refused."""
    n_hidden = len(sizes) - 2
    if isinstance(value, np.ndarray) and value.ndim == 0:  # a NumPy scalar in an array: its value
        value = value.item()
    if isinstance(value, scalar_types):
        if n_hidden == 0 and value is not default and value != default:
            raise ValueError(f"{name}={value!r} applies to hidden layers, and layer_sizes {list(sizes)} has none")
        return [(name, value)] * n_hidden
    if not isinstance(value, (list, tuple, np.ndarray)):
        got = f"{type(value).__name__} {value!r}"
        raise TypeError(f"{name} must be {what}, or a list of one per hidden layer; got {got}")
    if len(value) != n_hidden:
        raise ValueError(f"{name} has {len(value)} values for {n_hidden} hidden layers")
    return [(f"{name}[{i}]", item) for i, item in enumerate(value)]


def param_count(sizes, norms):
    """The number of parameters of layers ``sizes`` (n_in, ..., n_out) with ``norms`` (one per layer, None or a
    norm's name): W and b of each layer, and gamma and beta of each normalized one."""
    return sum(a * b + b for a, b in itertools.pairwise(sizes)) + 2 * sum(
        w for w, k in zip(sizes[1:], norms, strict=True) if k
    )


def _layer_options(norm, residual, dropout, sizes):
    """(norm codes, residual flags, dropout rates) of the layers (the output layer's: none), checked."""
    norms = []
    names = "None, 'batch' or 'layer'"
    for name, k in _per_hidden_layer(norm, "norm", sizes, (str, np.str_, type(None)), names, None):
        if k is not None and not isinstance(k, (str, np.str_)):
            raise TypeError(f"{name} must be {names}; got {type(k).__name__} {k!r}")
        norms.append(_lay.NO_NORM if k is None else _NORMS[_check_name(str(k), name, _NORMS)])
    residuals = []
    flags = (bool, np.bool_, int, np.integer)
    for i, (name, r) in enumerate(_per_hidden_layer(residual, "residual", sizes, flags, "a bool", False)):
        r = v.check_bool(r, name)
        if r and sizes[i] != sizes[i + 1]:
            hint = " (a list of one flag per hidden layer sets it where the width is kept)"
            hint = hint if name == "residual" else ""
            raise ValueError(
                f"{name}: a residual connection adds the layer's input to its output, so hidden layer {i} (from 0) "
                f"must keep its width, but it maps {sizes[i]} to {sizes[i + 1]} units{hint}"
            )
        residuals.append(r)
    rates = []
    floats = (int, float, np.integer, np.floating)
    for name, p in _per_hidden_layer(dropout, "dropout", sizes, floats, "a rate in [0, 1)", 0.0):
        p = v.check_float(p, name)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p}")
        rates.append(p)
    return [*norms, _lay.NO_NORM], [*residuals, False], [*rates, 0.0]


def _aux_size(row, n):
    """Values of the auxiliary workspace a layer (its layout row) uses for n rows (kernels/layout.py _aux_size)."""
    m = int(row[_lay.FAN_OUT])
    size = n * m if (row[_lay.RESIDUAL] or row[_lay.DROPOUT]) else 0
    if row[_lay.NORM] == _lay.BATCH_NORM:
        size += n * m + 2 * m
    elif row[_lay.NORM] == _lay.LAYER_NORM:
        size += n * m + 2 * n
    return size


def _check_two_rows(n, name="X", batch_size=None):
    """Raise a ValueError unless batch norm in training gets at least two rows (a variance), as PyTorch's
    BatchNorm1d: n rows as one batch, or, with ``batch_size``, in mini-batches of that size, whose smallest (the
    last) counts. The error's ``batch_split`` is (rows, batch size) when a batch size would help, else None (the
    command line then names --batch-size)."""
    smallest = n if batch_size is None else 1 if n % batch_size == 1 else min(batch_size, n)
    if smallest < 2:
        message = f"{name} has {smallest} row, but batch norm in training needs batches of at least 2 rows (a batch "
        message += "variance)"
        split = None
        if batch_size is not None and n >= 2:  # no batch size helps one row
            message += f" ({n} rows in batches of {batch_size}): choose a batch_size that leaves no batch of 1 row"
            split = (n, batch_size)
        err = ValueError(message)
        err.batch_split = split
        raise err


class _Views(list):
    """A network's per-layer views (``net.coefs`` and the like): a list whose entries are written into, never replaced.
    ``views[l] = array`` copies the array into layer l's view (of the same shape; the dtype cast as NumPy casts);
    adding or removing entries is a TypeError. Copies (``list(views)``, ``copy.copy``, pickle) are plain lists."""

    __slots__ = ("_name",)

    def __init__(self, name, views):
        super().__init__(views)
        self._name = name

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            raise TypeError(f"{self._name}[...] takes one layer's index, not a slice: assign the layers one by one")
        view = list.__getitem__(self, index)
        if view is None:
            raise TypeError(f"{self._name}[{index}] is None: that layer has none to set")
        if value is None:
            raise TypeError(f"{self._name}[{index}] is layer {index}'s view and cannot be None: assign an array")
        value = np.asarray(value)
        if value.shape != view.shape:
            given = "a scalar" if value.ndim == 0 else f"an array of shape {value.shape}"
            hint = f" (to fill the view: {self._name}[{index}][...] = value)" if value.ndim == 0 else ""
            raise ValueError(f"{self._name}[{index}] has shape {view.shape}, got {given}{hint}")
        view[...] = value

    def _fixed(self, *args, **kwargs):
        raise TypeError(
            f"{self._name} holds one view per layer into the network's parameters: its entries can be written into "
            f"({self._name}[l] = array), not added or removed"
        )

    append = extend = insert = pop = remove = clear = sort = reverse = __delitem__ = __iadd__ = __imul__ = _fixed

    def __reduce__(self):
        return list, (list(self),)


def _views_attribute(name, doc):
    """A read-only attribute of ``MLP`` for its per-layer views ``name`` (a ``_Views``)."""

    def get(self):
        return self._views[name]

    def set_(self, value):
        raise AttributeError(
            f"{name} cannot be replaced: its entries are views into the network's arrays; write into them "
            f"(net.{name}[l] = array copies into layer l's)"
        )

    return property(get, set_, doc=doc)


def _check_name(value, name, choices):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {sorted(choices)}; got {type(value).__name__} {value!r}")
    key = value.lower()
    if key not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")
    return key


def _resolve_output_and_loss(output, loss, n_out):
    output = _act.NAMES[_act.ACTIVATIONS[_check_name(output, "output", _act.ACTIVATIONS)]]
    if loss is None:
        loss = _CANONICAL_LOSS.get(output, "squared_error")
    loss = _check_name(loss, "loss", _loss.LOSSES)
    code = _loss.LOSSES[loss]
    clipped, base = code & _loss.CLIPPED, code & ~_loss.CLIPPED
    if base == _loss.CROSS_ENTROPY and output == "sigmoid":
        base = _loss.BINARY_CROSS_ENTROPY  # cross-entropy of independent sigmoid outputs
    if base == _loss.CROSS_ENTROPY and output != "softmax":
        raise ValueError(f"loss {loss!r} needs output 'softmax' or 'sigmoid', got output {output!r}")
    if base == _loss.BINARY_CROSS_ENTROPY and output != "sigmoid":
        raise ValueError(f"loss {loss!r} needs output 'sigmoid', got output {output!r}")
    code = base | clipped
    if code == _loss.POISSON and output != "exp":
        raise ValueError(f"loss 'poisson' needs output 'exp', got output {output!r}")
    if output == "softmax" and n_out < 2:
        raise ValueError("output 'softmax' needs at least 2 output units; use output='sigmoid' for one")
    names = {
        _loss.CROSS_ENTROPY: "cross_entropy",
        _loss.CROSS_ENTROPY | _loss.CLIPPED: "log_loss",
        _loss.BINARY_CROSS_ENTROPY: "binary_cross_entropy",
        _loss.BINARY_CROSS_ENTROPY | _loss.CLIPPED: "binary_log_loss",
        _loss.SQUARED_ERROR: "squared_error",
        _loss.POISSON: "poisson",
    }
    return output, names[code], code


class MLP:
    """A dense feed-forward network whose parameters live in one flat buffer.

    A hidden layer computes ``Z = A[l-1] @ W + b``, ``N = norm(Z)``, ``H = f(N)``, dropout on H, then ``A[l] =
    A[l-1] + H`` with a residual connection, else ``A[l] = H``. The output layer has none of these.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_in, h1, ..., n_out]``, at least two positive sizes.
    activation : str or sequence of str, default "relu"
        Hidden activation, one name for all hidden layers or one per hidden layer: "identity", "sigmoid"
        (alias "logistic"), "tanh", "relu", "leaky_relu" (slope 0.01).
    output : str, default "softmax"
        Output activation: "softmax", "sigmoid", "identity", "exp", or any hidden activation.
    loss : str or None, default None
        "cross_entropy" (softmax; with a sigmoid output it is the binary cross-entropy), "binary_cross_entropy"
        (sigmoid), "squared_error" (``1/2 ||a - y||^2`` per sample, any output), or "poisson" (exp: the half
        Poisson deviance ``sum_j y log(y / a) - y + a`` per sample, scikit-learn's ``loss="poisson"``, for targets
        y >= 0; a negative target is not refused, its loss is NaN, as in scikit-learn). "log_loss" (softmax;
        sigmoid: "binary_log_loss") is the cross-entropy whose value is computed as scikit-learn's log-loss, from
        the probabilities clipped to ``[eps, 1 - eps]`` (eps: the dtype's machine epsilon), so a confidently wrong
        row adds at most ``-log(eps)``; its gradient is the cross-entropy's, as scikit-learn's (``fastbp.sklearn``
        trains with it). None picks the canonical loss of the output:
        cross-entropy for softmax and sigmoid, Poisson for exp, squared error otherwise.
    l2 : float, default 0.0
        Penalty ``l2 / 2 * sum(W**2)`` over the weights (not the biases), added to the mean loss.
    dtype : "float32" or "float64", default "float32"
    seed : int or None, default 0
        Seed of the initialisation (He normal before relu/leaky_relu, Glorot uniform otherwise; zero biases).
        Equal seeds give bit-identical parameters; None draws fresh entropy. Any non-negative int (a
        ``SeedSequence``'s 128-bit entropy, say); the dropout masks take it modulo 2**63.
    trainable : sequence of bool or None
        Per layer; a frozen layer's parameters get no gradient (its weight GEMM is skipped).
    matmul_precision : "float32" or "bfloat16", default "float32"
        Precision of the matrix products (the conventions of ``torch.set_float32_matmul_precision`` and
        ``jax.default_matmul_precision``; "highest" and "medium" are accepted for them). "bfloat16" (float32
        networks only): every GEMM of the forward and backward pass takes its operands rounded to bfloat16 (to
        nearest even) and accumulates in float32, about twice the float32 rate on CPUs with AVX512_BF16 or AMX;
        parameters, gradients, optimizer state, the loss and all elementwise work stay float32. Needs oneDNN (the
        ``bf16`` extra) and such a CPU, else a RuntimeError says what is missing.
    norm : None, "batch" or "layer", or a sequence of them (one per hidden layer), default None
        Normalization of the hidden layers' pre-activations: batch norm (PyTorch's ``BatchNorm1d``: batch statistics
        in training, running statistics with momentum 0.1 in evaluation) or layer norm (``torch.nn.LayerNorm`` over
        the features); eps 1e-5, a trainable scale gamma (initialised to 1) and shift beta (0), never decayed.
    residual : bool or sequence of bool, default False
        A residual connection per hidden layer, ``A[l] = A[l-1] + H``: the layer must keep its width.
    dropout : float or sequence of float, default 0.0
        Inverted dropout rate of each hidden layer's output, in training (``fit``, ``train_step``) only; the mask comes
        from a counter-based hash of (seed, step, layer, row, unit), so a run is reproducible for any thread count.
        The rate is applied as a multiple of 2^-32.

    Attributes
    ----------
    layer_sizes, activations, output, loss, l2, seed : as given (validated; activations a tuple per hidden layer)
    norms, residuals, dropouts : tuples, one entry per layer (the output layer's: None, False, 0.0)
    dtype : numpy.dtype
        float32 or float64.
    n_params : int
        The number of parameters (the length of ``params``).
    extras : dict of str to ndarray
        Arrays saved with the network's checkpoints (e.g. the input standardization of the command line).
    params : ndarray (n_params,) of dtype
        Every parameter, layer by layer: W[l] row-major (fan_in, fan_out), then b[l], then gamma[l] and beta[l] of a
        normalized layer.
    coefs, intercepts : lists of views into ``params``
        ``coefs[l]`` is (fan_in, fan_out), ``intercepts[l]`` is (fan_out,); ``Z = A_prev @ W + b``. These lists and
        the four below are fixed: ``net.coefs[l] = W`` copies W into the view (same shape), and they cannot be
        replaced, nor entries added or removed.
    norm_scales, norm_shifts : lists, one per hidden layer
        gamma and beta of a normalized layer (views into ``params``), None for the others.
    buffers : ndarray of dtype
        The running statistics of the batch-norm layers; ``running_means[l]`` and ``running_vars[l]`` are views into
        it (None for the other hidden layers).
    layout : ndarray (n_layers, 12) of int64
        fan_in, fan_out, offset of W, offset of b, activation code, trainable flag, normalization, residual flag,
        dropout threshold, offset of gamma, offset of the running statistics, end of the layer's parameters.

    The workspace is owned by the network: calls on one network are serialised by a lock.
    """

    def __init__(
        self,
        layer_sizes,
        activation="relu",
        output="softmax",
        loss=None,
        l2=0.0,
        dtype="float32",
        seed=0,
        trainable=None,
        matmul_precision="float32",
        norm=None,
        residual=False,
        dropout=0.0,
    ):
        if not isinstance(layer_sizes, (list, tuple, np.ndarray)):
            raise TypeError(f"layer_sizes must be a list of integers, got {type(layer_sizes).__name__} {layer_sizes!r}")
        sizes = tuple(v.check_int(s, f"layer_sizes[{i}]", minimum=1) for i, s in enumerate(layer_sizes))
        if len(sizes) < 2:
            raise ValueError(f"layer_sizes needs at least an input and an output size, got {list(sizes)}")
        n_layers = len(sizes) - 1
        norms, residuals, rates = _layer_options(norm, residual, dropout, sizes)
        n_params = param_count(sizes, norms)
        if n_params > MAX_PARAMS:
            raise ValueError(
                f"layer_sizes {list(sizes)} need {n_params} parameters, more than fastbp supports ({MAX_PARAMS})"
            )
        if isinstance(activation, (str, np.str_)):
            _check_name(str(activation), "activation", _act.HIDDEN)  # checked even when there is no hidden layer
            hidden = [str(activation)] * (n_layers - 1)
        elif isinstance(activation, (list, tuple, np.ndarray)):
            hidden = [str(a) if isinstance(a, np.str_) else a for a in activation]
        else:
            raise TypeError(f"activation must be a name or a list of names, got {type(activation).__name__}")
        if len(hidden) != n_layers - 1:
            raise ValueError(f"activation has {len(hidden)} names for {n_layers - 1} hidden layers")
        hidden = [_act.NAMES[_act.ACTIVATIONS[_check_name(a, "activation", _act.HIDDEN)]] for a in hidden]
        self.output, self.loss, self._loss_code = _resolve_output_and_loss(output, loss, sizes[-1])
        self.l2 = l2
        self.dtype = v.check_dtype(dtype)
        precision = _PRECISIONS[_check_name(matmul_precision, "matmul_precision", _PRECISIONS)]
        bf16 = 0
        if precision == "bfloat16":
            if self.dtype != np.float32:
                raise ValueError(
                    f"matmul_precision='bfloat16' needs dtype='float32' (float32 master weights), got {self.dtype.name}"
                )
            bf16 = _onednn.bf16_gemm()  # raises, saying why, where bfloat16 is not available
        if seed is not None:
            seed = v.check_int(seed, "seed", minimum=0)
        if trainable is None:
            trainable = [True] * n_layers
        if not isinstance(trainable, (list, tuple, np.ndarray)):
            raise TypeError(f"trainable must be a list of {n_layers} booleans, got {type(trainable).__name__}")
        trainable = [v.check_bool(t, f"trainable[{i}]") for i, t in enumerate(trainable)]
        if len(trainable) != n_layers:
            raise ValueError(f"trainable has {len(trainable)} flags for {n_layers} layers")

        self.layer_sizes = sizes
        self._n_out = sizes[-1]  # predict reads it per call
        self.activations = tuple(hidden)
        self.seed = seed
        self.norms = tuple(_NORM_NAMES[k] for k in norms)
        self.residuals = tuple(residuals)
        # a rate of at most 2^-33 rounds to threshold 0 (below): no unit is dropped, so the network has no dropout
        self.dropouts = tuple(0.0 if round(r * 2**32) == 0 else r for r in rates)
        # the seed of the dropout masks: the initialisation's, or fresh entropy as it draws, in the int64 range the
        # compiled code takes (NumPy's generators take any size of seed, such as a SeedSequence's 128-bit entropy)
        self.dropout_seed = (seed if seed is not None else int(np.random.SeedSequence().entropy)) % 2**63
        codes = [_act.ACTIVATIONS[a] for a in hidden] + [_act.ACTIVATIONS[self.output]]
        layout = np.zeros((n_layers, _lay.N_COLUMNS), dtype=np.int64)
        offset = stats = 0
        for l in range(n_layers):
            fan_in, fan_out = sizes[l], sizes[l + 1]
            k = norms[l] if l < n_layers - 1 else _lay.NO_NORM
            gamma = offset + fan_in * fan_out + fan_out
            end = gamma + (2 * fan_out if k else 0)
            # at most 2^32 - 1: a rate within 2^-33 of 1 would round to 2^32, which the kernels' uint32 cut and
            # their scale 2^32 / (2^32 - threshold) cannot hold (it keeps 1 unit in 2^32 instead)
            threshold = min(round(rates[l] * 2**32), 2**32 - 1) if l < n_layers - 1 else 0
            residual_l = int(residuals[l]) if l < n_layers - 1 else 0
            layout[l, : _lay.NORM] = (fan_in, fan_out, offset, offset + fan_in * fan_out, codes[l], trainable[l])
            layout[l, _lay.NORM :] = (k, residual_l, threshold, gamma if k else 0, stats, end)
            stats += 2 * fan_out if k == _lay.BATCH_NORM else 0
            offset = end
        self._layout = layout
        self.n_params = offset
        self._params = np.zeros(offset, dtype=self.dtype)
        # running means (0) then variances (1) of each batch-norm layer
        # followed by as many values where the epoch loop keeps them before each step (kernels/epoch.py), to put them
        # back when the step diverges
        self._stats_store = np.zeros(2 * stats, dtype=self.dtype)
        self._buffers = self._stats_store[:stats]
        self._matmul_precision = precision
        self._gemm = (BLAS_GEMM[self.dtype], bf16)
        # The weights' bfloat16 twin, which the GEMMs read in bfloat16 precision (kernels/gemm.py); empty otherwise.
        self._params16 = np.zeros(offset if bf16 else 0, dtype=np.uint16)
        coefs, intercepts = self.unflatten(self._params)
        scales, shifts = self._norm_views(self._params)
        means, variances = [], []
        for l in range(n_layers - 1):
            if layout[l, _lay.NORM] == _lay.BATCH_NORM:
                s, m = int(layout[l, _lay.STATS_OFFSET]), sizes[l + 1]
                means.append(self._buffers[s : s + m])
                variances.append(self._buffers[s + m : s + 2 * m])
                variances[-1][...] = 1.0
            else:
                means.append(None)
                variances.append(None)
        self._views = {
            name: _Views(name, views)
            for name, views in (
                ("coefs", coefs),
                ("intercepts", intercepts),
                ("norm_scales", scales),
                ("norm_shifts", shifts),
                ("running_means", means),
                ("running_vars", variances),
            )
        }
        self._init_params(seed)

        self.extras = {}  # arrays kept with the checkpoint (e.g. input standardisation)
        self._lock = threading.Lock()
        # selects the compiled specialization of the entry points: the plain tier, or the full tier for layer options
        # and bfloat16 precision, whose code a plain network never compiles (kernels/boundary.py)
        self._marker = (self.dtype.type(0),) if (self._has_options or bf16) else self.dtype.type(0)
        self._entries = _checked.entries(self._marker)  # the checked entry points, called without type dispatch
        self._capacity = 0
        self._acts = self._delta_a = self._delta_b = self._delta_c = self._aux = self._sums = None  # the workspace
        self._twins = self._entry_workspace = None
        # Addresses of the buffers that live as long as the network (see kernels/boundary.py).
        self._entry_network = self._entry_params(self._params)
        # value_and_grad: batch statistics, no dropout, running statistics untouched; predict: evaluation
        self._run_training, self._run_evaluation = self._run(True), self._run(False)
        self._table, self._p_table, self._fast = self._checked_table()
        # What a copy rebuilds (__getstate__); the attributes of a subclass, set after this constructor, are copied.
        self._own_attributes = frozenset(self.__dict__) | {"_own_attributes"}

    @property
    def layout(self):
        """(n_layers, 12) int64, read-only: fan_in, fan_out, offset of W, offset of b, activation code, trainable,
        and the layer options' columns (see the class docstring)."""
        view = self._layout.view()
        view.flags.writeable = False
        return view

    coefs = _views_attribute("coefs", "Per layer, W (fan_in, fan_out): views into ``params`` (``Z = A_prev @ W + b``).")
    intercepts = _views_attribute("intercepts", "Per layer, b (fan_out,): views into ``params``.")
    norm_scales = _views_attribute("norm_scales", "Per hidden layer, gamma of a normalized layer (a view), or None.")
    norm_shifts = _views_attribute("norm_shifts", "Per hidden layer, beta of a normalized layer (a view), or None.")
    running_means = _views_attribute(
        "running_means", "Per hidden layer, a batch-norm layer's running means (a view into ``buffers``), or None."
    )
    running_vars = _views_attribute(
        "running_vars", "Per hidden layer, a batch-norm layer's running variances (a view into ``buffers``), or None."
    )

    @property
    def buffers(self):
        """The running statistics of the batch-norm layers, (n_buffers,) of ``dtype``: per such layer its running
        means, then its running variances (``running_means[l]``, ``running_vars[l]``). Write into it to set them."""
        return self._buffers

    def _norm_views(self, flat):
        """Per hidden layer, (gamma, beta) views into a flat buffer laid out like ``params`` (None without norm)."""
        scales, shifts = [], []
        for l in range(self.n_layers - 1):
            if self._layout[l, _lay.NORM]:
                g, m = int(self._layout[l, _lay.GAMMA_OFFSET]), int(self._layout[l, _lay.FAN_OUT])
                scales.append(flat[g : g + m])
                shifts.append(flat[g + m : g + 2 * m])
            else:
                scales.append(None)
                shifts.append(None)
        return scales, shifts

    @property
    def matmul_precision(self):
        """Precision of the matrix products, "float32" or "bfloat16" (fixed at construction)."""
        return self._matmul_precision

    @property
    def params(self):
        """All parameters, (n_params,) of ``dtype``. Write into it (``net.params[:] = theta``); it cannot be
        rebound, since ``coefs``, ``intercepts`` and the compiled entry points all refer to this one buffer."""
        return self._params

    # ------------------------------------------------------------------ structure
    @property
    def n_layers(self):
        """Number of weight layers (hidden layers + 1)."""
        return self._layout.shape[0]

    @property
    def n_in(self):
        """Input width, ``layer_sizes[0]`` (int)."""
        return self.layer_sizes[0]

    @property
    def l2(self):
        """The L2 penalty's coefficient: the loss adds ``l2 / 2 * sum(W**2)`` over the weights (float >= 0)."""
        return self._l2

    @l2.setter
    def l2(self, value):
        self._l2 = v.check_float(value, "l2", minimum=0.0)  # a float: an int would compile new specializations

    @property
    def n_out(self):
        """Output width, ``layer_sizes[-1]`` (int)."""
        return self.layer_sizes[-1]

    @property
    def trainable(self):
        """Tuple of per-layer trainable flags."""
        return tuple(bool(t) for t in self._layout[:, _lay.TRAINABLE])

    def set_trainable(self, layer, flag=True):
        """Freeze (``flag=False``) or unfreeze layer ``layer`` (an int, negative counts from the end)."""
        layer = v.check_int(layer, "layer")
        if not -self.n_layers <= layer < self.n_layers:
            raise ValueError(f"layer must be in [{-self.n_layers}, {self.n_layers - 1}], got {layer}")
        flag = v.check_bool(flag, "flag")
        with self._lock:  # compiled calls read the layout through its address
            self._layout[layer, _lay.TRAINABLE] = int(flag)

    def layer_range(self, layer):
        """``(start, stop)`` of layer ``layer``'s parameters (W, b, then gamma and beta of a normalized layer) in
        ``params``."""
        return int(self._layout[layer, _lay.W_OFFSET]), int(self._layout[layer, _lay.PARAM_END])

    def unflatten(self, flat):
        """Per-layer ``(W list, b list)`` views into ``flat``, an (n_params,) array laid out like ``params``:
        ``W[l]`` (fan_in, fan_out) and ``b[l]`` (fan_out,), of flat's dtype (gamma and beta are not included)."""
        Ws, bs = [], []
        for fan_in, fan_out, w, b in self._layout[:, :4]:
            Ws.append(flat[w : w + fan_in * fan_out].reshape(fan_in, fan_out))
            bs.append(flat[b : b + fan_out])
        return Ws, bs

    def _init_params(self, seed):
        rng = np.random.default_rng(seed)
        for W, b, code in zip(self.coefs, self.intercepts, self._layout[:, _lay.ACTIVATION], strict=True):
            fan_in, fan_out = W.shape
            if code in (_act.RELU, _act.LEAKY_RELU):
                W[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=W.shape)
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                W[...] = rng.uniform(-limit, limit, size=W.shape)
            b[...] = 0.0
        for gamma, beta in zip(self.norm_scales, self.norm_shifts, strict=True):
            if gamma is not None:
                gamma[...] = 1.0
                beta[...] = 0.0

    def __getstate__(self):
        # The lock, the workspace and the raw addresses the entry points use belong to this object only: a copy
        # (copy.deepcopy, pickle, joblib) is rebuilt from the constructor arguments and the parameter values.
        return {
            "args": (
                list(self.layer_sizes),
                list(self.activations),
                self.output,
                self.loss,
                self.l2,
                self.dtype.name,
                self.seed,
                list(self.trainable),
                self.matmul_precision,
                list(self.norms[:-1]),
                list(self.residuals[:-1]),
                list(self.dropouts[:-1]),
            ),
            "params": self._params.copy(),
            "buffers": self._buffers.copy(),
            "dropout_seed": self.dropout_seed,
            "extras": dict(self.extras),
            "attributes": {k: val for k, val in self.__dict__.items() if k not in self._own_attributes},
        }

    def __setstate__(self, state):
        MLP.__init__(self, *state["args"])  # not a subclass's constructor, whose arguments may differ
        self._params[:] = state["params"]
        self._buffers[:] = state["buffers"]
        self.dropout_seed = state["dropout_seed"]
        self.extras = state["extras"]
        self.__dict__.update(state.get("attributes", {}))

    @property
    def dropout_seed(self):
        """The seed of the dropout masks (an int in [0, 2**63)): the initialisation's ``seed`` by default. Setting
        it takes a non-negative integer, reduced modulo 2**63 as the constructor reduces its seed."""
        return self._dropout_seed

    @dropout_seed.setter
    def dropout_seed(self, value):
        self._dropout_seed = v.check_int(value, "dropout_seed", minimum=0) % 2**63

    @property
    def _has_options(self):
        """Whether a hidden layer has normalization, a residual connection or dropout."""
        return any(self.norms) or any(self.residuals) or any(self.dropouts)

    def __repr__(self):
        return (
            f"MLP({list(self.layer_sizes)}, activation={list(self.activations)!r}, output={self.output!r}, "
            f"loss={self.loss!r}, l2={self.l2}, dtype={self.dtype.name!r}"
            + (f", matmul_precision={self.matmul_precision!r}" if self._gemm[1] else "")
            + (f", norm={list(self.norms[:-1])!r}" if any(self.norms) else "")
            + (f", residual={list(self.residuals[:-1])!r}" if any(self.residuals) else "")
            + (f", dropout={list(self.dropouts[:-1])!r}" if any(self.dropouts) else "")
            + ")"
        )

    def _entry_params(self, flat):
        """The network as the compiled entry points take it (kernels/boundary.py), with the parameters read from
        ``flat`` (params or a C-contiguous array of the same size and dtype, such as a trainer's spare copy), the
        GEMMs (the BLAS's, and oneDNN's bfloat16 GEMM in bfloat16 precision) and the weights' bfloat16 twin."""
        p16 = self._params16.ctypes.data if self._params16.size else 0
        store = self._stats_store
        p_buffers = store.ctypes.data if store.size else 0
        network = (flat.ctypes.data, self.n_params, self._layout.ctypes.data, self.n_layers)
        blas, bf16 = self._gemm
        return (*network, blas, BLAS_GEMM_BATCH[self.dtype], bf16, p16, p_buffers, store.size)

    def _checked_table(self):
        """(table, its address, whether the checked entry points can be used): the network's table of the checked
        entry points (kernels/checked.py), with everything but the workspace, which ``_reserve`` writes. They cannot
        be used when the array object's layout is unknown (``_validation.ARRAY_OBJECT``) or the dropout seed does not
        fit in an int64."""
        table = np.zeros(_checked.TABLE_SIZE, dtype=np.int64)
        seed = self._run_training[3]
        fast = v.ARRAY_OBJECT is not None and 0 <= seed < 2**63
        if fast:
            table[_checked.NETWORK : _checked.NETWORK + len(self._entry_network)] = self._entry_network
            table[_checked.CHUNK_ROWS] = _tuning.CHUNK_ROWS
            table[_checked.N_IN], table[_checked.N_OUT], table[_checked.LOSS] = self.n_in, self.n_out, self._loss_code
            table[_checked.LABELS] = self.output == "softmax"
            table[_checked.TWO_ROWS] = _lay_name_batch in self.norms
            table[_checked.DROPOUT] = any(self.dropouts)
            table[_checked.SEED] = seed
            table[_checked.DESCR], table[_checked.FLOAT64] = id(self.dtype), id(np.dtype(np.float64))
            table[_checked.OBJECT : _checked.OBJECT + len(v.ARRAY_OBJECT)] = v.ARRAY_OBJECT
        return table, table.ctypes.data, fast

    def _run(self, training, update_stats=False, dropout=False, step=0):
        """The run flags of the compiled passes (kernels/layers.py): (training, update the running statistics,
        dropout, seed, step)."""
        return (int(training), int(update_stats), int(dropout and any(self.dropouts)), self.dropout_seed, int(step))

    def _check_batch_norm_rows(self, n, name="X", batch_size=None):
        """Batch norm in training needs at least two rows (a variance): ``_check_two_rows``, for a network with
        batch norm."""
        if _lay_name_batch in self.norms:
            _check_two_rows(n, name, batch_size)

    # ------------------------------------------------------------------ workspace
    def _reserve(self, n):
        """Make the workspace hold a batch of n rows (grown only when a larger batch arrives)."""
        if n <= self._capacity:
            return
        widths = self._layout[:, _lay.FAN_OUT]
        self._acts = np.empty(n * int(widths.sum()), dtype=self.dtype)
        self._delta_a = np.empty(n * int(widths.max()), dtype=self.dtype)
        self._delta_b = np.empty_like(self._delta_a)
        # the options' buffers: a third delta buffer (residual connections), the auxiliary workspace, the sums
        options = self._has_options
        self._delta_c = np.empty(self._delta_a.size if options else 0, dtype=self.dtype)
        self._aux = np.empty(sum(_aux_size(row, n) for row in self._layout[:-1]), dtype=self.dtype)
        self._sums = np.empty(3 * int(widths.max()) if options else 0, dtype=np.float64)  # 2 m sums, m // 2 hashes
        twin = bool(self._gemm[1])  # bfloat16 twins of the input, the activations and the deltas
        self._twins = tuple(
            np.empty(size if twin else 0, dtype=np.uint16)
            for size in (n * self.n_in, self._acts.size, self._delta_a.size, self._delta_a.size)
        )
        self._capacity = n
        work = (self._acts, self._delta_a, self._delta_b, self._delta_c, self._aux, self._sums)
        self._entry_workspace = workspace_entry(work, self._twins)
        if self._fast:
            self._table[_checked.WORKSPACE : _checked.WORKSPACE + len(self._entry_workspace)] = self._entry_workspace
            self._table[_checked.CAPACITY] = n
            self._table[_checked.CHUNK_ROWS] = _tuning.CHUNK_ROWS

    def _trim_workspace(self):
        """Shrink a workspace that a batch of more than ``_tuning.CHUNK_ROWS`` rows grew back to that size (what
        ``predict`` and ``evaluate`` need): for holders that keep the network after training (scikit-learn's
        estimators, whose L-BFGS fit takes the whole data set as one batch)."""
        with self._lock:
            if self._capacity > _tuning.CHUNK_ROWS:
                self._capacity = 0
                self._reserve(_tuning.CHUNK_ROWS)

    def _reserve_chunks(self, n):
        """Make the workspace hold a chunk of a pass over n rows that runs in chunks (predict, evaluate): all n rows,
        or at least ``_tuning.CHUNK_ROWS`` (more if it already holds more), so memory stays bounded."""
        self._reserve(min(n, max(self._capacity, _tuning.CHUNK_ROWS)))

    @property
    def _workspace(self):
        return self._acts, self._delta_a, self._delta_b

    def _entry_batch(self, X, Y2d, labels, sw=None):
        """Addresses and sizes of a validated batch (sw: validated sample weights, None or empty for unit weights),
        as the compiled entry points take them (boundary.py)."""
        n_sw = 0 if sw is None else sw.shape[0]
        return (
            X.ctypes.data,
            X.shape[0],
            X.shape[1],
            Y2d.ctypes.data if Y2d.size else 0,
            Y2d.shape[0],
            Y2d.shape[1],
            labels.ctypes.data if labels.size else 0,
            labels.shape[0],
            sw.ctypes.data if n_sw else 0,
            n_sw,
        )

    def check_batch(self, X, Y, names=("X", "Y")):
        """Validate and convert a batch: returns ``(X, Y2d, labels)`` as the kernels take them, X (n, n_in) and Y2d
        (n, n_out) C-contiguous of the network's dtype, or Y2d (0, n_out) with labels (n,) int64 (labels (0,)
        otherwise); errors use ``names`` for the two arguments."""
        X = v.check_X(X, self.n_in, self.dtype, name=names[0])
        Y2d, labels = v.check_targets(
            Y, X.shape[0], self.n_out, self.dtype, allow_labels=self.output == "softmax", name=names[1]
        )
        return X, Y2d, labels

    def save(self, path, optimizer=None, extras=None):
        """Write the network (and an optimizer's state, and ``extras``: a dict of arrays) to an ``.npz``
        checkpoint, atomically; see ``fastbp.load``. Returns the path."""
        from .checkpoint import save

        return save(self, path, optimizer, extras)

    # ------------------------------------------------------------------ compute
    def value_and_grad(self, X, Y, out=None, accumulate=False, scale=1.0, sample_weight=None):
        """Loss and gradient of the batch, by the compiled kernels.

        Parameters
        ----------
        X : array (n, n_in)
            Inputs; converted once to the network's dtype if needed.
        Y : array (n, n_out), or (n,) integer class labels for a softmax output
        out : ndarray (n_params,) of the network's dtype, optional
            Gradient buffer written in place (nothing is allocated); it must not share memory with ``params``, X, Y
            or ``sample_weight`` (a ValueError). Default: a new array.
        accumulate : bool, default False
            Add the gradient into ``out`` instead of overwriting it (micro-batches).
        scale : float, default 1.0
            Weight of this batch: loss and gradient are those of ``scale * L(batch)``. With micro-batches of sizes
            n_i, ``scale = n_i / sum(n_i)`` makes the accumulated gradient that of the concatenated batch (not with
            batch norm, which normalizes each micro-batch with its own statistics).
        sample_weight : array (n,), optional
            Non-negative weights with a positive sum: the batch mean becomes the weighted mean
            ``sum_i w_i loss_i / sum_i w_i`` (the L2 term is unchanged).

        Returns
        -------
        loss : float
            ``scale * (mean over the batch of the per-sample loss + l2 / 2 * sum of squared weights)``.
        grads : ndarray (n_params,) of the network's dtype
            Same layout as ``params``; ``out`` when given.
        """
        # The common case in one compiled call, which checks the arrays (kernels/checked.py); anything else (a
        # conversion, a copy, an error to raise) takes the checks below.
        accumulate_flag = 0 if accumulate is False else (1 if accumulate is True else -1)
        if self._fast and accumulate_flag >= 0 and type(scale) is float and 0.0 <= scale < _INF:
            if out is None and not accumulate_flag:
                out = np.empty(self.n_params, dtype=self.dtype)
            lock = self._lock
            lock.acquire()  # not ``with``: the fast paths measured 0.3 us faster per call at S this way
            try:
                status, loss = self._entries.value_and_grad(
                    self._marker,
                    self._p_table,
                    id(X),
                    id(Y),
                    id(out),
                    0 if sample_weight is None else id(sample_weight),
                    self.l2,
                    scale,
                    accumulate_flag,
                )
            finally:
                lock.release()
            if status == _checked.OK:
                return loss, out
        X, Y2d, labels = self.check_batch(X, Y)
        self._check_batch_norm_rows(X.shape[0])
        sw = v.check_sample_weight(sample_weight, X.shape[0], self.dtype)
        scale = v.check_float(scale, "scale", minimum=0.0)
        accumulate = v.check_bool(accumulate, "accumulate")
        if out is None:
            if accumulate:
                raise ValueError("accumulate=True needs an out= buffer to accumulate into")
            out = np.empty(self.n_params, dtype=self.dtype)
        else:
            v.check_out(out, self.n_params, self.dtype)
            if np.shares_memory(out, self._params):
                raise ValueError("out must not share memory with net.params (the gradient would overwrite them)")
            for name, a in (("X", X), ("Y", Y2d), ("Y", labels), ("sample_weight", sw)):
                if a.size and np.shares_memory(out, a):
                    raise ValueError(f"out must not share memory with {name} (the gradient would overwrite it)")
        return self._value_and_grad_checked(X, Y2d, labels, sw, out, accumulate, scale), out

    def _value_and_grad_checked(self, X, Y2d, labels, sw, out, accumulate=False, scale=1.0, params=None):
        """The compiled value_and_grad on a batch already validated (``check_batch``, ``check_sample_weight``) into
        a validated ``out``; returns the loss (float). ``params``: validated (n_params,) values of the network's
        dtype, written into its parameters first, under the same hold of the lock."""
        with self._lock:
            if params is not None:
                self._params[:] = params
            self._reserve(X.shape[0])
            loss = _value_and_grad_entry(
                self._marker,
                self._entry_network,
                self._run_training,
                0,
                0,
                self._loss_code,
                self._entry_batch(X, Y2d, labels, sw),
                self._entry_workspace,
                out.ctypes.data,
                self.l2,
                scale,
                int(accumulate),
            )
        return float(loss)

    def predict(self, X):
        """Network outputs for X (n, n_in): an (n, n_out) array of the network's dtype (probabilities for softmax).

        Large X is processed in chunks of the workspace's rows (at least 1024), so memory stays bounded."""
        if self._fast and type(X) is _NDARRAY and X.ndim == 2:  # one compiled call, which checks X (kernels/checked.py)
            out = np.empty((X.shape[0], self._n_out), self.dtype)
            lock = self._lock
            lock.acquire()  # not ``with``: see value_and_grad
            try:
                status = self._entries.predict(self._marker, self._p_table, id(X), id(out))
            finally:
                lock.release()
            if status == _checked.OK:
                return out
        X = v.check_X(X, self.n_in, self.dtype)
        out = np.empty((X.shape[0], self.n_out), dtype=self.dtype)
        with self._lock:
            self._reserve_chunks(X.shape[0])
            _predict_entry(
                self._marker,
                self._entry_network,
                self._run_evaluation,
                X.ctypes.data,
                X.shape[0],
                self._entry_workspace,
                out.ctypes.data,
            )
        return out
