"""The training loop in compiled code: a whole epoch per call, and evaluation of a data set.

Each step gathers its mini-batch (rows ``perm[start:stop]``) into the workspace, computes loss and gradient
(drivers.py), and takes one optimizer step with its checks (step.py). Python is called once per epoch.

Divergence: the parameters are updated "ping-pong" between ``params`` and ``spare`` (the update reads one and
writes the other, so it costs no extra memory traffic), which keeps the parameters of the previous step at hand.
When a loss diverges (step.py), the parameters it was computed from are dropped and the previous ones are restored;
when a gradient is not finite, no update is made. Either way ``params`` ends with the parameters of the last step
whose loss was finite; the running statistics of batch norm go back to their values before the step that diverged.
After a normal return ``params`` holds the current parameters and ``spare`` the previous
step's (after a divergence, ``spare`` holds no useful values).
"""

import numpy as np

from .._config import kernel, leaf
from .activations import SOFTMAX
from .boundary import _array1d, _array2d, _batch_arrays, _network_arrays, _workspace_arrays
from .drivers import _input_twin, _refresh_twin, _value_and_grad
from .forward import _forward_to_logits
from .layout import ACTIVATION, FAN_OUT, _copy, _rows_view
from .loss import BINARY_CROSS_ENTROPY, CLIPPED, _output_delta
from .step import NONFINITE_GRADIENT, OK, _step


@leaf
def _gather_batch(X, Y, labels, sw, perm, start, stop, Xb, Yb, lb, swb):
    """Copy rows ``perm[start:stop]`` of X, of Y (or labels) and of the sample weights into the batch buffers;
    returns the batch views. When those rows are consecutive (an epoch without shuffling), returns views of the
    data instead and copies nothing.

    NumPy: ``idx = perm[start:stop]; return X[idx], Y[idx] (or Y[:0]), labels[idx] (or labels[:0]), sw[idx] (or
    sw[:0])``. Xb, Yb: 1-D float buffers of at least m * n_in and m * n_out; lb: 1-D int64 of at least m; swb:
    1-D float of at least m (or empty, with sw empty). Thread-safe for distinct buffers.
    """
    m = stop - start
    n_in = X.shape[1]
    n_out = Y.shape[1]
    first = perm[start]
    contiguous = True
    for r in range(1, m):
        if perm[start + r] != first + r:
            contiguous = False
            break
    if contiguous:  # rows in order (no shuffling, or a subset in order): views of the data, nothing to copy
        stop_row = first + m
        Yv = Y[first:stop_row] if labels.shape[0] == 0 else Y[:0]
        lv = labels[first:stop_row] if labels.shape[0] > 0 else labels[:0]
        return X[first:stop_row], Yv, lv, sw[first:stop_row] if sw.shape[0] > 0 else sw[:0]
    Xv = _rows_view(Xb, m, n_in)
    for r in range(m):
        _copy(X[perm[start + r]], Xv[r])
    if labels.shape[0] > 0:
        Yv = _rows_view(Yb, 0, n_out)
        lv = lb[:m]
        for r in range(m):
            lv[r] = labels[perm[start + r]]
    else:
        Yv = _rows_view(Yb, m, n_out)
        lv = lb[:0]
        for r in range(m):
            _copy(Y[perm[start + r]], Yv[r])
    if sw.shape[0] > 0:
        swv = swb[:m]
        for r in range(m):
            swv[r] = sw[perm[start + r]]
    else:
        swv = swb[:0]
    return Xv, Yv, lv, swv


@leaf
def _swap(a, b):
    """Exchange the contents of two equal-length 1-D arrays in one pass (NumPy: ``a[:], b[:] = b.copy(),
    a.copy()``). Thread-safe for distinct arrays."""
    for i in range(a.shape[0]):
        t = a[i]
        a[i] = b[i]
        b[i] = t


# Entry points from Python (addresses instead of arrays: see boundary.py).


