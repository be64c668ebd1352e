"""Checked entry points: the one compiled call behind ``MLP.value_and_grad``, ``MLP.predict``, ``Trainer.train_step``,
``Trainer.evaluate`` and ``FlatObjective``.

A call from Python pays for what it passes. Taking an array's address in Python (``ndarray.ctypes.data``) costs about
a microsecond, and the checks of fastbp/_validation.py a few more per array, as much as the compiled work of a
small network. These entry points take the caller's arrays as the addresses of their Python objects (``id(X)``, an
integer, free to pass) and read NumPy's array object themselves: its type, dtype, dimensions, flags and data
pointer, at the offsets that ``fastbp._validation.ARRAY_OBJECT`` found and verified at import. They accept exactly
what the Python checks accept without a conversion or a copy (the network's dtype, C-contiguous, the right shape,
finite values, labels in range, valid sample weights), then call the entry point of the work (drivers.py, epoch.py)
with the addresses, so the results are those of the Python path, bit for bit.

Everything else a call needs lives in one int64 table per network (``MLP._table``, the layout below) and one per
trainer (``Trainer._table``), passed as an address and kept up to date by the Python layer.

Each returns a status first: ``OK`` (or a step's status, step.py), or ``CHECK`` when anything differs from the
common case: another dtype or layout, a bad value, a workspace too small. Nothing has been written then; the Python
layer runs its own checks, which convert the arguments or raise the documented error, and computes the result
there.
"""

import numpy as np
from numba import typeof, types

from .._config import WEIGHT_LIMIT, finite, kernel, leaf, like
from .boundary import _array1d, _network_arrays
from .drivers import _predict_entry, _value_and_grad_entry
from .epoch import _evaluate_entry, _train_epoch_entry
from .layout import PARAM_END, TRAINABLE, W_OFFSET

#: The status of a call that the Python layer must check and compute itself (nothing was written).
CHECK = -1
OK = 0

# The network's table (``MLP._table``), int64:
NETWORK = 0  # 10 values: the network as boundary.py's _network_arrays takes it
WORKSPACE = 10  # 15 values: the workspace as boundary.py's _workspace_arrays takes it
CAPACITY = 25  # rows the workspace holds
CHUNK_ROWS = 26  # rows the workspace must hold for a pass in chunks of a larger batch (fastbp/_tuning.py)
N_IN, N_OUT, LOSS = 27, 28, 29  # input and output widths, loss code
LABELS = 30  # 1 when the targets may be 1-D integer class labels (a softmax output)
TWO_ROWS = 31  # 1 when a batch in training needs at least 2 rows (batch norm)
DROPOUT = 32  # 1 when a hidden layer has dropout
SEED = 33  # the dropout seed of the run flags of value_and_grad, predict and evaluate (MLP._run_training)
DESCR = 34  # address of the network dtype's descriptor (np.dtype object)
FLOAT64 = 35  # address of float64's descriptor
OBJECT = 36  # 10 values: fastbp._validation.ARRAY_OBJECT
TABLE_SIZE = 46

# The offsets inside the OBJECT block.
_NDARRAY, _TYPE, _DATA, _NDIM, _DIMS, _DESCR, _FLAGS, _C_CONTIGUOUS, _WRITEABLE, _INT64 = range(10)

# The trainer's table (``Trainer._table``), int64: addresses and sizes of the buffers its compiled loop writes.
SPARE, GRADS, STATE, STATE_ROWS, HYPER, N_HYPER, SCHEDULE, N_SCHEDULE = range(8)
XB, YB, LB, SWB, SQ_NORMS, PERM, ROWS = range(8, 15)  # batch buffers, gradient norms, 0..ROWS-1, their rows
TRAINER_TABLE_SIZE = 15

_NO_ARRAY = (np.int64(0), np.int64(-1), np.int64(0), np.int64(0), np.int64(0), np.int64(0))


@leaf
def _word(address, marker):
    """The value of marker's type stored at ``address``."""
    return _array1d(address, 1, marker)[0]


