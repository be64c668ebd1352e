"""The layout table and the views it gives into flat buffers.

``layout`` is an int64 array with one row per layer and the columns below. ``params`` (and ``grads``, and every
optimizer state) is one 1-D array; layer l's ``W`` is the C-ordered (fan_in, fan_out) block starting at
``layout[l, W_OFFSET]`` and its ``b`` the fan_out values at ``layout[l, B_OFFSET]``. Activations of a batch of n
rows live in one 1-D workspace ``acts``: layer l's ``A`` is the (n, fan_out) block starting at
``n * sum(fan_out of layers < l)``, so a workspace sized for the largest batch serves every smaller one.

The options of a hidden layer (layers.py) are columns too: its normalization (``NORM``: none, batch or layer), a
residual connection (``RESIDUAL``), the dropout threshold (``DROPOUT``: a unit is kept when a 32-bit hash is at
least this, so the rate is threshold / 2^32), the offset of its gamma (``GAMMA_OFFSET``; beta follows) in ``params``
and of its running statistics (``STATS_OFFSET``: mean, then variance) in ``buffers``, and ``PARAM_END``, the end of
its parameters (W, b, then gamma and beta for a normalized layer) in ``params``.
"""

from numba import carray, types
from numba.extending import intrinsic

from .._config import leaf

FAN_IN, FAN_OUT, W_OFFSET, B_OFFSET, ACTIVATION, TRAINABLE = range(6)
NORM, RESIDUAL, DROPOUT, GAMMA_OFFSET, STATS_OFFSET, PARAM_END = range(6, 12)
N_COLUMNS = 12
NO_NORM, BATCH_NORM, LAYER_NORM = 0, 1, 2


@intrinsic
def _pointer_at(typingctx, buf, offset):
    """Pointer to element ``offset``, in C order, of a C-contiguous array (no bounds check)."""
    if not (isinstance(buf, types.Array) and buf.layout == "C" and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.gep(data, [args[1]])

    return types.CPointer(buf.dtype)(buf, offset), codegen


@leaf
def _matrix_at(buf, offset, rows, cols):
    """The (rows, cols) C-ordered block of a C-contiguous buffer that starts at element ``offset`` (in C order), as a
    view that owns nothing (no reference count, like the arrays of boundary.py). Not ``buf[...].reshape(...)``:
    Numba's reshape checks the size at run time and compiles the formatting of its error message (seconds of a cold
    compile of a training run), and calls a helper at every view."""
    return carray(_pointer_at(buf, offset), (rows, cols))


@leaf
def _unowned(a):
    """A view of the C-contiguous array ``a`` (any dimension) that owns nothing. An array passed in from Python
    carries a reference count that every inlined helper taking it increments and decrements, with atomic
    instructions (more than half the time of a small softmax kernel); the training loop's arrays
    (boundary.py) have none, and benchmarks of single kernels use this to run them the same way."""
    return carray(_pointer_at(a, 0), a.shape)


@leaf
def _layer_view(buf, layout, l):
    """(W, b) views of layer l in a flat buffer laid out like ``params``: (fan_in, fan_out) and (fan_out,)."""
    fan_in = layout[l, FAN_IN]
    fan_out = layout[l, FAN_OUT]
    w = layout[l, W_OFFSET]
    b = layout[l, B_OFFSET]
    return _matrix_at(buf, w, fan_in, fan_out), buf[b : b + fan_out]


@leaf
def _twin_view(params16, layout, l):
    """The bfloat16 twin of layer l's W: the (fan_in, fan_out) uint16 view of ``params16`` laid out like params, or a
    (0, fan_out) view when ``params16`` is empty (the dtype's own precision)."""
    rows = layout[l, FAN_IN] if params16.shape[0] > 0 else 0
    return _matrix_at(params16, layout[l, W_OFFSET] if rows else 0, rows, layout[l, FAN_OUT])


@leaf
def _plain(layout, l):
    """Whether layer l is a plain dense layer (no normalization, no residual connection, no dropout)."""
    return layout[l, NORM] == NO_NORM and layout[l, RESIDUAL] == 0 and layout[l, DROPOUT] == 0


@leaf
def _keeps_output(layout, l):
    """Whether layer l keeps its activation output H = f(N(Z)) apart from its output A (which differs from H after
    dropout or a residual connection): the derivative f' is taken from H."""
    return layout[l, RESIDUAL] != 0 or layout[l, DROPOUT] != 0


@leaf
def _aux_size(layout, l, n):
    """Values of the auxiliary workspace that layer l uses for a batch of n rows: H (n, fan_out) when kept, x_hat
    (n, fan_out), the means and the inverse standard deviations (fan_out each for batch norm, n for layer norm)
    when normalized."""
    m = layout[l, FAN_OUT]
    size = n * m if _keeps_output(layout, l) else 0
    if layout[l, NORM] == BATCH_NORM:
        size += n * m + 2 * m
    elif layout[l, NORM] == LAYER_NORM:
        size += n * m + 2 * n
    return size


@leaf
def _aux_views(aux, layout, l, n):
    """(H, x_hat, mean, inv_std) of layer l in the auxiliary workspace ``aux`` for n rows: (n, fan_out) views, or (0,
    fan_out) when the layer has none, and 1-D views (fan_out, n or 0 values)."""
    start = 0
    for k in range(l):
        start += _aux_size(layout, k, n)
    m = layout[l, FAN_OUT]
    h_rows = n if _keeps_output(layout, l) else 0
    H = _matrix_at(aux, start, h_rows, m)
    start += h_rows * m
    norm = layout[l, NORM]
    x_rows = n if norm != NO_NORM else 0
    XH = _matrix_at(aux, start, x_rows, m)
    start += x_rows * m
    count = m if norm == BATCH_NORM else (n if norm == LAYER_NORM else 0)
    return H, XH, aux[start : start + count], aux[start + count : start + 2 * count]


@leaf
def _activation_view(acts, layout, l, n):
    """(n, fan_out) view of layer l's activations in the workspace ``acts``."""
    start = 0
    for m in range(l):
        start += n * layout[m, FAN_OUT]
    fan_out = layout[l, FAN_OUT]
    return _matrix_at(acts, start, n, fan_out)


@leaf
def _rows_view(buf, n, width):
    """(n, width) view of the start of a 1-D buffer (the ping-pong delta buffers)."""
    return _matrix_at(buf, 0, n, width)


@leaf
def _copy(src, dst):
    """dst[:] = src for equal-length 1-D arrays, as a loop: an array assignment checks the shapes at run time and
    compiles the formatting of its error message (seconds of a cold compile of a training run)."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]
