"""The trainer: a thin Python loop over epochs around the compiled epoch kernel."""

import contextlib
import math
import time
import warnings

import numpy as np
from tqdm.auto import tqdm

from . import _tuning, optim, reference
from . import _validation as v
from . import data as _data
from .kernels import checked as _checked
from .kernels import epoch as _epoch
from .kernels import step as _kstep
from .optim import Adam, Cosine, Optimizer


class DivergenceError(RuntimeError):
    """Training diverged: a non-finite loss or gradient, or a batch loss above ``divergence_factor`` times the initial
    loss; the network keeps its last finite parameters."""


_NO_WEIGHTS = np.zeros(0)  # unit sample weights (an empty array: the kernels' fast path)

# The methods train_step and evaluate go through: the checked entry points (kernels/checked.py) take their place only
# when a subclass overrides none of them.
_STEP_METHODS = ("_guard", "_prepare_step", "_before_step", "_train_step", "_run_epoch", "_run", "_begin_run")
_EVALUATE_METHODS = ("_evaluate", "_sums", "_metrics")


def _address(a):
    return a.ctypes.data if a.size else 0


def _spread(n, count):
    """Up to ``count`` row indices spread evenly over n rows (int64, sorted, unique): the first and last row
    included, so that sorted data still gives representative rows."""
    return np.unique(np.linspace(0, n - 1, min(n, count)).astype(np.int64))


class _Data:
    """A validated data set as the kernels take it: X (n, n_in); Y2d (n, n_out) targets, or an empty (0, n_out)
    array beside labels (n,) int64 class labels (else labels is empty); sw (n,) sample weights, or empty for unit
    weights. The distributed trainer's subclass holds one rank's part of a data set (``rows`` maps a global batch
    to the local rows of this part); here the part is the whole set."""

    def __init__(self, X, Y2d, labels, sw, uses_labels=None):
        self.X, self.Y2d, self.labels, self.sw = X, Y2d, labels, sw
        self.n = X.shape[0]
        self.weighted = bool(sw.size)
        self.uses_labels = bool(labels.size) if uses_labels is None else uses_labels

    def arrays(self):
        return self.X, self.Y2d, self.labels, self.sw

    def local(self):
        """This part's rows of the whole set, (X, Y2d, labels, sw): here every row."""
        return self.arrays()

    def rows(self, batch):
        """Local row indices (int64) of this part's rows of the global rows ``batch``: here all of them."""
        return batch

    def take(self, rows):
        """(X, Y2d, labels, sw) of the local ``rows`` (indices or a slice), contiguous."""
        X = np.ascontiguousarray(self.X[rows])
        Y2d = self.Y2d if self.labels.size else np.ascontiguousarray(self.Y2d[rows])
        labels = np.ascontiguousarray(self.labels[rows]) if self.labels.size else self.labels
        sw = np.ascontiguousarray(self.sw[rows]) if self.sw.size else self.sw
        return X, Y2d, labels, sw


class _ValidationSplitError(ValueError):
    """``validation_split`` leaves a part too small (the command line names its --val-split)."""


def _classifies(net):
    """Whether ``net`` is a classifier: a softmax output, or a sigmoid's with a binary cross-entropy."""
    return net.output == "softmax" or net.loss in ("binary_cross_entropy", "binary_log_loss")