@leaf
def _object(t, obj):
    """(data address, ndim, rows, cols, flags, dtype descriptor address) of the NumPy array whose Python object is at
    address ``obj``, from its fields (rows, cols: its first two dimensions, 1 when it has fewer); ndim -1 when obj is
    0 (None) or not exactly an ``np.ndarray`` (a subclass, a list: the Python checks handle it)."""
    i64, i32 = np.int64(0), np.int32(0)
    if obj == 0 or _word(obj + t[OBJECT + _TYPE], i64) != t[OBJECT + _NDARRAY]:
        return _NO_ARRAY
    ndim = np.int64(_word(obj + t[OBJECT + _NDIM], i32))
    dims = _word(obj + t[OBJECT + _DIMS], i64)
    rows = _word(dims, i64) if ndim >= 1 else np.int64(1)
    cols = _word(dims + 8, i64) if ndim >= 2 else np.int64(1)
    flags = np.int64(_word(obj + t[OBJECT + _FLAGS], i32))
    return _word(obj + t[OBJECT + _DATA], i64), ndim, rows, cols, flags, _word(obj + t[OBJECT + _DESCR], i64)


@leaf
def _contiguous(t, flags):
    return (flags & t[OBJECT + _C_CONTIGUOUS]) != 0


@leaf
def _all_finite(a, marker):
    """Whether the 1-D array holds no NaN or infinity once cast to marker's dtype (so a finite value the cast makes
    infinite counts too), in one vectorised pass in that dtype: ``x * 0`` is 0 for a finite x and NaN otherwise, so
    the sum of those products is finite exactly when every value is, and cannot overflow (a plain float64 sum took
    2.4x as long for float32 values). The fastmath flags keep ``x * 0``: folding it to 0 needs ``nnan``, which they
    omit (_config.py)."""
    zero = like(0.0, marker)
    s = zero
    for i in range(a.shape[0]):
        s += like(a[i], marker) * zero
    return finite(s)


@leaf
def _labels_in_range(labels, n_out):
    """Whether every int64 label is in [0, n_out)."""
    bad = False
    for i in range(labels.shape[0]):
        bad |= (labels[i] < 0) | (labels[i] >= n_out)
    return not bad


@leaf
def _weights_valid(w):
    """What check_sample_weight requires of sample weights to use them as they are: finite, >= 0, with a positive
    float64 sum and the largest within the range of ``WEIGHT_LIMIT`` (else the Python path scales them)."""
    s = 0.0
    top = 0.0
    negative = False
    for i in range(w.shape[0]):
        s += w[i]
        top = max(top, np.float64(w[i]))
        negative |= w[i] < 0
    return finite(s) and not negative and s > 0.0 and 1.0 / WEIGHT_LIMIT <= top <= WEIGHT_LIMIT


@leaf
def _checked_batch(t, x, y, sw, marker, training):
    """(whether the batch passes, the batch as boundary.py's _batch_arrays takes it) of the arrays whose objects are
    at x (inputs), y (targets, or class labels) and sw (sample weights, or 0 for None): what ``MLP.check_batch``,
    the batch-norm row count (``training``) and ``check_sample_weight`` accept without converting or copying."""
    zero = np.int64(0)
    bad = (False, (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero))
    n_in, n_out = t[N_IN], t[N_OUT]
    p_x, ndim, n, cols, flags, descr = _object(t, x)
    if ndim != 2 or descr != t[DESCR] or not _contiguous(t, flags) or n < 1 or cols != n_in:
        return bad
    if training and n < 2 and t[TWO_ROWS] != 0:
        return bad
    if not _all_finite(_array1d(p_x, n * n_in, marker), marker):
        return bad
    p_y, ndim, rows, cols, flags, descr = _object(t, y)
    if ndim < 1 or not _contiguous(t, flags) or rows != n:
        return bad
    p_Y, n_Y, p_labels, n_labels = zero, zero, zero, zero
    if ndim == 1 and t[LABELS] != 0:
        if descr != t[OBJECT + _INT64] or not _labels_in_range(_array1d(p_y, n, zero), n_out):
            return bad
        p_labels, n_labels = p_y, n
    elif descr == t[DESCR] and ((ndim == 2 and cols == n_out) or (ndim == 1 and n_out == 1)):
        if not _all_finite(_array1d(p_y, n * n_out, marker), marker):
            return bad
        p_Y, n_Y = p_y, n
    else:
        return bad
    p_sw, n_sw = zero, zero
    if sw != 0:
        p_w, ndim, rows, _, flags, descr = _object(t, sw)
        if ndim != 1 or descr != t[DESCR] or not _contiguous(t, flags) or rows != n:
            return bad
        if not _weights_valid(_array1d(p_w, n, marker)):
            return bad
        p_sw, n_sw = p_w, n
    return True, (p_x, n, n_in, p_Y, n_Y, n_out, p_labels, n_labels, p_sw, n_sw)


