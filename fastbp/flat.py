"""Loss and gradient as functions of ONE flat float64 parameter vector, for ``scipy.optimize`` and friends."""

import numpy as np

from . import _validation as v
from .kernels import checked as _checked


class FlatObjective:
    """``theta -> (loss, grad)`` of a network on a fixed data set, for ``scipy.optimize.minimize(..., jac=True)``.

    The data are validated and converted once, here; each call writes ``theta`` into ``net.params`` (the layout
    of ``MLP.params``: per layer W row-major, then b) and runs the compiled forward and backward pass over
    the whole data set as one batch.

    Parameters
    ----------
    net : MLP
        Its parameters are overwritten by every call (they end as the last ``theta`` evaluated).
    X : array (n, n_in)
    Y : array (n, n_out), or (n,) integer class labels for a softmax output
    sample_weight : array (n,), optional
        The data term becomes the weighted mean ``sum_i w_i loss_i / sum_i w_i``.

    Attributes
    ----------
    net : MLP
        The network whose parameters each call sets.
    X : ndarray (n, n_in)
        The inputs, C-contiguous, of the network's dtype.
    Y2d : ndarray (n, n_out) or (0, n_out)
        The targets, of the network's dtype; (0, n_out) when the targets are class labels.
    labels : ndarray (n,) or (0,) of int64
        The class labels (a softmax output), or none.
    sw : ndarray (n,) or (0,)
        The sample weights, of the network's dtype, or none.
    n_calls : int
        The evaluations so far.

    Notes
    -----
    Calling it with ``theta`` (n_params,) returns ``(loss: float, grad: (n_params,) float64)``: the loss is the
    network's objective (mean loss + ``net.l2 / 2 * sum(W**2)``). The gradient is computed in the network's dtype
    (a float32 network gives float32-accurate values, returned as float64). ``n_calls`` counts the evaluations.
    The passes are those of ``MLP.value_and_grad`` (training mode, no dropout; batch norm's running statistics
    are not updated: see ``fastbp.reference.batch_statistics``). The data attributes ``X``, ``Y2d``,
    ``labels`` and ``sw``, and ``net``, are read-only. ``X``, ``Y`` (targets) and ``sample_weight`` are kept by
    reference when they already have the network's dtype and are C-contiguous: a later change to them changes the
    objective and is not checked again. Class labels are copied.
    """

    def __init__(self, net, X, Y, sample_weight=None):
        self._net = net
        self._X, self._Y2d, self._labels = net.check_batch(X, Y)
        # Labels index the outputs in compiled code: a copy of its own, read-only, so that a label changed in the
        # caller's array after this check cannot reach outside the buffers.
        self._labels = self._labels.copy()
        self._labels.flags.writeable = False
        net._check_batch_norm_rows(self._X.shape[0])
        self._sw, self._sw_scale = v.check_sample_weight(sample_weight, self._X.shape[0], net.dtype, return_scale=True)
        self._grad = np.empty(net.n_params, dtype=net.dtype)
        self.n_calls = 0
        self._new_addresses()

    # The validated data, read-only: the compiled call reads them at the addresses taken once (_new_addresses), so
    # another array in their place would be read as the old one's shape and dtype. Other data: a new objective.
    net = property(lambda self: self._net, doc="The network whose parameters each call sets (read-only too).")
    X = property(lambda self: self._X, doc="The inputs, (n, n_in) C-contiguous of the network's dtype.")
    Y2d = property(lambda self: self._Y2d, doc="The (n, n_out) targets of the network's dtype, or (0, n_out).")
    labels = property(lambda self: self._labels, doc="The (n,) int64 class labels (a softmax output), or (0,).")
    sw = property(lambda self: self._sw, doc="The (n,) sample weights of the network's dtype, or (0,) for none.")

    def _new_addresses(self):
        # The batch as the checked entry point takes it (kernels/checked.py).
        self._batch = np.array(self.net._entry_batch(self._X, self._Y2d, self._labels, self._sw), dtype=np.int64)
        self._p_batch = self._batch.ctypes.data
        self._p_grad = 0 if self.net.dtype == np.float64 else self._grad.ctypes.data  # 0: into the returned array

    def __getstate__(self):
        # The addresses name this object's arrays: a copy (copy.deepcopy, pickle) that kept them would read the
        # original's data and write its gradient buffer, or freed memory. The copy takes its own.
        state = self.__dict__.copy()
        for name in ("_batch", "_p_batch", "_p_grad"):
            del state[name]
        return state

    def __setstate__(self, state):
        self.__dict__.update(v.writeable_arrays(state, ("_grad",)))
        self._new_addresses()

    def __call__(self, theta):
        net = self.net
        if net._fast:  # one compiled call, which checks theta (kernels/checked.py)
            grad = np.empty(net.n_params)
            lock = net._lock
            lock.acquire()  # not ``with``: see MLP.value_and_grad
            try:
                status, loss = net._entries.objective(
                    net._marker, net._p_table, self._p_batch, id(theta), id(grad), self._p_grad, net.l2
                )
            finally:
                lock.release()
            if status == _checked.OK:
                self.n_calls += 1
                return loss, grad
        theta = v.as_array(theta, "theta")
        if theta.shape != (net.n_params,):
            raise ValueError(f"theta must have shape ({net.n_params},) like net.params, got {theta.shape}")
        theta = v.as_float_array(theta, "theta", net.dtype, 1)  # real, finite, within the dtype's range
        # theta set and its gradient computed under one hold of the network's lock, into an array of this call's
        # (other threads may call the objective too)
        grad = np.empty(net.n_params, dtype=net.dtype)
        loss = net._value_and_grad_checked(self._X, self._Y2d, self._labels, self._sw, grad, params=theta)
        self.n_calls += 1
        return loss, grad.astype(np.float64, copy=False)  # a new array: scipy keeps references to returned gradients


def value_and_grad_flat(net, theta, X, Y, sample_weight=None):
    """Loss and gradient of ``net`` at the flat parameter vector ``theta``, for ``scipy.optimize``.

    Parameters
    ----------
    net : MLP
        Its parameters are set to ``theta`` (cast to the network's dtype) and stay so.
    theta : array (n_params,), float64 (any real dtype is accepted)
    X : array (n, n_in)
    Y : array (n, n_out), or (n,) class labels for a softmax output
    sample_weight : array (n,), optional

    Returns
    -------
    loss : float
        Mean loss over (X, Y) plus ``net.l2 / 2 * sum(W**2)``.
    grad : ndarray (n_params,) of float64

    Example: ``scipy.optimize.minimize(lambda t: value_and_grad_flat(net, t, X, y), net.params.astype(float),
    jac=True, method="L-BFGS-B")``. Each call validates X and Y; ``FlatObjective`` does that once.
    """
    return FlatObjective(net, X, Y, sample_weight)(theta)