@kernel
def _train_epoch_entry(
    marker,
    network,
    run,
    loss_code,
    batch,
    workspace,
    p_spare,
    p_grads,
    p_perm,
    n_perm,
    batch_size,
    l2,
    kind,
    p_hyper,
    n_hyper,
    schedule_code,
    p_schedule,
    n_schedule,
    lr,
    clip_norm,
    t0,
    p_state,
    n_state,
    p_Xb,
    p_Yb,
    p_lb,
    p_swb,
    p_sq_norms,
    max_loss,
):
    """One epoch of mini-batch training; returns ``(status, summed loss, steps done)``.

    NumPy: ``for each batch idx of perm: loss, g = value_and_grad(X[idx], Y[idx]); params = step(params, g)``.
    The summed loss is sum of batch loss x batch size over the steps done (divide by their samples for the mean). A
    batch whose sample weights are all zero is skipped (no step); the summed loss of a completed epoch is then scaled
    to the k rows of perm (divide by k for the mean over the rows of the steps done).
    status: a status of step.py, OK or why training stopped there (see the module docstring for which parameters
    are kept).

    The arrays are at the given addresses (boundary.py): the network's (params, the weights' bfloat16 twin params16
    kept in step with the parameters by each update or empty, layout (L, 12), the GEMMs of gemm.py, buffers: the
    running statistics followed by as many values of scratch, where they are kept before each step and put back when
    the step diverges), the batch (X (n, n_in); Y (n, n_out), or (0, n_out) with labels (n,) int64; sw (n,) sample
    weights or (0,): each batch's loss is then the weighted mean) and the workspace for batch_size rows
    (drivers.py); p_spare, p_grads: (n_params,), spare is an output; p_perm: (n_perm,) int64 row indices, the
    epoch's order (a permutation of the rows, or any subset); batch_size: int >= 1; l2: float; kind, p_hyper,
    schedule_code, p_schedule, lr, clip_norm, t0, p_state: the optimizer (see :mod:`.optimizers`; clip_norm 0 for
    none; t0 the steps done before this epoch; state (n_state, n_params), in place); run: the run flags (layers.py),
    whose step is set to each step's number (the rows' ids are their indices in X, from perm); p_Xb, p_Yb, p_lb,
    p_swb: the batch buffers (batch_size rows); p_sq_norms: (L,) float64, output, summed squared per-layer gradient
    norms of the steps; max_loss: float, a larger batch loss counts as divergence. Not thread-safe.
    """
    params, params16, layout, gemm, buffers = _network_arrays(network, marker)
    X, Y, labels, sw = _batch_arrays(batch, marker)
    work, work16 = _workspace_arrays(workspace, marker)
    n_params, n_in, n_out = params.shape[0], X.shape[1], Y.shape[1]
    _refresh_twin(params, params16, layout)
    hyper = _array1d(p_hyper, n_hyper, np.float64(0))
    schedule = _array1d(p_schedule, n_schedule, np.float64(0))
    state = _array2d(p_state, n_state, n_params, marker)
    spare = _array1d(p_spare, n_params, marker)
    grads = _array1d(p_grads, n_params, marker)
    perm = _array1d(p_perm, n_perm, np.int64(0))
    Xb, Yb = _array1d(p_Xb, batch_size * n_in, marker), _array1d(p_Yb, batch_size * n_out, marker)
    lb = _array1d(p_lb, batch_size, np.int64(0))
    swb = _array1d(p_swb, batch_size if sw.shape[0] > 0 else 0, marker)
    sq_norms = _array1d(p_sq_norms, layout.shape[0], np.float64(0))
    n = perm.shape[0]
    loss_sum = 0.0
    status = OK
    steps = 0
    cur, nxt = params, spare
    cur_is_params = True
    half = buffers.shape[0] // 2
    live, saved = buffers[:half], buffers[half:]
    rows_done = 0
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        Xv, Yv, lv, swv = _gather_batch(X, Y, labels, sw, perm, start, stop, Xb, Yb, lb, swb)
        if swv.shape[0] > 0:
            weight = 0.0
            for i in range(swv.shape[0]):
                weight += swv[i]
            if weight == 0.0:  # a weighted mean of no weight: no step (fastbp.sklearn and scikit-learn skip it too)
                continue
        # np.int64(0), not 0: a literal would be typed Literal[int](0) and compile a second specialization
        run_t = (run[0], run[1], run[2], run[3], t0 + steps)
        ids = perm[start:stop]
        if run[1] != 0:  # the running statistics before the step, to put back if it diverges
            _copy(live, saved)
        loss = _value_and_grad(
            gemm,
            cur,
            params16,
            grads,
            layout,
            loss_code,
            Xv,
            Yv,
            lv,
            swv,
            l2,
            1.0,
            np.int64(0),
            work,
            work16,
            buffers,
            run_t,
            ids,
        )
        status = _step(
            loss,
            max_loss,
            kind,
            hyper,
            schedule_code,
            schedule,
            lr,
            clip_norm,
            t0 + steps,
            layout,
            cur,
            grads,
            state,
            nxt,
            params16,
            sq_norms,
        )
        if status != OK:
            if run[1] != 0:
                _copy(saved, live)
            if status != NONFINITE_GRADIENT:  # cur gave a diverged loss: back to the previous step's parameters
                cur, nxt = nxt, cur
                cur_is_params = not cur_is_params
            break
        cur, nxt = nxt, cur
        cur_is_params = not cur_is_params
        loss_sum += loss * (stop - start)
        rows_done += stop - start
        steps += 1
    if not cur_is_params:
        _swap(params, spare)
    if status == OK and 0 < rows_done < n:  # batches skipped: the mean over the rows of the steps done, times n
        loss_sum *= n / rows_done
    return status, loss_sum, steps