@leaf
def _table_parts(p_table):
    """(table, network tuple, workspace tuple) of the network's table at ``p_table``."""
    t = _array1d(p_table, TABLE_SIZE, np.int64(0))
    network = (t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9])
    w = WORKSPACE
    workspace = (
        t[w],
        t[w + 1],
        t[w + 2],
        t[w + 3],
        t[w + 4],
        t[w + 5],
        t[w + 6],
        t[w + 7],
        t[w + 8],
        t[w + 9],
        t[w + 10],
        t[w + 11],
        t[w + 12],
        t[w + 13],
        t[w + 14],
    )
    return t, network, workspace


@leaf
def _overlap(a, a_bytes, b, b_bytes):
    """Whether the byte ranges [a, a + a_bytes) and [b, b + b_bytes) meet: np.shares_memory of contiguous arrays."""
    return a_bytes > 0 and b_bytes > 0 and a < b + b_bytes and b < a + a_bytes


@leaf
def _chunk_fits(t, n):
    """Whether the workspace is as large as a pass over n rows in chunks makes it (``MLP._reserve_chunks``)."""
    return t[CAPACITY] >= min(n, t[CHUNK_ROWS])


@kernel
def _value_and_grad_checked_entry(marker, p_table, x, y, out, sw, l2, scale, accumulate):
    """``MLP.value_and_grad`` after the Python layer's checks of ``scale`` (a float >= 0) and ``accumulate`` (0 or 1):
    returns (status, loss); with OK, loss and gradient as :func:`~fastbp.kernels.drivers._value_and_grad` (NumPy:
    as there) of the batch at x, y, sw (see :func:`_checked_batch`) into the gradient array at ``out`` (a writeable
    C-contiguous (n_params,) array of the dtype that overlaps neither the parameters nor the batch); with CHECK
    nothing is written. Not thread-safe (the network's workspace)."""
    t, network, workspace = _table_parts(p_table)
    ok, batch = _checked_batch(t, x, y, sw, marker, True)
    p_out, ndim, rows, _, flags, descr = _object(t, out)
    n_params = network[1]
    if not ok or ndim != 1 or descr != t[DESCR] or rows != n_params or batch[1] > t[CAPACITY]:
        return CHECK, 0.0
    if not _contiguous(t, flags) or (flags & t[OBJECT + _WRITEABLE]) == 0:
        return CHECK, 0.0
    item = _array1d(p_out, 0, marker).itemsize
    size = n_params * item
    if _overlap(p_out, size, network[0], size) or _overlap(p_out, size, batch[0], batch[1] * batch[2] * item):
        return CHECK, 0.0  # out shares memory with the parameters, or with X, which the backward pass reads
    if _overlap(p_out, size, batch[3], batch[4] * batch[5] * item) or _overlap(p_out, size, batch[6], batch[7] * 8):
        return CHECK, 0.0
    if _overlap(p_out, size, batch[8], batch[9] * item):
        return CHECK, 0.0
    zero = np.int64(0)
    run = (np.int64(1), zero, zero, t[SEED], zero)
    loss = _value_and_grad_entry(
        marker, network, run, zero, zero, t[LOSS], batch, workspace, p_out, l2, scale, accumulate
    )
    return OK, loss


