"""Data-parallel training over MPI ranks (mpi4py): one process per rank, all ranks hold the same parameters.

Every step, each rank computes the gradient of its part of the global mini-batch, weighted by its share of the
batch's rows (``scale = k_r / m``; with sample weights, its share of the batch's total weight), so that the ranks'
partial gradients SUM to the gradient of the whole batch, L2 term included; then ONE in-place ``Allreduce(SUM)``
over the flat gradient buffer (plus one slot that carries the partial loss) makes the global gradient and loss
available on every rank, and every rank applies the same optimizer update to the same parameters. The result
equals single-process training (:class:`fastbp.Trainer` with the same seed) on the same global batches, up to the
order of floating-point summation.

The step is driven from Python: the compiled value-and-gradient entry point writes into the flat buffer, mpi4py
runs the all-reduce, and the compiled update kernel (the same one the compiled epoch loop calls) updates the
parameters. Calling MPI from inside the compiled epoch loop would need a new compiled loop (a recompilation of
the whole driver, and a cached binding of the MPI library); the Python per-step cost it would save is measured
by ``scripts/mpi_scaling.py`` and stated in the README (about 6 us per step, under 1% of a step of shape M or L).

``mpi4py`` is imported only when a function of this module that needs it is called (importing it starts MPI).
Run under ``mpiexec -n K python -m mpi4py script.py`` (mpi4py aborts the job on an uncaught exception) or use
:func:`abort_on_error`; inside ``fit`` an exception on one rank prints its traceback once and aborts the job
(``MPI_Abort``), so no rank is left waiting in a collective.
"""

import contextlib
import functools
import math
import os
import struct
import sys
import time
import traceback
import zipfile

import numpy as np
from tqdm.auto import tqdm

from . import _validation as v
from .kernels import epoch as _epoch
from .kernels import optimizers as _kopt
from .kernels.drivers import _value_and_grad_entry
from .threads import set_num_threads
from .trainer import DivergenceError
from .trainer import Trainer as _Trainer

__all__ = [
    "RankFailedError",
    "Trainer",
    "abort_on_error",
    "load_shard",
    "mpiexec_path",
    "shard_range",
    "threads_per_rank",
]


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise ImportError(
            "fastbp.distributed needs mpi4py and an MPI library: python -m pip install 'fastbp[mpi]'"
        ) from err
    return MPI


def _world(comm):
    return _mpi().COMM_WORLD if comm is None else comm


class RankFailedError(RuntimeError):
    """Raised on every other rank when a rank failed a check that all ranks make together (bad input on one
    rank, ranks that disagree on the configuration): every rank raises, none is left waiting."""


# ---------------------------------------------------------------------------------------------- failure handling
def _report(err, comm):
    lines = "".join(traceback.format_exception(err))
    sys.stderr.write(
        f"fastbp.distributed: rank {comm.Get_rank()} of {comm.Get_size()} failed; aborting every rank\n{lines}"
    )
    sys.stderr.flush()


@contextlib.contextmanager
def abort_on_error(comm=None, code=1):
    """Context manager: an exception (or Ctrl-C) inside the block prints its traceback from this rank and ends
    every rank of the job with ``MPI_Abort(code)``, as ``python -m mpi4py`` does for an uncaught exception.

    Use it around code where one rank may fail while the others wait in a collective call, which would
    otherwise hang forever. comm: an mpi4py communicator (default ``COMM_WORLD``).
    """
    try:
        yield
    except (Exception, KeyboardInterrupt) as err:
        comm = _world(comm)
        _report(err, comm)
        comm.Abort(code)


def _agree(comm, error, payload=None):
    """Every rank passes its error (or None) and a payload; returns the payloads of all ranks, or raises on
    every rank when any failed: the failing rank its own error, the others RankFailedError naming it."""
    results = comm.allgather((None if error is None else f"{type(error).__name__}: {error}", payload))
    failed = [(rank, message) for rank, (message, _) in enumerate(results) if message is not None]
    if error is not None:
        error.agreed_across_ranks = True  # every rank raises too: nobody waits, no abort needed
        raise error
    if failed:
        rank, message = failed[0]
        raise RankFailedError(f"rank {rank} of {comm.Get_size()} failed: {message}")
    return [payload for _, payload in results]


# ---------------------------------------------------------------------------------------------------- launching
def mpiexec_path():
    """Path of the ``mpiexec`` to launch ranks with: the one the ``mpich`` wheel installs beside this Python's
    scripts (which need not be on PATH, e.g. in a virtual environment that is not activated), else the first on
    PATH; None when there is none. Does not import mpi4py."""
    import shutil
    import sysconfig

    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "mpiexec")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mpiexec")


