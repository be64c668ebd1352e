"""The layout table and the views it gives into flat buffers.

``layout`` is an int64 array with one row per layer and the columns below. ``params`` (and ``grads``, and every
optimizer state) is one 1-D array; layer l's ``W`` is the C-ordered (fan_in, fan_out) block starting at
``layout[l, W_OFFSET]`` and its ``b`` the fan_out values at ``layout[l, B_OFFSET]``. Activations of a batch of n
rows live in one 1-D workspace ``acts``: layer l's ``A`` is the (n, fan_out) block starting at
``n * sum(fan_out of layers < l)``, so a workspace sized for the largest batch serves every smaller one.
"""

from .._config import leaf

FAN_IN, FAN_OUT, W_OFFSET, B_OFFSET, ACTIVATION, TRAINABLE = range(6)
N_COLUMNS = 6


@leaf
def _layer_view(buf, layout, l):
    """(W, b) views of layer l in a flat buffer laid out like ``params``: (fan_in, fan_out) and (fan_out,)."""
    fan_in = layout[l, FAN_IN]
    fan_out = layout[l, FAN_OUT]
    w = layout[l, W_OFFSET]
    b = layout[l, B_OFFSET]
    return buf[w : w + fan_in * fan_out].reshape((fan_in, fan_out)), buf[b : b + fan_out]


@leaf
def _activation_view(acts, layout, l, n):
    """(n, fan_out) view of layer l's activations in the workspace ``acts``."""
    start = 0
    for m in range(l):
        start += n * layout[m, FAN_OUT]
    fan_out = layout[l, FAN_OUT]
    return acts[start : start + n * fan_out].reshape((n, fan_out))


@leaf
def _rows_view(buf, n, width):
    """(n, width) view of the start of a 1-D buffer (the ping-pong delta buffers)."""
    return buf[: n * width].reshape((n, width))