@kernel
def _predict_checked_entry(marker, p_table, x, out):
    """``MLP.predict``: returns the status; with OK, the network's outputs for the inputs at x (a C-contiguous finite
    (n, n_in) array of the dtype, n >= 1) are in the array at ``out``, a new C-contiguous (n, n_out) array of the
    dtype (NumPy: ``out[...] = reference.predict(net, X)``); with CHECK nothing is written. Not thread-safe (the
    network's workspace)."""
    t, network, workspace = _table_parts(p_table)
    p_x, ndim, n, cols, flags, descr = _object(t, x)
    if ndim != 2 or descr != t[DESCR] or not _contiguous(t, flags) or n < 1 or cols != t[N_IN]:
        return CHECK
    if not _chunk_fits(t, n) or not _all_finite(_array1d(p_x, n * cols, marker), marker):
        return CHECK
    zero = np.int64(0)
    _predict_entry(marker, network, (zero, zero, zero, t[SEED], zero), p_x, n, workspace, _object(t, out)[0])
    return OK


@kernel
def _evaluate_checked_entry(marker, p_table, x, y, sw):
    """``Trainer.evaluate``: returns (status, summed loss, correct predictions) of the batch at x, y, sw (see
    :func:`_checked_batch`), as :func:`~fastbp.kernels.epoch._evaluate_entry` (NumPy: as there); with CHECK nothing is
    computed. Not thread-safe (the network's workspace)."""
    t, network, workspace = _table_parts(p_table)
    ok, batch = _checked_batch(t, x, y, sw, marker, False)
    if not ok or not _chunk_fits(t, batch[1]):
        return CHECK, 0.0, 0.0
    zero = np.int64(0)
    loss, correct = _evaluate_entry(marker, network, (zero, zero, zero, t[SEED], zero), t[LOSS], batch, workspace)
    return OK, loss, correct


@kernel
def _train_step_checked_entry(
    marker, p_table, p_trainer, x, y, sw, l2, kind, schedule_code, lr, clip_norm, t0, seed, max_loss
):
    """``Trainer.train_step``: one optimizer step on the batch at x, y, sw (see :func:`_checked_batch`), as the
    trainer's epoch loop over that one batch (epoch.py :func:`~fastbp.kernels.epoch._train_epoch_entry`, NumPy: as
    there), with the trainer's buffers from its table at ``p_trainer``: the spare parameters' frozen layers set to
    the current ones and the gradient norms zeroed first, as ``Trainer._begin_run`` does. kind, schedule_code, lr,
    clip_norm, t0: the optimizer (its hyper-parameters and schedule in the table); seed: the dropout seed; max_loss:
    the divergence limit. Returns (status, summed loss, steps, rows): a status of step.py, or CHECK with nothing
    written. Not thread-safe (the network's workspace, the trainer's buffers)."""
    t, network, workspace = _table_parts(p_table)
    b = _array1d(p_trainer, TRAINER_TABLE_SIZE, np.int64(0))
    ok, batch = _checked_batch(t, x, y, sw, marker, True)
    n = batch[1]
    if not ok or n > t[CAPACITY] or n > b[ROWS]:
        return CHECK, 0.0, np.int64(0), n
    params, _, layout, _, _ = _network_arrays(network, marker)
    spare = _array1d(b[SPARE], params.shape[0], marker)
    for l in range(layout.shape[0]):
        if layout[l, TRAINABLE] == 0:  # the update never writes a frozen layer: spare must hold its values too
            for i in range(layout[l, W_OFFSET], layout[l, PARAM_END]):
                spare[i] = params[i]
    sq_norms = _array1d(b[SQ_NORMS], layout.shape[0], np.float64(0))
    for l in range(layout.shape[0]):
        sq_norms[l] = 0.0
    zero = np.int64(0)
    run = (np.int64(1), np.int64(1), t[DROPOUT], seed, zero)
    status, loss_sum, steps = _train_epoch_entry(
        marker,
        network,
        run,
        t[LOSS],
        batch,
        workspace,
        b[SPARE],
        b[GRADS],
        b[PERM],
        n,
        n,
        l2,
        kind,
        b[HYPER],
        b[N_HYPER],
        schedule_code,
        b[SCHEDULE],
        b[N_SCHEDULE],
        lr,
        clip_norm,
        t0,
        b[STATE],
        b[STATE_ROWS],
        b[XB],
        b[YB],
        b[LB],
        b[SWB],
        b[SQ_NORMS],
        max_loss,
    )
    return status, loss_sum, steps, n