class Trainer:
    """Mini-batch training of an ``fastbp.MLP`` with an optimizer, one compiled call per epoch.

    Parameters
    ----------
    net : MLP
    optimizer : Optimizer, default Adam()
    batch_size : int, default 32
        Rows per step. ``fit`` on fewer training rows than this trains on all of them as one batch per epoch, with a
        UserWarning that says so (scikit-learn's MLP estimators clip it the same way).
    seed : int or None, default 0
        Seeds the shuffling of every epoch (and the validation split): equal seeds give equal runs.
    progress : bool, default True
        tqdm progress bar over epochs; shown only on a terminal.
    callbacks : sequence of callables ``callback(trainer, epoch, logs)``
        Called after every epoch with that epoch's entries of the history; returning True stops training.
    divergence_factor : float or None, default 1e6
        ``fit`` stops with DivergenceError when a batch loss exceeds this factor times the initial loss (at least
        1), or is NaN/inf. Stable log-sum-exp keeps the loss of a diverged network finite, so a NaN check alone
        misses most divergence. None: stop on NaN/inf only.
    early_stopping : bool, default False
        Stop when the monitored loss (validation loss if there is validation data, else training loss) has not
        improved by more than ``min_delta`` for ``patience`` epochs; with ``restore_best`` the parameters of the
        best epoch (and its running statistics of batch norm) are put back at the end.
    patience : int, default 10
        Epochs without improvement before early stopping stops.
    min_delta : float, default 0.0
        The improvement of the monitored loss that counts as one.
    restore_best : bool, default True
        Early stopping puts back the parameters of the best epoch.
    record_deltas : bool, default False
        Also record ``history["delta_norm"]``: after every epoch, the L2 (Frobenius) norm of each layer's error
        ``delta[l] = dC/dZ[l]`` on a fixed probe batch (up to 256 training rows spread evenly over the data), by
        the NumPy reference (``fastbp.reference.deltas``; the compiled loop does not keep delta). Cost: one
        NumPy forward and backward pass over the probe batch per epoch, about the work of a few training steps.

    Attributes
    ----------
    net : MLP
        The network trained (read-only: one trainer per network).
    optimizer : Optimizer
        The optimizer; another one may be assigned (a callback's assignment applies from the next epoch).
    history : dict of lists, new for each ``fit`` call
        ``loss`` (training objective, mean over the epoch's rows: each step's batch loss weighted by its rows),
        ``val_loss`` and ``val_accuracy`` (when validating; argmax accuracy for softmax, subset (exact-match)
        accuracy for multi-label sigmoid outputs),
        ``grad_norm`` (per-layer root-mean-square over the epoch's steps of the gradient's L2 norm), ``delta_norm``
        (per layer, with ``record_deltas``), ``lr``
        (rate of the epoch's last step), ``epoch_time`` (s).
    """

    def __init__(
        self,
        net,
        optimizer=None,
        batch_size=32,
        seed=0,
        progress=True,
        callbacks=(),
        early_stopping=False,
        patience=10,
        min_delta=0.0,
        restore_best=True,
        divergence_factor=1e6,
        record_deltas=False,
    ):
        self._net = net
        self.optimizer = Adam() if optimizer is None else optimizer
        if not isinstance(self.optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastbp optimizer, got {type(optimizer).__name__}")
        self.batch_size = v.check_int(batch_size, "batch_size", minimum=1)
        self.seed = None if seed is None else v.check_int(seed, "seed", minimum=0)
        self.progress = bool(progress)
        try:
            self.callbacks = None if callable(callbacks) else list(callbacks)
        except TypeError:
            self.callbacks = None
        if self.callbacks is None or not all(callable(cb) for cb in self.callbacks):
            raise TypeError(
                "callbacks must be a sequence of callables callback(trainer, epoch, logs) (a list, even of one), got "
                f"{callbacks!r}"
            )
        self.early_stopping = bool(early_stopping)
        self.patience = v.check_int(patience, "patience", minimum=1)
        self.min_delta = v.check_float(min_delta, "min_delta", minimum=0.0)
        self.restore_best = bool(restore_best)
        self.divergence_factor = (
            None if divergence_factor is None else v.check_float(divergence_factor, "divergence_factor", 1.0, True)
        )
        self.record_deltas = v.check_bool(record_deltas, "record_deltas")
        self._rng = np.random.default_rng(self.seed)
        self.history = {}
        self._step_max_loss = None
        dtype = net.dtype
        self._spare = net.params.copy()
        self._grads = self._gradient_buffer()
        self._sq_norms = np.zeros(net.n_layers)
        self.optimizer.init_state(net.n_params, dtype)
        self._new_addresses()
        own = type(self)
        self._checked_step = net._fast and all(getattr(own, m) is getattr(Trainer, m) for m in _STEP_METHODS)
        self._checked_evaluate = net._fast and all(getattr(own, m) is getattr(Trainer, m) for m in _EVALUATE_METHODS)

    net = property(
        lambda self: self._net,
        doc="The network trained (read-only: the trainer's buffers are sized for it; make a Trainer per network).",
    )

    # ------------------------------------------------------------------ buffers
    def _new_addresses(self):
        """No mini-batch buffers yet, no cached buffer addresses, and an empty table for the checked train_step
        (kernels/checked.py), filled by the first step that can take it (see _fill_table)."""
        self._rows = 0
        self._Xb = self._Yb = self._swb = np.empty(0, dtype=self.net.dtype)
        self._lb = self._perm = np.empty(0, dtype=np.int64)
        self._addresses = ((), (), ())  # (buffers, their ids, their addresses): see _buffer_addresses
        self._table = np.zeros(_checked.TRAINER_TABLE_SIZE, dtype=np.int64)
        self._p_table, self._table_key = self._table.ctypes.data, None

    def __getstate__(self):
        # The table and the cached addresses name this object's buffers: a copy (copy.deepcopy, pickle, joblib) that
        # kept them would read and write the original's memory, or freed memory. The mini-batch buffers hold copies
        # of training rows, which a saved trainer must not carry. The copy makes its own on its first step.
        state = self.__dict__.copy()
        for name in ("_Xb", "_Yb", "_lb", "_swb", "_perm", "_addresses", "_table", "_p_table", "_table_key"):
            del state[name]
        return state

    def __setstate__(self, state):
        self.__dict__.update(v.writeable_arrays(state, ("_spare", "_grads", "_sq_norms")))
        self._new_addresses()

    def _gradient_buffer(self):
        """The flat gradient buffer the steps write (called once, by the constructor)."""
        return np.zeros(self.net.n_params, dtype=self.net.dtype)

    def _reserve(self, rows):
        net = self.net
        net._reserve(rows)
        if rows > self._rows:
            self._Xb = np.empty(rows * net.n_in, dtype=net.dtype)
            self._Yb = np.empty(rows * net.n_out, dtype=net.dtype)
            self._lb = np.empty(rows, dtype=np.int64)
            self._swb = np.empty(rows, dtype=net.dtype)
            self._perm = np.arange(rows, dtype=np.int64)
            self._rows = rows
            self._table_key = None  # the checked train_step's table names the old buffers

    def _run(self, X, Y2d, labels, perm, batch_size, schedule, max_loss=math.inf, sw=_NO_WEIGHTS):
        """One call of the compiled epoch loop over rows ``perm`` of (X, Y2d/labels, sample weights sw or empty).
        Returns (status, loss_sum, steps); parameters, optimizer state and ``_sq_norms`` are updated."""
        net, opt = self.net, self.optimizer
        hyper, schedule_params = opt.hyper(), schedule.params()
        n = perm.shape[0]
        net._check_batch_norm_rows(n, "a mini-batch", batch_size)
        # Everything that may replace a buffer whose address the kernel gets happens under the network's lock,
        # so no other call on this network can be running in those buffers.
        with net._lock:
            state = self._begin_run(batch_size)
            spare, grads, state_, Xb, Yb, lb, swb, sq_norms = self._buffer_addresses(state)
            status, loss_sum, steps = _epoch._train_epoch_entry(
                net._marker,
                net._entry_network,
                net._run(True, update_stats=True, dropout=True),
                net._loss_code,
                net._entry_batch(X, Y2d, labels, sw),
                net._entry_workspace,
                spare,
                grads,
                _address(perm),
                perm.shape[0],
                batch_size,
                net.l2,
                opt.kind,
                _address(hyper),
                hyper.size,
                schedule.code,
                _address(schedule_params),
                schedule_params.size,
                opt.lr,
                opt.clip_norm,
                opt.t,
                state_,
                state.shape[0],
                Xb,
                Yb,
                lb,
                swb,
                sq_norms,
                max_loss,
            )
            opt.t += steps
        return status, loss_sum, steps

    def _buffer_addresses(self, state):
        """Addresses of the buffers the compiled loop writes: spare, grads, the optimizer state, the batch buffers
        and the gradient norms. Taken again only when a buffer was replaced (each address costs a microsecond or so,
        a noticeable part of a call at small shapes). The cache holds the buffers themselves, so no other object can
        take their ids while they are cached: equal ids then mean the same buffers. (Ids, not the objects: a deep
        copy or a pickle copies the cache with its old addresses, and an identity test against the copied buffers
        would pass.)"""
        buffers = (self._spare, self._grads, state, self._Xb, self._Yb, self._lb, self._swb, self._sq_norms)
        ids = tuple(map(id, buffers))
        _, cached_ids, addresses = self._addresses
        if ids != cached_ids:
            addresses = tuple(_address(b) for b in buffers)
            self._addresses = (buffers, ids, addresses)
        return addresses

    def _begin_run(self, rows):
        """Before a run of steps on batches of up to ``rows`` rows, under the network's lock: the optimizer's state
        (returned), the buffers, zeroed gradient norms, and the spare parameters' frozen layers."""
        net = self.net
        state = self.optimizer.init_state(net.n_params, net.dtype)
        self._reserve(rows)
        self._sq_norms[:] = 0.0
        # spare keeps the parameters before the previous step (the fallback on divergence); frozen layers, which the
        # update never writes, must equal the current ones (layers may be frozen between calls)
        for l, trainable in enumerate(net.trainable):
            if not trainable:
                start, stop = net.layer_range(l)
                self._spare[start:stop] = net.params[start:stop]
        return state

    def _run_epoch(self, data, perm, batch_size, schedule, max_loss):
        """The steps over global rows ``perm`` of ``data`` (a _Data) in batches of ``batch_size``. Returns (status,
        loss_sum, steps, logs): logs, extra history entries of the run (none here)."""
        status, loss_sum, steps = self._run(
            data.X, data.Y2d, data.labels, perm, batch_size, schedule, max_loss, data.sw
        )
        return status, loss_sum, steps, {}

    def _raise_divergence(self, status, where, loss_sum, steps, samples, max_loss=math.inf):
        if status == _kstep.LOSS_TOO_LARGE:
            what = f"the loss exceeded {max_loss:.3g} ({self.divergence_factor:g} times its initial value, at least 1)"
        elif status == _kstep.NONFINITE_LOSS:
            what = "the loss became NaN or infinite"
        else:
            what = "the gradient became NaN or infinite"
        last = f" (mean loss of the steps before: {loss_sum / samples:.6g})" if steps else ""
        # The parameters go back to the last finite step; the optimizer's state (velocity, moments, step count)
        # was built by the diverging run, so it is reset too: a retry with a lower rate starts clean. The fallback
        # becomes those parameters: a next step that diverges again keeps them, instead of going back to the ones
        # that diverged (the two buffers would take turns).
        self.optimizer.reset()
        with self.net._lock:  # another thread's step may be writing spare
            np.copyto(self._spare, self.net.params)
        summary = f"training diverged {where}: {what} after {steps} step{'' if steps == 1 else 's'} of this call{last}."
        err = DivergenceError(
            f"{summary} The network keeps the parameters of the last step whose loss was finite, and the optimizer "
            f"state was reset. Lower the learning rate (now {self.optimizer.lr:g}) or set clip_norm."
        )
        err.summary = summary  # what happened, without the advice in Python's terms (the command line gives its own)
        raise err

    def _max_loss(self, data):
        """Loss limit for divergence: divergence_factor x the loss (at least 1) on up to
        ``_tuning.DIVERGENCE_REFERENCE_ROWS`` rows spread evenly over the data set ``data`` (not the first rows:
        sorted data would give an unrepresentative reference)."""
        if self.divergence_factor is None:
            return math.inf
        X, Y2d, labels, sw = data.take(data.rows(_spread(data.n, _tuning.DIVERGENCE_REFERENCE_ROWS)))
        sums = self._sums(X, Y2d, labels, sw)
        if data.weighted and not sums[2] > 0:  # these rows' weights are all zero: count them unweighted
            sums = self._sums(X, Y2d, labels, sw[:0])
        return self.divergence_factor * max(self._metrics(sums)["loss"], 1.0)

    # ------------------------------------------------------------------ hooks of fit and train_step
    # fastbp.distributed.Trainer overrides these to agree on the arguments over the ranks, synchronise them, and
    # reduce what the ranks compute; here they are the single-process steps.
    def _guard(self):
        """Context of the work of fit and train_step (the distributed trainer: abort every rank on an error)."""
        return contextlib.nullcontext()

    def _check_data(self, X, y, sample_weight, names):
        """A _Data of fit's, train_step's or evaluate's arrays, checked and converted."""
        X, Y2d, labels = self.net.check_batch(X, y, names=names)
        return _Data(X, Y2d, labels, v.check_sample_weight(sample_weight, X.shape[0], self.net.dtype))

    def _check_fit_args(self, X, y, epochs, validation_data, validation_split, sample_weight, **options):
        """fit's arguments checked: (epochs, train _Data, validation _Data or None). options go to _check_data."""
        epochs = v.check_int(epochs, "epochs", minimum=1)
        train = self._check_data(X, y, sample_weight, ("X", "y"), **options)
        validation_split = v.check_float(validation_split, "validation_split", minimum=0.0)
        if validation_split >= 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        if validation_data is not None and validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (X_val, y_val)")
            val = self._check_data(*validation_data, None, ("validation_data[0]", "validation_data[1]"), **options)
        elif validation_split:
            *arrays, held = self._split(*train.arrays(), validation_split)
            train, val = _Data(*arrays), _Data(*held)
        return epochs, train, val

    def _prepare_fit(self, X, y, epochs, validation_data, validation_split, sample_weight):
        """(epochs, train, val) of fit's arguments: train and val (or None) as _run_epoch and _evaluate take them."""
        return self._check_fit_args(X, y, epochs, validation_data, validation_split, sample_weight)

    def _prepare_step(self, X_batch, Y_batch, sample_weight):
        """train_step's batch as a _Data."""
        return self._check_data(X_batch, Y_batch, sample_weight, ("X", "Y"))

    def _before_fit(self):
        """After the checks of fit, before its schedule is built (the distributed trainer synchronises here)."""

    def _before_step(self):
        """After the checks of train_step, before its step."""

    def _probe_batch(self, train):
        """The fixed probe batch of ``record_deltas``: up to ``_tuning.PROBE_ROWS`` rows spread over the training data,
        as (X, labels or Y2d)."""
        X, Y2d, labels, _ = train.take(train.rows(_spread(train.n, _tuning.PROBE_ROWS)))
        return X, (labels if train.uses_labels else Y2d)

    def _end_epoch(self, stop):
        """After an epoch's history and callbacks; ``stop``: a callback or early stopping asks to stop. Returns
        whether to stop."""
        return stop

    # ------------------------------------------------------------------ public
    def train_step(self, X_batch, Y_batch, sample_weight=None):
        """One optimizer step on the batch, for callers who drive their own loop; returns the batch loss (float).

        X_batch: (m, n_in); Y_batch: (m, n_out) or (m,) labels; sample_weight: (m,) or None (the batch loss is then
        the weighted mean). Same checks and divergence handling as ``fit``. Dropout masks are keyed by the rows'
        positions in the batch (``fit`` keys them by the rows' indices in the data set).
        """
        # The common case in one compiled call, which checks the arrays (kernels/checked.py); anything else (the
        # first step, a conversion, an error to raise, buffers to grow) takes the Python path.
        if self._checked_step:
            opt, net = self.optimizer, self.net
            status = _checked.CHECK
            lock = net._lock  # the table names buffers that another call may replace; the step count is read and
            lock.acquire()  # advanced under it too (steps from several threads) -- not ``with``: see MLP.value_and_grad
            try:
                t = opt.t
                key = self._table_key
                if (type(t) is int and 0 <= t <= optim.MAX_STEPS) and (  # else init_state says what is wrong
                    (key is not None and key[0] is opt and key[1] is opt.state and key[2] == optim.CHANGES[0])
                    or self._fill_table()
                ):
                    status, loss_sum, steps, m = net._entries.train_step(
                        net._marker,
                        net._p_table,
                        self._p_table,
                        id(X_batch),
                        id(Y_batch),
                        0 if sample_weight is None else id(sample_weight),
                        net.l2,
                        opt.kind,
                        self._schedule_code,
                        opt.lr,
                        opt.clip_norm,
                        t,
                        net.dropout_seed,
                        self._step_max_loss,
                    )
                    if status != _checked.CHECK:
                        opt.t = t + steps
            finally:
                lock.release()
            if status != _checked.CHECK:
                if status != _kstep.OK:
                    where = f"at step {t + steps + 1}"  # this call's step, whatever other threads did since
                    self._raise_divergence(status, where, loss_sum, steps, m, self._step_max_loss)
                return loss_sum / m
        return self._train_step(X_batch, Y_batch, sample_weight)

    def _fill_table(self):
        """Fill the table of the checked train_step (kernels/checked.py) for the current optimizer, its state and
        hyper-parameters, and the trainer's buffers, under the network's lock; returns whether train_step can take it
        now: not before the first step (which sets the divergence limit and the buffers), nor while the optimizer's
        state does not fit the network (the Python path allocates it), nor with a Cosine schedule without total_steps
        (train_step refuses it). The key it records keeps the state it names alive."""
        opt, net = self.optimizer, self.net
        state, schedule = opt.state, opt.schedule
        if (
            self._step_max_loss is None
            or self._rows == 0
            or not isinstance(state, np.ndarray)
            or state.shape != (opt.n_state, net.n_params)
            or state.dtype != net.dtype
            or optim._state_flaw(state) is not None  # init_state says what
            or (isinstance(schedule, Cosine) and schedule.total_steps is None)
        ):
            return False
        self._hyper, self._schedule_params, self._schedule_code = opt.hyper(), schedule.params(), schedule.code
        buffers = (self._spare, self._grads, state, self._hyper, self._schedule_params)
        buffers += (self._Xb, self._Yb, self._lb, self._swb, self._sq_norms, self._perm)
        a = [_address(b) for b in buffers]
        t = self._table
        t[_checked.SPARE], t[_checked.GRADS], t[_checked.STATE], t[_checked.STATE_ROWS] = a[0], a[1], a[2], len(state)
        t[_checked.HYPER], t[_checked.N_HYPER] = a[3], self._hyper.size
        t[_checked.SCHEDULE], t[_checked.N_SCHEDULE] = a[4], self._schedule_params.size
        t[_checked.XB], t[_checked.YB], t[_checked.LB], t[_checked.SWB] = a[5:9]
        t[_checked.SQ_NORMS], t[_checked.PERM], t[_checked.ROWS] = a[9], a[10], self._rows
        self._table_key = (opt, state, optim.CHANGES[0])
        return True

    def _train_step(self, X_batch, Y_batch, sample_weight, **options):
        with self._guard():
            data = self._prepare_step(X_batch, Y_batch, sample_weight, **options)
            self._before_step()
            m = data.n
            if self._step_max_loss is None:  # the first train_step sets the reference for divergence
                self._step_max_loss = self._max_loss(data)
            perm = np.arange(m, dtype=np.int64)
            status, loss_sum, steps, _ = self._run_epoch(data, perm, m, self._schedule(None), self._step_max_loss)
        if status != _kstep.OK:
            self._raise_divergence(status, f"at step {self.optimizer.t + 1}", loss_sum, steps, m, self._step_max_loss)
        return loss_sum / m

    def _schedule(self, total_steps):
        """The optimizer's schedule, with a Cosine schedule's missing length set to ``total_steps``."""
        schedule = self.optimizer.schedule
        if isinstance(schedule, Cosine) and schedule.total_steps is None:
            if total_steps is None:
                raise ValueError("a Cosine schedule without total_steps needs fit(), which knows the epochs")
            return Cosine(total_steps=max(total_steps, 1), lr_min=schedule.lr_min)
        return schedule

    def evaluate(self, X, y, sample_weight=None):
        """Mean loss (with the L2 term) and accuracy on a data set: argmax accuracy for softmax, subset accuracy for
        sigmoid + binary cross-entropy, None otherwise.

        X: (n, n_in); y: (n, n_out) or (n,) labels; sample_weight: (n,) or None (weighted mean loss and accuracy).
        Returns ``{"loss": float, "accuracy": float or None}``.
        """
        if self._checked_evaluate:  # one compiled call, which checks the arrays (kernels/checked.py)
            net = self.net
            lock = net._lock
            lock.acquire()  # not ``with``: see MLP.value_and_grad
            try:
                status, loss_sum, correct = net._entries.evaluate(
                    net._marker, net._p_table, id(X), id(y), 0 if sample_weight is None else id(sample_weight)
                )
            finally:
                lock.release()
            if status == _checked.OK:
                total = X.shape[0] if sample_weight is None else float(sample_weight.sum(dtype=np.float64))
                return self._metrics((loss_sum, correct, total))
        X, Y2d, labels = self.net.check_batch(X, y)
        return self._evaluate(X, Y2d, labels, v.check_sample_weight(sample_weight, X.shape[0], self.net.dtype))

    def _evaluate(self, X, Y2d, labels, sw=_NO_WEIGHTS):
        return self._metrics(self._sums(X, Y2d, labels, sw))

    def _sums(self, X, Y2d, labels, sw):
        """(summed loss without the L2 term, correct predictions, total weight) over the rows, weighted by the
        sample weights when given (total: their sum, else the row count); zeros without rows."""
        if X.shape[0] == 0:
            return 0.0, 0.0, 0.0
        net = self.net
        with net._lock:
            net._reserve_chunks(X.shape[0])
            loss_sum, correct = _epoch._evaluate_entry(
                net._marker,
                net._entry_network,
                net._run_evaluation,
                net._loss_code,
                net._entry_batch(X, Y2d, labels, sw),
                net._entry_workspace,
            )
        total = float(sw.sum(dtype=np.float64)) if sw.size else X.shape[0]
        return loss_sum, correct, total

    def _metrics(self, sums):
        """{"loss": mean loss with the L2 term, "accuracy": float or None} from _sums' (loss, correct, total)."""
        loss_sum, correct, total = sums
        net = self.net
        penalty = 0.5 * net.l2 * sum(float(np.dot(W.ravel(), W.ravel())) for W in net.coefs) if net.l2 else 0.0
        return {
            "loss": float(loss_sum / total + penalty),
            "accuracy": float(correct / total) if _classifies(net) else None,
        }

    def fit(self, X, y, epochs=10, validation_data=None, validation_split=0.0, sample_weight=None):
        """Train for ``epochs`` epochs; returns the history (also ``trainer.history``).

        X: (n, n_in); y: (n, n_out) targets or (n,) class labels. validation_data: (X_val, y_val), evaluated after
        every epoch; or validation_split: fraction of (X, y) held out (the rows of ``fastbp.data.split_indices``).
        sample_weight: (n,) non-negative weights, or None; each batch's loss is then the weighted mean.
        Raises DivergenceError when the loss or gradient stops being finite, or a batch loss exceeds
        ``divergence_factor`` times the initial loss (parameters of the last finite step
        are kept).
        """
        return self._fit(X, y, epochs, validation_data, validation_split, sample_weight)

    def _fit(self, X, y, epochs, validation_data, validation_split, sample_weight, **options):
        net, opt = self.net, self.optimizer
        with self._guard():
            epochs, train, val = self._prepare_fit(
                X, y, epochs, validation_data, validation_split, sample_weight, **options
            )
            self._before_fit()
            n = train.n
            batch_size = self._fit_batch_size(n)
            total_steps = opt._check_t() + epochs * math.ceil(n / batch_size)  # a Cosine's length when it has none
            schedule, schedule_of = self._schedule(total_steps), opt.schedule
            np.copyto(self._spare, net.params)
            max_loss = self._max_loss(train)
            history = self.history = {}  # a new history per fit call, as Keras returns
            probe = self._probe_batch(train) if self.record_deltas else None
            monitor = "val_loss" if val is not None else "loss"
            best, best_params, wait, diverged = math.inf, None, 0, None
            # no bar at all without progress: making a disabled one costs as much as a small epoch's steps
            bar = tqdm(range(epochs), desc="train", unit="epoch", disable=None, leave=False) if self.progress else None
            for epoch in range(epochs) if bar is None else bar:
                start = time.perf_counter()
                opt = self.optimizer  # a callback may have set another optimizer, or schedule, for the next epochs
                if opt.schedule is not schedule_of:
                    schedule, schedule_of = self._schedule(total_steps), opt.schedule
                perm = self._rng.permutation(n).astype(np.int64, copy=False)
                status, loss_sum, steps, extra = self._run_epoch(train, perm, batch_size, schedule, max_loss)
                if status != _kstep.OK:
                    diverged = (status, f"in epoch {epoch + 1}", loss_sum, steps, min(n, steps * batch_size))
                    break
                logs = {
                    "loss": loss_sum / n,
                    "grad_norm": np.sqrt(self._sq_norms / steps).tolist(),
                    "lr": schedule(opt.lr, opt.t - 1),
                }
                if self.record_deltas:
                    logs["delta_norm"] = [float(np.linalg.norm(d)) for d in reference.deltas(net, *probe)]
                if val is not None:
                    result = self._evaluate(*val.local())
                    logs["val_loss"] = result["loss"]
                    if result["accuracy"] is not None:
                        logs["val_accuracy"] = result["accuracy"]
                logs["epoch_time"] = time.perf_counter() - start
                logs.update(extra)
                for key, value in logs.items():
                    history.setdefault(key, []).append(value)
                if bar is not None:
                    bar.set_postfix(
                        {k: f"{x:.4g}" for k, x in logs.items() if k in ("loss", "val_loss", "val_accuracy")}
                    )
                stop = any([bool(cb(self, epoch, logs)) for cb in self.callbacks])  # every callback sees every epoch
                if self.early_stopping:
                    if logs[monitor] < best - self.min_delta:
                        best, wait = logs[monitor], 0
                        if self.restore_best:
                            best_params, best_buffers = net.params.copy(), net.buffers.copy()
                    else:
                        wait += 1
                        stop = stop or wait >= self.patience
                if self._end_epoch(stop):
                    break
            if bar is not None:
                bar.close()
        if diverged is not None:
            self._raise_divergence(*diverged, max_loss)
        if best_params is not None:
            net.params[:] = best_params
            net.buffers[:] = best_buffers  # the running statistics of that epoch too
        return history

    def _fit_batch_size(self, n):
        """The batch size of a fit over ``n`` training rows: ``batch_size``, or n with a warning when it is larger
        (scikit-learn's estimators clip it the same way, with a warning)."""
        self.batch_size = v.check_int(self.batch_size, "batch_size", minimum=1)  # it may have been set since
        if self.batch_size <= n:
            return self.batch_size
        warnings.warn(
            f"batch_size={self.batch_size} is larger than the {n} training rows: each epoch is one batch of all {n} "
            "rows (clipped, as scikit-learn's MLP estimators do)",
            UserWarning,
            stacklevel=4,
        )
        return n

    def _split(self, X, Y2d, labels, sw, fraction):
        n = X.shape[0]
        stratify = _data.stratification(labels if labels.size else self._target_classes(Y2d))
        # the part sizes of data.split_indices, checked here to tell the problem in this argument's words
        n_held = math.ceil(fraction * n)
        n_train = n - n_held
        least = 1 if stratify is None else int(np.unique(stratify).size)
        if min(n_held, n_train) < least:
            need = "at least 1 row" if stratify is None else f"at least {least} rows, one per class (stratified)"
            raise _ValidationSplitError(
                f"validation_split={fraction:g} of {n} rows holds out {n_held} and trains on {n_train}: each part "
                f"needs {need}"
            )
        train, held = _data.split_indices(n, fraction, self.seed, stratify)
        sw_train, sw_held = (sw[train], sw[held]) if sw.size else (sw, sw)
        if sw.size and not (sw_train.sum() > 0 and sw_held.sum() > 0):
            raise ValueError("validation_split left a part whose sample weights are all zero")
        if labels.size:
            return X[train], Y2d, labels[train], sw_train, (X[held], Y2d, labels[held], sw_held)
        return X[train], Y2d[train], labels, sw_train, (X[held], Y2d[held], labels, sw_held)

    def _target_classes(self, Y2d):
        """Class labels of a classifying network's target rows of 0s and 1s (one-hot, or a sigmoid's 0/1 columns):
        each distinct row a class, as scikit-learn stratifies 2-D targets; None for other targets."""
        if not _classifies(self.net) or not np.all((Y2d == 0) | (Y2d == 1)):
            return None
        if np.all(Y2d.sum(axis=1) == 1):  # one-hot: the labels themselves, so that the split is theirs
            return np.argmax(Y2d, axis=1)
        return np.unique(Y2d, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)

    def save(self, path, extras=None):
        """Checkpoint the network with this trainer's optimizer state (see ``MLP.save``)."""
        return self.net.save(path, optimizer=self.optimizer, extras=extras)