# ---------------------------------------------------------------------------------------------------- threads
def threads_per_rank(comm=None):
    """Threads for this rank so that the ranks sharing this machine's cores use each core at most once.

    Counts the ranks on this node (``COMM_TYPE_SHARED``) whose CPU affinity (``os.sched_getaffinity``) overlaps
    this rank's, and divides this rank's usable cores among them: 2 unbound ranks on 2 cores get 1 thread each;
    ranks bound to disjoint cores by the launcher get all of their own cores. Collective over ``comm``.
    Returns an int >= 1.
    """
    MPI = _mpi()
    comm = _world(comm)
    if hasattr(os, "sched_getaffinity"):
        cores = frozenset(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS, Windows
        cores = frozenset(range(os.cpu_count() or 1))
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        sets = local.allgather(cores)
    finally:
        local.Free()
    sharing = sum(1 for other in sets if other & cores)
    return max(1, len(cores) // max(sharing, 1))


# ------------------------------------------------------------------------------------------------ data shards
def shard_range(n, rank, size):
    """Rows ``[start, stop)`` of rank ``rank``'s contiguous part of ``n`` rows split over ``size`` ranks (parts
    differ by at most one row; ranks beyond n get none). Returns two ints."""
    return n * rank // size, n * (rank + 1) // size


def _npz_member(path, key):
    """The array ``key`` of an ``.npz`` file as a read-only memory map when it is stored uncompressed (np.savez),
    else None (np.savez_compressed: the member must be decompressed whole)."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(key + ".npy")
        except KeyError:
            raise ValueError(f"{path} has no array {key!r}; it has {sorted(archive.namelist())}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the member's local header: signature, ..., name length, extra length
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: damaged zip member {key!r}")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if fortran_order or dtype.hasobject or not shape:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _idx_map(path):
    """An uncompressed IDX file as a read-only memory map of its declared shape (header checked), or None for a
    gzipped one."""
    from .data import _IDX_TYPES

    if path.endswith(".gz"):
        return None
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
            raise ValueError(f"{path} is not an IDX file (bad magic number)")
        dims = f.read(4 * head[3])
    if len(dims) != 4 * head[3]:
        raise ValueError(f"{path} is truncated: its header is incomplete")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(head[3]))
    dtype = np.dtype(_IDX_TYPES[head[2]])
    offset = 4 + 4 * head[3]
    expected = int(np.prod(shape)) * dtype.itemsize
    if os.path.getsize(path) - offset != expected:
        raise ValueError(f"{path} holds {os.path.getsize(path) - offset} data bytes, its header announces {expected}")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def load_shard(path, labels_path=None, comm=None, rank=None, size=None, x_key="X", y_key="y"):
    """This rank's contiguous part of a data file: rows ``shard_range(n, rank, size)`` of X and y.

    Reads only those rows where the format allows it: an uncompressed ``.npz`` (``np.savez``) and uncompressed
    IDX files are memory-mapped, so a rank reads about 1/size of the file. A compressed ``.npz``, gzipped IDX
    and CSV files are read whole and sliced (a note goes to stderr). Conversions are those of
    :func:`fastbp.data.load_file`: IDX images flattened to float64 (n_rows, pixels) and labels int64; ``.npz``
    arrays as stored; CSV as :func:`fastbp.data.load_csv`. Pass the parts to
    ``Trainer.fit(X, y, sharded=True)``. rank, size: default from ``comm`` (default ``COMM_WORLD``); give both
    to read a part without MPI. Returns ``(X_part, y_part)``, y_part None for an ``.npz`` without ``y_key``.
    """
    if rank is None or size is None:
        comm = _world(comm)
        rank, size = comm.Get_rank(), comm.Get_size()
    rank = v.check_int(rank, "rank", minimum=0)
    size = v.check_int(size, "size", minimum=1)
    if rank >= size:
        raise ValueError(f"rank must be < size, got rank {rank} and size {size}")
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith(".npz"):
        X_map = _npz_member(path, x_key)
        with zipfile.ZipFile(path) as archive:
            has_y = y_key + ".npy" in archive.namelist()
        y_map = _npz_member(path, y_key) if has_y else None
        if X_map is not None and (y_map is not None or not has_y):
            start, stop = shard_range(X_map.shape[0], rank, size)
            y_part = None if y_map is None else np.array(y_map[start:stop])
            return np.array(X_map[start:stop]), y_part
    elif labels_path is not None:
        images, labels = _idx_map(path), _idx_map(os.fspath(labels_path))
        if images is not None and labels is not None:
            if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
                raise ValueError(f"{labels_path} must hold one label per image of {path}")
            start, stop = shard_range(images.shape[0], rank, size)
            X_part = np.asarray(images[start:stop]).reshape(stop - start, -1).astype(np.float64)
            return X_part, np.asarray(labels[start:stop]).astype(np.int64)
    from .data import load_file

    print(f"fastbp.distributed: {path} cannot be read in parts; every rank reads it whole", file=sys.stderr)
    X, y = load_file(path, labels_path, require_y=False)
    start, stop = shard_range(X.shape[0], rank, size)
    return X[start:stop], (None if y is None else y[start:stop])


class _Part:
    """The rows of a data set that this rank holds, and how a global batch maps onto them.

    Replicated (every rank holds all n rows): the rank takes its contiguous part of each batch's row list.
    Sharded (rank r holds global rows [start, stop), ranks in order): the rank takes the batch's rows that fall
    in its shard, a number that varies from batch to batch. Both ways the parts of a batch cover it exactly once.
    X, Y2d, labels, sw: validated arrays as the kernels take them (sw empty: unit sample weights); weighted:
    whether sample weights were given, the same on every rank (sw is empty on a rank without rows).
    """

    def __init__(self, X, Y2d, labels, sw, n, start, rank, size, sharded, weighted):
        self.X, self.Y2d, self.labels, self.sw, self.weighted = X, Y2d, labels, sw, weighted
        self.n, self.start, self.stop = n, start, start + X.shape[0]
        self.rank, self.size, self.sharded = rank, size, sharded

    def rows(self, batch):
        """Local row indices (int64) of this rank's part of the global rows ``batch``."""
        if self.sharded:
            return batch[(batch >= self.start) & (batch < self.stop)] - self.start
        m = batch.shape[0]
        return batch[m * self.rank // self.size : m * (self.rank + 1) // self.size]

    def local(self):
        """This rank's part of the whole data set: (X, Y2d, labels, sw), contiguous row slices."""
        if self.sharded:
            return self.X, self.Y2d, self.labels, self.sw
        start, stop = shard_range(self.n, self.rank, self.size)
        return self.take(slice(start, stop))

    def take(self, rows):
        """(X, Y2d, labels, sw) of the local ``rows`` (indices or a slice), contiguous."""
        X = np.ascontiguousarray(self.X[rows])
        Y2d = self.Y2d if self.labels.size else np.ascontiguousarray(self.Y2d[rows])
        labels = np.ascontiguousarray(self.labels[rows]) if self.labels.size else self.labels
        sw = np.ascontiguousarray(self.sw[rows]) if self.sw.size else self.sw
        return X, Y2d, labels, sw


# ---------------------------------------------------------------------------------------------------- trainer
class Trainer(_Trainer):
    """Data-parallel :class:`fastbp.Trainer`: same interface and results, over the ranks of an MPI communicator.

    Every rank runs the same script with the same arguments. At the start of ``fit`` and ``train_step`` rank 0's
    parameters and optimizer state are broadcast, so every rank starts from the same point. Each global
    mini-batch (the one :class:`fastbp.Trainer` would use with the same seed) is split over the ranks; the flat
    gradient is summed with ONE ``Allreduce`` per step; every rank applies the same update. Schedules, clipping,
    frozen layers, sample weights, divergence detection, early stopping and the history behave as in
    :class:`fastbp.Trainer`; metrics are reduced over the ranks, so every rank sees the same history.

    Parameters
    ----------
    net, optimizer, batch_size, seed, progress, **options :
        As for :class:`fastbp.Trainer` (``options``: callbacks, early_stopping, patience, min_delta,
        restore_best, divergence_factor, record_deltas); ``batch_size`` is the GLOBAL batch, split over the
        ranks. seed None: rank 0 draws one and broadcasts it. The progress bar shows on rank 0 only. Callbacks
        run on every rank; training stops when a callback returns True on any rank.
    comm : mpi4py communicator, default ``MPI.COMM_WORLD``
    threads : "auto", int or None, default "auto"
        BLAS and Numba threads of this rank: "auto" sets :func:`threads_per_rank` (ranks x threads <= the
        machine's cores); None leaves the current setting.

    Attributes
    ----------
    history : as for :class:`fastbp.Trainer`, plus ``comm_time``: seconds per epoch spent in the gradient
        all-reduce, including waiting for the slowest rank.
    rank, size, threads : this rank, the number of ranks, the threads this rank uses (None: not set here).
    """

    def __init__(self, net, optimizer=None, batch_size=32, seed=0, progress=True, comm=None, threads="auto", **options):
        self.comm = _world(comm)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if seed is None:  # every rank must shuffle alike: rank 0 draws the seed (below 2**32, for scikit-learn)
            seed = self.comm.bcast(int(np.random.SeedSequence().entropy % 2**32) if self.rank == 0 else None)
        progress = bool(progress) and self.rank == 0
        super().__init__(net, optimizer, batch_size=batch_size, seed=seed, progress=progress, **options)
        if threads == "auto":
            threads = threads_per_rank(self.comm)
        self.threads = None if threads is None else set_num_threads(v.check_int(threads, "threads", minimum=1))
        # The buffer of the all-reduce: the flat gradient, then one slot for the partial loss, so that loss and
        # gradient travel in the same single call (in float32 the summed loss is rounded to float32).
        self._buffer = np.zeros(net.n_params + 1, dtype=net.dtype)
        self._grads = self._buffer[:-1]

    # ------------------------------------------------------------------ collective helpers
    def _fingerprint(self, *extra):
        net, opt = self.net, self.optimizer
        return (
            net.layer_sizes,
            net.activations,
            net.output,
            net.loss,
            net.l2,
            net.dtype.name,
            net.trainable,
            repr(opt),
            self.batch_size,
            self.seed,
            *extra,
        )

    def _agree_on(self, error, counts, fingerprint, what):
        """All ranks exchange their error (raised on every rank if any), row counts and configuration (which
        must be equal); returns every rank's counts."""
        payloads = _agree(self.comm, error, (counts, fingerprint))
        prints = [p[1] for p in payloads]
        differ = next((r for r, fp in enumerate(prints) if fp != prints[0]), None)
        if differ is not None:
            raise ValueError(
                f"the ranks disagree on {what}: rank 0 has {prints[0]}, rank {differ} has {prints[differ]} (every "
                "rank must run the same script with the same network, optimizer and arguments)"
            )
        return [p[0] for p in payloads]

    def _sync(self):
        """Broadcast rank 0's parameters, optimizer state and step count to every rank."""
        net, opt, comm = self.net, self.optimizer, self.comm
        comm.Bcast(net.params, root=0)
        state = opt.init_state(net.n_params, net.dtype)
        opt.t = comm.bcast(opt.t, root=0)
        if state.size:
            comm.Bcast(state, root=0)

    def _any(self, flag):
        """True on every rank when it is True on any rank."""
        return bool(self.comm.allreduce(int(bool(flag)), op=_mpi().MAX))

    def _check_same_params(self):
        """Raise (on every rank) if the ranks' parameters differ. All-reduce results are bitwise identical on
        every rank with MPICH and Open MPI; this per-epoch check (a float64 sum) proves it stays so."""
        digest = np.float64(np.sum(self.net.params, dtype=np.float64)).tobytes()
        if len(set(self.comm.allgather(digest))) > 1:
            raise RuntimeError("the ranks' parameters differ after an epoch (a non-deterministic all-reduce?)")

    def _check_data(self, X, y, sample_weight, names, sharded):
        """(X, Y2d, labels, sw) checked and converted; with ``sharded`` this rank's part may be empty and its
        weights may sum to 0 (the global sum is checked once the ranks have agreed)."""
        net = self.net
        if sharded and np.ndim(X) == 2 and np.shape(X)[0] == 0:
            if np.shape(X)[1] != net.n_in:
                raise ValueError(
                    f"{names[0]} must have {net.n_in} columns (the network's input size), got {np.shape(X)}"
                )
            empty = np.zeros(0, net.dtype)
            return np.zeros((0, net.n_in), net.dtype), np.zeros((0, net.n_out), net.dtype), np.zeros(0, np.int64), empty
        X, Y2d, labels = net.check_batch(X, y, names=names)
        if sample_weight is None:
            return X, Y2d, labels, np.zeros(0, net.dtype)
        if not sharded:
            return X, Y2d, labels, v.check_sample_weight(sample_weight, X.shape[0], net.dtype)
        sw = v.as_float_array(sample_weight, "sample_weight", net.dtype, 1)
        if sw.shape[0] != X.shape[0]:
            raise ValueError(f"sample_weight has {sw.shape[0]} weights for {X.shape[0]} samples in X")
        if sw.size and sw.min() < 0:
            raise ValueError(f"sample_weight must be >= 0, got a minimum of {sw.min():g}")
        return X, Y2d, labels, sw

    def _part(self, data, sharded, counts, weighted):
        """This rank's _Part of validated data ``(X, Y2d, labels, sw)``; counts: every rank's (rows, weight);
        weighted: sample weights were given (agreed by the ranks)."""
        if sharded:
            start = int(sum(c[0] for c in counts[: self.rank]))
            n = int(sum(c[0] for c in counts))
        else:
            start, n = 0, data[0].shape[0]
        if weighted and not sum(c[1] for c in counts) > 0:
            raise ValueError("sample_weight must have a positive sum (all weights are zero)")
        return _Part(*data, n, start, self.rank, self.size, sharded, weighted)

    @staticmethod
    def _counts(data):
        return data[0].shape[0], float(data[3].sum(dtype=np.float64)) if data[3].size else float(data[0].shape[0])

    # ------------------------------------------------------------------ evaluation
    def _local_sums(self, X, Y2d, labels, sw):
        """(summed loss without the L2 term, correct predictions, total weight) over local rows, weighted by the
        sample weights when given; zeros when there are no rows."""
        if X.shape[0] == 0:
            return 0.0, 0.0, 0.0
        net = self.net
        with net._lock:
            net._reserve(min(X.shape[0], max(net._capacity, 1024)))
            loss_sum, correct = _epoch._evaluate_entry(
                net._marker,
                net._entry_network,
                net._loss_code,
                net._entry_batch(X, Y2d, labels, sw),
                net._entry_workspace,
            )
        total = float(sw.sum(dtype=np.float64)) if sw.size else float(X.shape[0])
        return float(loss_sum), float(correct), total

    def _reduced_metrics(self, local):
        """Loss (with the L2 term) and accuracy over the union of the ranks' ``local`` (X, Y2d, labels, sw),
        as :meth:`fastbp.Trainer._evaluate` on the whole; the same on every rank. Collective."""
        sums = np.array(self._local_sums(*local), dtype=np.float64)
        self.comm.Allreduce(_mpi().IN_PLACE, sums, op=_mpi().SUM)
        loss_sum, correct, total = sums
        net = self.net
        penalty = 0.5 * net.l2 * sum(float(np.dot(W.ravel(), W.ravel())) for W in net.coefs) if net.l2 else 0.0
        classifies = net.output == "softmax" or net.loss == "binary_cross_entropy"
        return {"loss": loss_sum / total + penalty, "accuracy": correct / total if classifies else None}

    def _reduced_max_loss(self, part):
        """Divergence limit as :meth:`fastbp.Trainer._max_loss`, from the same rows spread over the global data."""
        if self.divergence_factor is None:
            return math.inf
        rows = np.unique(np.linspace(0, part.n - 1, min(part.n, 1024)).astype(np.int64))
        X, Y2d, labels, sw = part.take(part.rows(rows))
        if part.weighted and not self.comm.allreduce(float(sw.sum(dtype=np.float64)), op=_mpi().SUM) > 0:
            sw = sw[:0]  # as the single-process trainer: rows whose weights are all zero count unweighted
        return self.divergence_factor * max(self._reduced_metrics((X, Y2d, labels, sw))["loss"], 1.0)

    def evaluate(self, X, y, sample_weight=None, sharded=False):
        """Mean loss (with the L2 term) and accuracy over a data set, as :meth:`fastbp.Trainer.evaluate`, each rank
        evaluating a part and the sums reduced over the ranks. Collective.

        X: (n, n_in); y: (n, n_out) or (n,) labels; sample_weight: (n,) or None: the whole set on every rank, or
        with ``sharded=True`` this rank's rows (the ranks' parts in rank order make the set). Returns
        ``{"loss": float, "accuracy": float or None}``, the same on every rank.
        """
        error, counts, fingerprint = None, None, None
        try:
            data = self._check_data(X, y, sample_weight, ("X", "y"), sharded)
            counts = self._counts(data)
            fingerprint = self._fingerprint(bool(sharded), None if sharded else counts, sample_weight is None)
        except Exception as err:
            error = err
        counts = self._agree_on(error, counts, fingerprint, "evaluate's arguments")
        return self._reduced_metrics(self._part(data, sharded, counts, sample_weight is not None).local())

    # ------------------------------------------------------------------ training
    def _batch_weights(self, part, perm, batch_size):
        """Total sample weight of each global batch of ``perm`` (float64, one per step), summed over the ranks
        with one all-reduce per epoch; None without sample weights."""
        if not part.weighted:
            return None
        n = perm.shape[0]
        totals = np.array(
            [part.sw[part.rows(perm[s : s + batch_size])].sum(dtype=np.float64) for s in range(0, n, batch_size)]
        )
        self.comm.Allreduce(_mpi().IN_PLACE, totals, op=_mpi().SUM)
        return totals

    def _run_steps(self, part, perm, batch_size, schedule, max_loss):
        """The steps of one epoch over global rows ``perm``: per step, the compiled value-and-gradient of this
        rank's part (weighted by its share of the batch), ONE all-reduce of gradient and loss, and the compiled
        update, with the checks of the compiled epoch loop (kernels/epoch.py, which this mirrors line by line).
        Returns (status, summed loss, steps, seconds in the all-reduce)."""
        MPI = _mpi()
        net, opt, comm = self.net, self.optimizer, self.comm
        hyper, schedule_params = opt.hyper(), schedule.params()
        buffer, grads, sq_norms = self._buffer, self._grads, self._sq_norms
        layout, n_in, n_out = net._layout, net.n_in, net.n_out
        update, learning_rate, grad_norms = _kopt._update, _kopt._learning_rate, _kopt._grad_norms
        X, Y2d, labels, sw = part.X, part.Y2d, part.labels, part.sw
        batch_weights = self._batch_weights(part, perm, batch_size)
        n = perm.shape[0]
        loss_sum, steps, status, comm_time = 0.0, 0, _epoch.OK, 0.0
        with net._lock:
            state = opt.init_state(net.n_params, net.dtype)
            self._reserve(batch_size)
            sq_norms[:] = 0.0
            params, spare = net.params, self._spare
            for l, trainable in enumerate(net.trainable):
                if not trainable:  # frozen layers: the update never writes them, both buffers must hold them
                    start, stop = net.layer_range(l)
                    spare[start:stop] = params[start:stop]
            Xb = self._Xb[: batch_size * n_in].reshape(batch_size, n_in)
            Yb = self._Yb[: batch_size * n_out].reshape(batch_size, n_out)
            lb = self._lb
            swb = np.empty(batch_size, dtype=net.dtype)
            entry = {id(b): (b.ctypes.data, net.n_params, layout.ctypes.data, net.n_layers) for b in (params, spare)}
            cur, nxt = params, spare
            marker, loss_code, workspace, p_grads, l2 = (
                net._marker,
                net._loss_code,
                net._entry_workspace,
                grads.ctypes.data,
                net.l2,
            )
            kind, lr, clip_norm, t0, code = opt.kind, opt.lr, opt.clip_norm, opt.t, schedule.code
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                m = stop - start
                rows = part.rows(perm[start:stop])
                k = rows.shape[0]
                # This rank's share of the batch: rows k of m, or with sample weights its share of their sum.
                if batch_weights is None:
                    scale = k / m
                else:
                    total = batch_weights[start // batch_size]
                    local = float(sw[rows].sum(dtype=np.float64)) if k else 0.0
                    scale = local / total if total > 0 else math.nan  # all zero: NaN, as the single-process loop
                    k = k if local > 0 else 0  # rows of weight 0 contribute nothing
                if k:
                    np.take(X, rows, axis=0, out=Xb[:k], mode="clip")  # rows are valid: clip avoids a buffered copy
                    Yv, lv, swv = Y2d, labels, sw
                    if labels.size:
                        lv = lb[:k]
                        np.take(labels, rows, out=lv, mode="clip")
                    else:
                        Yv = Yb[:k]
                        np.take(Y2d, rows, axis=0, out=Yv, mode="clip")
                    if sw.size:
                        swv = swb[:k]
                        np.take(sw, rows, out=swv, mode="clip")
                    batch = net._entry_batch(Xb[:k], Yv, lv, swv)
                    buffer[-1] = _value_and_grad_entry(
                        marker, entry[id(cur)], loss_code, batch, workspace, p_grads, l2, scale, 0
                    )
                else:  # no rows (or no weight) of this batch here: contribute nothing
                    buffer[:] = 0.0
                    if math.isnan(scale):
                        buffer[-1] = math.nan
                tick = time.perf_counter()
                comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
                comm_time += time.perf_counter() - tick
                loss = float(buffer[-1])
                if not math.isfinite(loss) or loss > max_loss:
                    status = _epoch.NONFINITE_LOSS if not math.isfinite(loss) else _epoch.LOSS_TOO_LARGE
                    cur, nxt = nxt, cur  # cur gave a diverged loss: back to the previous step's parameters
                    break
                t = t0 + steps
                lr_t = learning_rate(code, lr, schedule_params, t)
                if clip_norm > 0.0:
                    sq = grad_norms(layout, grads, sq_norms)
                    norm = math.sqrt(sq)
                    clip = clip_norm / norm if norm > clip_norm else 1.0
                    if math.isfinite(sq):
                        update(kind, hyper, lr_t, t + 1, clip, layout, cur, grads, state, nxt, sq_norms, 0)
                else:
                    sq = update(kind, hyper, lr_t, t + 1, 1.0, layout, cur, grads, state, nxt, sq_norms, 1)
                if not math.isfinite(sq):
                    status = _epoch.NONFINITE_GRADIENT
                    nxt[:] = cur
                    break
                cur, nxt = nxt, cur
                loss_sum += loss * m
                steps += 1
            if cur is not params:
                previous = params.copy()
                params[:] = spare
                spare[:] = previous
        opt.t += steps
        return status, loss_sum, steps, comm_time

    def _validated(self, X, y, sample_weight, validation_data, validation_split, sharded, epochs=1):
        """Checks and conversions of fit's arguments, agreed over the ranks; returns (train _Part, val _Part or
        None)."""
        error, counts, fingerprint, val = None, None, None, None
        try:
            epochs = v.check_int(epochs, "epochs", minimum=1)
            data = self._check_data(X, y, sample_weight, ("X", "y"), sharded)
            validation_split = v.check_float(validation_split, "validation_split", minimum=0.0)
            if validation_split >= 1.0:
                raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
            if validation_data is not None and validation_split:
                raise ValueError("give validation_data or validation_split, not both")
            if validation_split and sharded:
                raise ValueError(
                    "validation_split needs the whole data on every rank; with sharded=True give validation_data "
                    "(each rank's part of it)"
                )
            if validation_data is not None:
                if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                    raise TypeError("validation_data must be a pair (X_val, y_val)")
                names = ("validation_data[0]", "validation_data[1]")
                val = self._check_data(*validation_data, None, names, sharded)
            elif validation_split:
                *data, val = self._split(*data, validation_split)
            counts = (self._counts(data), None if val is None else self._counts(val))
            shape = None if sharded else counts
            fingerprint = self._fingerprint(bool(sharded), shape, val is not None, sample_weight is None, epochs)
        except Exception as err:
            error = err
        counts = self._agree_on(error, counts, fingerprint, "fit's arguments")
        weighted = sample_weight is not None
        train = self._part(data, sharded, [c[0] for c in counts], weighted)
        if train.n == 0:
            raise ValueError("the training data is empty on every rank")
        if val is None:
            return train, None
        return train, self._part(val, sharded, [c[1] for c in counts], weighted and bool(validation_split))

    def _probe(self, part):
        """The fixed probe batch of ``record_deltas`` (as :meth:`fastbp.Trainer.fit`: up to 256 rows spread over
        the data), gathered from the ranks that hold its rows when sharded. Collective when sharded."""
        rows = np.unique(np.linspace(0, part.n - 1, min(part.n, 256)).astype(np.int64))
        if part.sharded:
            X, Y2d, labels, _ = part.take(rows[(rows >= part.start) & (rows < part.stop)] - part.start)
            pieces = self.comm.allgather((X, labels if labels.size else Y2d))  # in rank order: global row order
            return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])
        return part.X[rows], (part.labels[rows] if part.labels.size else part.Y2d[rows])

    def fit(self, X, y, epochs=10, validation_data=None, validation_split=0.0, sample_weight=None, sharded=False):
        """Train for ``epochs`` epochs on every rank; returns the history (also ``trainer.history``), the same on
        every rank. Collective: every rank calls it with the same arguments.

        X: (n, n_in); y: (n, n_out) targets or (n,) class labels; sample_weight: (n,) or None. By default every
        rank passes the whole data set (a memory map, ``np.load(path, mmap_mode="r")``, keeps one copy per
        machine in the page cache) and uses its part of each batch: the result equals
        ``fastbp.Trainer(...).fit(X, y)`` with the same seed. With ``sharded=True`` each rank passes only its
        rows (for example from :func:`load_shard`; the ranks' parts in rank order make the data set) and uses the
        rows of each batch that it holds: the result equals :class:`fastbp.Trainer` on the concatenated parts,
        though the work per rank then varies from batch to batch. validation_data / validation_split as for
        :class:`fastbp.Trainer` (with ``sharded=True``, validation_data is this rank's part, and
        validation_split is refused). Raises DivergenceError on every rank when the loss or gradient stops being
        finite; errors in the arguments are raised on every rank (:class:`RankFailedError` on the ranks whose
        own arguments were fine).
        """
        net, opt = self.net, self.optimizer
        train, val = self._validated(X, y, sample_weight, validation_data, validation_split, sharded, epochs)
        n = train.n
        schedule = self._schedule(opt.t + epochs * math.ceil(n / self.batch_size))
        self._sync()
        np.copyto(self._spare, net.params)
        history = self.history = {}
        record_deltas = getattr(self, "record_deltas", False)
        monitor = "val_loss" if val is not None else "loss"
        best, best_params, wait = math.inf, None, 0
        diverged = None
        bar = tqdm(range(epochs), desc="train", unit="epoch", disable=None if self.progress else True, leave=False)
        with abort_on_error(self.comm):  # from here on, a failure on one rank must not leave the others waiting
            max_loss = self._reduced_max_loss(train)
            probe = self._probe(train) if record_deltas else None
            for epoch in bar:
                start = time.perf_counter()
                perm = self._rng.permutation(n).astype(np.int64)
                status, loss_sum, steps, comm_time = self._run_steps(train, perm, self.batch_size, schedule, max_loss)
                if status != _epoch.OK:
                    diverged = (status, f"in epoch {epoch + 1}", loss_sum, steps, min(n, steps * self.batch_size))
                    break
                logs = {
                    "loss": loss_sum / n,
                    "grad_norm": np.sqrt(self._sq_norms / steps).tolist(),
                    "lr": schedule(opt.lr, opt.t - 1),
                }
                if record_deltas:
                    from . import reference

                    logs["delta_norm"] = [float(np.linalg.norm(d)) for d in reference.deltas(net, *probe)]
                if val is not None:
                    result = self._reduced_metrics(val.local())
                    logs["val_loss"] = result["loss"]
                    if result["accuracy"] is not None:
                        logs["val_accuracy"] = result["accuracy"]
                logs["epoch_time"] = time.perf_counter() - start
                logs["comm_time"] = comm_time
                for key, value in logs.items():
                    history.setdefault(key, []).append(value)
                bar.set_postfix({k: f"{x:.4g}" for k, x in logs.items() if k in ("loss", "val_loss", "val_accuracy")})
                stop = any([bool(cb(self, epoch, logs)) for cb in self.callbacks])
                if self.early_stopping:  # the monitored losses are reduced: every rank decides alike
                    if logs[monitor] < best - self.min_delta:
                        best, wait = logs[monitor], 0
                        if self.restore_best:
                            best_params = net.params.copy()
                    else:
                        wait += 1
                        stop = stop or wait >= self.patience
                self._check_same_params()
                if self._any(stop):
                    break
        bar.close()
        if diverged is not None:
            self._raise_divergence(*diverged, max_loss)
        if best_params is not None:
            net.params[:] = best_params
        return history

    def train_step(self, X_batch, Y_batch, sample_weight=None, sharded=False):
        """One optimizer step on a global batch; returns the batch loss (float), the same on every rank.

        X_batch: (m, n_in); Y_batch: (m, n_out) or (m,) labels; sample_weight: (m,) or None: the whole batch on
        every rank (each rank computes its part), or with ``sharded=True`` this rank's rows of it. Collective;
        checks and divergence handling as :meth:`fastbp.Trainer.train_step`.
        """
        schedule = self._schedule(None)  # the same error on every rank (a Cosine schedule without total_steps)
        part, _ = self._validated(X_batch, Y_batch, sample_weight, None, 0.0, sharded)
        self._sync()
        with abort_on_error(self.comm):
            if self._step_max_loss is None:
                self._step_max_loss = self._reduced_max_loss(part)
            perm = np.arange(part.n, dtype=np.int64)
            status, loss_sum, steps, _ = self._run_steps(part, perm, part.n, schedule, self._step_max_loss)
        if status != _epoch.OK:
            where = f"at step {self.optimizer.t + 1}"
            self._raise_divergence(status, where, loss_sum, steps, part.n, self._step_max_loss)
        return loss_sum / part.n

    def save(self, path, extras=None):
        """Checkpoint as :meth:`fastbp.Trainer.save`, written by rank 0 only (the ranks hold the same
        parameters); a failure to write is raised on every rank. Collective. Returns the path."""
        error = None
        if self.rank == 0:
            try:
                super().save(path, extras=extras)
            except Exception as err:
                error = err
        message = self.comm.bcast(None if error is None else f"{type(error).__name__}: {error}", root=0)
        if error is not None:
            raise error
        if message is not None:
            raise RankFailedError(f"rank 0 could not write the checkpoint: {message}")
        return path


# -------------------------------------------------------------------------------------------- command line
def run_cli(train, args):
    """``fastbp train --distributed``: run the CLI's train command ``train(args, trainer_cls=...)`` on this rank.

    Sets this rank's threads (``--threads``, else :func:`threads_per_rank`), keeps standard output, plots and
    JSON to rank 0, and turns a failure on one rank into an abort of the job (the error printed by the rank
    that failed); errors every rank raises together (divergence, checks agreed over the ranks) end every rank
    normally with exit code 1, printed by rank 0 only.
    """
    MPI = _mpi()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    try:
        if args.threads is None:
            args.threads = threads_per_rank(comm)
        if rank != 0:
            args.plot = args.json = None
            args.no_progress = True
            sys.stdout = open(os.devnull, "w")  # lives as long as the process
        return train(args, trainer_cls=functools.partial(Trainer, comm=comm, threads=None))
    except (DivergenceError, RankFailedError) as err:
        if rank == 0 and not isinstance(err, RankFailedError):
            print(f"fastbp train: error: {err}", file=sys.stderr)
        return 1
    except (Exception, KeyboardInterrupt) as err:
        if getattr(err, "agreed_across_ranks", False):  # every rank raised: no abort needed
            print(f"fastbp train: error (rank {rank} of {comm.Get_size()}): {err}", file=sys.stderr)
            return 1
        if isinstance(err, (ValueError, TypeError, OSError, EOFError)):
            print(f"fastbp train: error (rank {rank} of {comm.Get_size()}): {err}", file=sys.stderr)
            sys.stderr.flush()
        else:
            _report(err, comm)
        comm.Abort(1)