@kernel
def _objective_checked_entry(marker, p_table, p_batch, theta, grad64, p_grads, l2):
    """``FlatObjective(theta)``: returns (status, loss); with OK, the parameters are set to the float64 vector at
    ``theta`` (C-contiguous (n_params,), finite, and within the dtype's range: a value the cast would make infinite
    is left to the Python checks, which refuse it) and the loss and gradient of the batch in the table at
    ``p_batch`` (10 values, validated when the objective was made) computed into the dtype's (n_params,) buffer at
    ``p_grads``, then written as float64 to the new (n_params,) array at ``grad64`` (NumPy: ``params[:] = theta;
    loss, g = reference.value_and_grad(net, X, Y); grad64[:] = g``; p_grads 0: into grad64 directly, for a float64
    network); with CHECK nothing is written. Not thread-safe (the network's workspace and parameters)."""
    t, network, workspace = _table_parts(p_table)
    s = _array1d(p_batch, 10, np.int64(0))
    batch = (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9])
    p_theta, ndim, rows, _, flags, descr = _object(t, theta)
    n_params = network[1]
    if ndim != 1 or descr != t[FLOAT64] or not _contiguous(t, flags) or rows != n_params or batch[1] > t[CAPACITY]:
        return CHECK, 0.0
    values = _array1d(p_theta, n_params, np.float64(0))
    if not _all_finite(values, marker):  # NaN, infinity, or a value the cast makes infinite: the Python checks refuse
        return CHECK, 0.0
    params = _array1d(network[0], n_params, marker)
    for i in range(n_params):
        params[i] = values[i]
    p_out = _object(t, grad64)[0]
    p_target = p_out if p_grads == 0 else p_grads
    zero = np.int64(0)
    run = (np.int64(1), zero, zero, t[SEED], zero)
    loss = _value_and_grad_entry(marker, network, run, zero, zero, t[LOSS], batch, workspace, p_target, l2, 1.0, zero)
    if p_grads != 0:
        grads, out = _array1d(p_grads, n_params, marker), _array1d(p_out, n_params, np.float64(0))
        for i in range(n_params):
            out[i] = grads[i]
    return OK, loss


# The Numba types of each entry point's arguments after the marker, as the Python layer passes them: addresses,
# counts, codes and flags as int64, hyper-parameters as float64 (the types their checks give them).
_I, _F = types.int64, types.float64
_ARGUMENTS = {
    "predict": (_predict_checked_entry, (_I, _I, _I)),
    "value_and_grad": (_value_and_grad_checked_entry, (_I, _I, _I, _I, _I, _F, _F, _I)),
    "evaluate": (_evaluate_checked_entry, (_I, _I, _I, _I)),
    "train_step": (_train_step_checked_entry, (_I, _I, _I, _I, _I, _F, _I, _I, _F, _F, _I, _I, _F)),
    "objective": (_objective_checked_entry, (_I, _I, _I, _I, _I, _F)),
}


class Entries:
    """The compiled functions of the entry points above for one marker type, as attributes named as in
    ``_ARGUMENTS`` (``entries.predict(marker, p_table, x, out)``), each compiled or loaded from the cache on its
    first use. Calling one skips the type dispatch of a call through its Numba dispatcher, which costs 0.2 to 0.5 us
    (more with more arguments); the caller passes arguments of exactly the types of ``_ARGUMENTS``. One instance
    per marker type: :func:`entries`."""

    def __init__(self, marker_type):
        self._marker_type = marker_type

    def __getattr__(self, name):
        if name not in _ARGUMENTS:
            raise AttributeError(name)
        dispatcher, arguments = _ARGUMENTS[name]
        function = dispatcher.compile((self._marker_type, *arguments))  # the compiled function, as Numba calls it
        setattr(self, name, function)  # later look-ups find it without calling __getattr__
        return function


_ENTRIES = {}


def entries(marker):
    """The :class:`Entries` of ``marker``'s type (a network's ``_marker``), shared by the networks of that type."""
    marker_type = typeof(marker)
    if marker_type not in _ENTRIES:
        _ENTRIES[marker_type] = Entries(marker_type)
    return _ENTRIES[marker_type]