@kernel
def _evaluate_entry(marker, network, run, loss_code, batch, workspace):
    """Summed loss (without the L2 term) and number of correct predictions over a data set, in chunks; both
    weighted by the sample weights sw (n,) when given (sw (0,): unit weights).

    NumPy: ``P = predict(X); loss = per-sample losses summed; correct = (argmax P == y).sum()`` for softmax,
    ``(all((P > 0.5) == (Y > 0.5), axis=1)).sum()`` (subset accuracy) for sigmoid + binary cross-entropy, 0
    otherwise. The arrays are at the given addresses (boundary.py): X: (n, n_in); Y/labels as for
    :func:`_value_and_grad`; the workspace is overwritten, its size sets the chunk. Returns (float64, float64). Not
    thread-safe for a shared workspace.
    """
    params, params16, layout, gemm, buffers = _network_arrays(network, marker)
    X, Y, labels, sw = _batch_arrays(batch, marker)
    work, work16 = _workspace_arrays(workspace, marker)
    _refresh_twin(params, params16, layout)
    acts, delta, _, _, aux, sums = work
    ids = layout[0, :0]
    n = X.shape[0]
    L = layout.shape[0]
    width = 0
    max_width = 1
    for l in range(L):
        width += layout[l, FAN_OUT]
        max_width = max(max_width, layout[l, FAN_OUT])
    chunk = max(1, min(acts.shape[0] // width, delta.shape[0] // max_width))
    n_out = layout[L - 1, FAN_OUT]
    code = layout[L - 1, ACTIVATION]
    no_db = delta[:0]
    loss = 0.0
    correct = 0.0
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        m = stop - start
        Xc = X[start:stop]
        P, b = _forward_to_logits(
            gemm, params, params16, layout, Xc, _input_twin(Xc, work16), acts, work16[1], (buffers, aux, sums, run, ids)
        )
        Yv = Y[start:stop] if Y.shape[0] > 0 else Y
        lv = labels[start:stop] if labels.shape[0] > 0 else labels
        swv = sw[start:stop] if sw.shape[0] > 0 else sw
        off = np.int64(0)  # no bias gradient, no accumulation (typed int64 like the other call sites)
        loss += _output_delta(P, b, Yv, lv, swv, code, loss_code, 1.0, _rows_view(delta, m, n_out), no_db, off, off)
        for i in range(m):
            w_i = swv[i] if swv.shape[0] > 0 else 1.0
            if code == SOFTMAX:
                best = 0
                for j in range(1, n_out):
                    if P[i, j] > P[i, best]:
                        best = j
                truth = lv[i] if lv.shape[0] > 0 else np.argmax(Yv[i])
                if best == truth:
                    correct += w_i
            elif loss_code & ~CLIPPED == BINARY_CROSS_ENTROPY:
                ok = True
                for j in range(n_out):
                    ok = ok and ((P[i, j] > 0.5) == (Yv[i, j] > 0.5))
                if ok:
                    correct += w_i
    return loss, correct
