"""Data-parallel training over MPI ranks (mpi4py): one process per rank, all ranks hold the same parameters.

Every step, each rank computes the gradient of its part of the global mini-batch, weighted by its share of the
batch's rows (``scale = k_r / m``; with sample weights, its share of the batch's total weight), so that the ranks'
partial gradients SUM to the gradient of the whole batch, L2 term included; then ONE in-place ``Allreduce(SUM)``
over the flat gradient buffer (plus one slot that carries the partial loss) makes the global gradient and loss
available on every rank, and every rank applies the same optimizer update to the same parameters. The result
equals single-process training (``fastbp.Trainer`` with the same seed) on the same global batches, up to the
order of floating-point summation.

The step is driven from Python: the compiled value-and-gradient entry point writes into the flat buffer, mpi4py
runs the all-reduce, and the compiled step (kernels/step.py: divergence check, clipping, update; the same one the
compiled epoch loop calls) updates the parameters. Calling MPI from inside the compiled epoch loop would need a new
compiled loop and a cached binding of the MPI library, to save a few microseconds of Python per step
(``scripts/mpi_scaling.py`` measures it; docs/measurements.md).

``mpi4py`` is imported only when a function of this module that needs it is called (importing it starts MPI).
Every method of ``Trainer`` that communicates (``fit``, ``train_step``, ``evaluate``, ``save``, ``sync``) is
collective: every rank calls it, in the same order. Errors that every rank raises together (bad arguments on any
rank, ranks that disagree, divergence) are raised on every rank; any other exception inside these methods prints
its traceback from the rank that raised it and ends the whole job (``MPI_Abort``), so no rank is left waiting in a
collective. Run scripts under ``mpiexec -n K python -m mpi4py script.py`` (mpi4py aborts the job on an uncaught
exception) or wrap your own collective code in ``abort_on_error``.
"""

import contextlib
import functools
import hashlib
import math
import os
import struct
import sys
import time
import traceback
import warnings
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from . import _validation as v
from .data import _IDX_TYPES, check_rows, load_file
from .kernels import step as _kstep
from .kernels.drivers import _value_and_grad_entry
from .threads import set_num_threads, usable_cores
from .trainer import DivergenceError, _Data, _spread
from .trainer import Trainer as _Trainer

__all__ = [
    "RankFailedError",
    "Trainer",
    "abort_on_error",
    "load_shard",
    "mpiexec_path",
    "mpirun",
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
def _everywhere(err):
    """Mark ``err`` as raised on every rank at once (nobody is left waiting in a collective: no abort needed; the
    command line prints it from rank 0 only). Returns err."""
    err.agreed_across_ranks = True
    return err


def _is_agreed(err):
    return getattr(err, "agreed_across_ranks", False)


def _failure_text(err, comm):
    text = "".join(traceback.format_exception(err))
    if isinstance(err, _mpi().Exception):
        text += (
            "An MPI error in a collective call usually means that the ranks called fastbp.distributed's collective "
            "methods (fit, train_step, evaluate, save, sync) in different orders: every rank must call each of "
            "them, for example save on every rank, not on rank 0 only.\n"
        )
    return f"fastbp.distributed: rank {comm.Get_rank()} of {comm.Get_size()} failed; aborting every rank\n{text}"


#: Seconds between writing the error and MPI_Abort: the launcher forwards a rank's output through its proxies, and
#: tears the job down on the abort; without this pause the message was lost in about 1 run of 15 (MPICH's Hydra).
_ABORT_PAUSE = 0.2


def _abort(comm, code, text):
    """Write ``text`` to stderr and end every rank of the job with ``MPI_Abort(code)``; never returns. MPICH under
    its launcher (Hydra) returns from ``MPI_Abort`` to the caller and the launcher kills the processes a moment
    later, so this process ends itself with ``os._exit(code)`` right after (standard streams flushed first):
    nothing after the failure runs, such as code that saves a checkpoint of a failed run."""
    for write in (lambda: sys.stdout.flush(), lambda: sys.stderr.write(text), lambda: sys.stderr.flush()):
        try:
            write()
        except Exception:  # a closed stream must not keep the job alive
            pass
    try:
        time.sleep(_ABORT_PAUSE)
        comm.Abort(code)
    finally:
        os._exit(code)


@contextlib.contextmanager
def abort_on_error(comm=None, code=1):
    """Context manager: an exception (Ctrl-C, and ``sys.exit`` in a job of several ranks, included) inside the block
    prints its traceback from this rank and ends
    every rank of the job with ``MPI_Abort(code)``, as ``python -m mpi4py`` does for an uncaught exception; this
    process never returns from the block (it exits with ``code`` even where ``MPI_Abort`` returns).

    Exceptions that every rank raises together pass through unchanged, since no rank waits for the others:
    ``RankFailedError``, ``fastbp.DivergenceError`` and the argument errors of
    ``Trainer``'s collective methods (they carry ``agreed_across_ranks = True``).

    Use it around code where one rank may fail while the others wait in a collective call, which would
    otherwise hang forever. comm: an mpi4py communicator (default ``COMM_WORLD``).
    """
    try:
        yield
    except (Exception, KeyboardInterrupt, SystemExit) as err:  # sys.exit on one rank leaves the others waiting too
        comm = _world(comm)
        if _is_agreed(err) or (isinstance(err, SystemExit) and comm.Get_size() == 1):
            raise
        _abort(comm, code, _failure_text(err, comm))


def _extras_digest(extras):
    """What the ranks must agree on of ``save``'s extras: each name's dtype, shape and SHA-256 of its bytes (None
    for none; anything else as its type, which save refuses on rank 0)."""
    if extras is None or not isinstance(extras, Mapping):
        return None if extras is None else type(extras).__name__
    digest = {}
    for name, value in extras.items():
        a = np.asarray(value)
        data = hashlib.sha256(a.tobytes()).hexdigest() if a.dtype.kind != "O" else repr(a)
        digest[repr(name)] = (a.dtype.str, a.shape, data)
    return digest


def _agree(comm, error, payload=None, collective=None):
    """Every rank passes its error (or None) and a payload; returns the payloads of all ranks, or raises on
    every rank when any failed: the failing rank its own error, the others RankFailedError naming it. With
    ``collective`` (the Trainer method called), ranks in different methods come first: a RuntimeError that is not
    marked as raised on every rank, so that the guard ends the job (the ranks are out of step: code that caught an
    error and went on would wait for each other in different calls)."""
    results = comm.allgather((None if error is None else f"{type(error).__name__}: {error}", collective, payload))
    called = [c for _, c, _ in results]
    if collective is not None and len(set(called)) > 1:
        rank = next(r for r, c in enumerate(called) if c != called[0])
        raise RuntimeError(
            f"the ranks called different collective methods of fastbp.distributed.Trainer at once: {called[0]} on "
            f"rank 0 but {called[rank]} on rank {rank}; every rank must call each of them in the same order, for "
            "example save on every rank, not on rank 0 only"
        )
    failed = [(rank, message) for rank, (message, _, _) in enumerate(results) if message is not None]
    if error is not None:
        raise _everywhere(error)  # every rank raises too: nobody waits, no abort needed
    if failed:
        rank, message = failed[0]
        raise _everywhere(RankFailedError(f"rank {rank} of {comm.Get_size()} failed: {message}"))
    return [payload for _, _, payload in results]


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


def mpirun(args, n=2, timeout=120.0, cwd=None):
    """Run ``mpiexec -n n *args`` bounded in time: returns the ``subprocess.CompletedProcess`` (text stdout and
    stderr captured). The launcher runs in its own process group; on timeout the whole group (launcher and every
    rank) is killed and ``subprocess.TimeoutExpired`` is raised with the output so far. ``cwd``: the launcher's
    working directory (None: this process's). Does not import mpi4py."""
    import signal
    import subprocess

    n = v.check_int(n, "n", minimum=1)
    mpiexec = mpiexec_path()
    if mpiexec is None:
        raise FileNotFoundError("mpiexec not found: python -m pip install 'fastbp[mpi]'")
    command = [mpiexec, "-n", str(n), *map(str, args)]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank it started
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(command, timeout, out, err) from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# ---------------------------------------------------------------------------------------------------- threads
def threads_per_rank(comm=None):
    """Threads for this rank so that the ranks sharing this machine's cores use each core at most once.

    Counts the ranks of ``comm`` on this node (``COMM_TYPE_SHARED``; processes outside ``comm`` are not seen) whose
    CPU affinity (``os.sched_getaffinity``) overlaps this rank's, and divides this rank's usable cores among them: 2
    unbound ranks on 2 cores get 1 thread each; ranks bound to disjoint cores by the launcher get all of their own
    cores. Collective over ``comm``.
    Returns an int >= 1.
    """
    MPI = _mpi()
    comm = _world(comm)
    cores = usable_cores()
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
    ``fastbp.data.load_file``: IDX images flattened to float64 (n_rows, pixels) and labels int64; ``.npz``
    arrays as stored; CSV as ``fastbp.data.load_csv``. Pass the parts to
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
    path = os.fsdecode(path)
    lower = path.lower()
    if lower.endswith(".npz"):
        X_map = _npz_member(path, x_key)
        with zipfile.ZipFile(path) as archive:
            has_y = y_key + ".npy" in archive.namelist()
        y_map = _npz_member(path, y_key) if has_y else None
        if X_map is not None and (y_map is not None or not has_y):
            check_rows(path, x_key, X_map, y_key, y_map)
            start, stop = shard_range(X_map.shape[0], rank, size)
            y_part = None if y_map is None else np.array(y_map[start:stop])
            return np.array(X_map[start:stop]), y_part
    elif labels_path is not None:
        images, labels = _idx_map(path), _idx_map(os.fsdecode(labels_path))
        if images is not None and labels is not None:
            if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
                raise ValueError(f"{labels_path} must hold one label per image of {path}")
            start, stop = shard_range(images.shape[0], rank, size)
            pixels = math.prod(images.shape[1:])  # not -1: a rank beyond the rows gets (0, pixels)
            X_part = np.asarray(images[start:stop]).reshape(stop - start, pixels).astype(np.float64)
            return X_part, np.asarray(labels[start:stop]).astype(np.int64)
    print(f"fastbp.distributed: {path} cannot be read in parts; every rank reads it whole", file=sys.stderr)
    X, y = load_file(path, labels_path, require_y=False)
    start, stop = shard_range(X.shape[0], rank, size)
    return X[start:stop], (None if y is None else y[start:stop])


class _Part(_Data):
    """The rows of a data set that this rank holds, and how a global batch maps onto them.

    Replicated (every rank holds all n rows): the rank takes its contiguous part of each batch's row list.
    Sharded (rank r holds global rows [start, stop), ranks in order): the rank takes the batch's rows that fall
    in its shard, a number that varies from batch to batch. Both ways the parts of a batch cover it exactly once.
    n: the rows of the whole set; weighted: sample weights were given, the same on every rank (sw is empty on a
    rank without rows); uses_labels: the targets are class labels, the same on every rank.
    """

    def __init__(self, data, n, start, rank, size, sharded, weighted):
        super().__init__(*data.arrays(), uses_labels=data.uses_labels)
        self.n, self.weighted = n, weighted
        self.start, self.stop = start, start + self.X.shape[0]
        self.rank, self.size, self.sharded = rank, size, sharded

    def rows(self, batch):
        if self.sharded:
            return batch[(batch >= self.start) & (batch < self.stop)] - self.start
        m = batch.shape[0]
        return batch[m * self.rank // self.size : m * (self.rank + 1) // self.size]

    def local(self):
        """This rank's part of the whole data set: (X, Y2d, labels, sw), contiguous row slices."""
        if self.sharded:
            return self.arrays()
        start, stop = shard_range(self.n, self.rank, self.size)
        return self.take(slice(start, stop))


def _checksums(data, prefix):
    """Fingerprint entries of replicated data: CRC-32s of the bytes of up to 64 rows spread over X, the targets
    and the sample weights (as converted to the network's dtype). Ranks that load another file, or shuffle their
    copy differently, almost surely differ in these rows; a difference confined to the other rows goes unseen."""
    X, Y2d, labels, sw = data.take(_spread(data.n, 64))
    sums = {f"{prefix}X (CRC-32 of {X.shape[0]} rows spread over it)": zlib.crc32(X)}
    sums[f"{prefix}y (CRC-32 of the same rows)"] = zlib.crc32(labels if data.uses_labels else Y2d)
    if sw.size:
        sums[f"{prefix}sample_weight (CRC-32 of the same rows)"] = zlib.crc32(sw)
    return sums


# ---------------------------------------------------------------------------------------------------- trainer
class Trainer(_Trainer):
    """Data-parallel ``fastbp.Trainer``: same interface and results, over the ranks of an MPI communicator.

    Every rank runs the same script with the same arguments. At the start of ``fit`` and of the first
    ``train_step`` rank 0's parameters and optimizer state are broadcast, so every rank starts from the same point.
    Each global mini-batch (the one ``fastbp.Trainer`` would use with the same seed) is split over the ranks;
    the flat gradient is summed with ONE ``Allreduce`` per step; every rank applies the same update. Schedules,
    clipping, frozen layers, sample weights, divergence detection, early stopping and the history behave as in
    ``fastbp.Trainer``; metrics are reduced over the ranks, so every rank sees the same history. Networks with
    batch norm are refused (ValueError): its statistics would be each rank's, not the global batch's.

    ``fit``, ``train_step``, ``evaluate``, ``save`` and ``sync`` are collective: every rank calls each of them, in
    the same order (``save`` too: rank 0 writes the file). They first check that the ranks agree on the network,
    the optimizer, this trainer's settings and the call's arguments (for data every rank passes whole, its row
    count and checksums of a sample of its rows), and raise on every rank when they do not.

    Parameters
    ----------
    net, optimizer, batch_size, seed, progress, **options :
        As for ``fastbp.Trainer`` (``options``: callbacks, early_stopping, patience, min_delta,
        restore_best, divergence_factor, record_deltas); ``batch_size`` is the GLOBAL batch, split over the
        ranks. seed None: rank 0 draws one and broadcasts it. The progress bar shows on rank 0 only. Callbacks
        run on every rank; training stops when a callback returns True on any rank.
    comm : mpi4py communicator, default ``MPI.COMM_WORLD``
    threads : "auto", int or None, default "auto"
        BLAS and Numba threads of this rank: "auto" sets ``threads_per_rank`` (ranks of ``comm`` x threads
        <= the machine's cores); None leaves the current setting.

    Attributes
    ----------
    history : as for ``fastbp.Trainer``, plus ``comm_time``: seconds per epoch spent in the gradient
        all-reduce, including waiting for the slowest rank.
    rank, size, threads : this rank, the number of ranks, the threads this rank uses (None: not set here).
    """

    def __init__(self, net, optimizer=None, batch_size=32, seed=0, progress=True, comm=None, threads="auto", **options):
        self.comm = _world(comm)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if seed is None:  # every rank must shuffle alike: rank 0 draws the seed (below 2**32, for scikit-learn)
            seed = self.comm.bcast(int(np.random.SeedSequence().entropy % 2**32) if self.rank == 0 else None)
        progress = bool(progress) and self.rank == 0
        error = None
        try:
            super().__init__(net, optimizer, batch_size=batch_size, seed=seed, progress=progress, **options)
            if "batch" in getattr(net, "norms", ()):
                raise ValueError(
                    "fastbp.distributed does not support batch norm: its batch statistics would have to be summed over "
                    "the ranks inside the forward pass. Use norm='layer' (layer norm's statistics are per row), or "
                    "train with fastbp.Trainer"
                )
            if threads is not None and not (isinstance(threads, str) and threads == "auto"):
                threads = v.check_int(threads, "threads", minimum=1)
        except Exception as err:
            error = err
        _agree(self.comm, error)  # a bad argument on one rank must not leave the others in threads_per_rank
        if isinstance(threads, str):
            threads = threads_per_rank(self.comm)
        self.threads = None if threads is None else set_num_threads(threads)
        self._synced = False  # train_step broadcasts rank 0's parameters on its first call only

    def _gradient_buffer(self):
        # The buffer of the all-reduce: the flat gradient, then one slot for the partial loss, so that loss and
        # gradient travel in the same single call (in float32 the summed loss is rounded to float32).
        self._buffer = np.zeros(self.net.n_params + 1, dtype=self.net.dtype)
        return self._buffer[:-1]

    # ------------------------------------------------------------------ collective helpers
    def _guard(self):
        return abort_on_error(self.comm)

    def _fingerprint(self, collective, sharded, sets, **call):
        """Everything the ranks must agree on, as {name: value}: the collective method called (first), what decides
        the collectives that run and the result (network, optimizer, this trainer's settings), the call's arguments
        ``call``, and per data set of ``sets`` ((prefix, _Data or None, sample weights given)) its kind of targets
        and, when every rank passes the whole set, its rows and checksums of a sample of them."""
        net = self.net
        fingerprint = {
            "collective": collective,
            "layer_sizes": tuple(net.layer_sizes),
            "activations": tuple(net.activations),
            "output": net.output,
            "loss": net.loss,
            "l2": net.l2,
            "dtype": net.dtype.name,
            "matmul_precision": net.matmul_precision,
            "trainable": tuple(net.trainable),
            # the layer options: the size of the all-reduced gradient (gamma, beta) and the masks of dropout
            "norm": tuple(net.norms),
            "residual": tuple(net.residuals),
            "dropout": tuple(net.dropouts),
            "optimizer": repr(self.optimizer),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "record_deltas": self.record_deltas,
            "divergence_factor": self.divergence_factor,
            "early_stopping": self.early_stopping,
            "restore_best": self.restore_best,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "sharded": sharded,
            **call,
        }
        for prefix, data, weighted in sets:
            fingerprint[f"{prefix}data"] = "given" if data is not None else None
            if data is None:
                continue
            fingerprint[f"{prefix}sample_weight"] = "given" if weighted else None
            fingerprint[f"{prefix}targets"] = "class labels" if data.uses_labels else "rows of targets"
            if not sharded:
                fingerprint[f"{prefix}rows"] = data.n
                fingerprint.update(_checksums(data, prefix))
        return fingerprint

    def _agree_on(self, collective, error, counts, fingerprint, what):
        """All ranks exchange the method called (``_agree``: ranks in different ones end the job), their error
        (raised on every rank if any), row counts and fingerprint (which must be equal: else a ValueError naming the
        first field that differs, on every rank); returns every rank's counts."""
        payloads = _agree(self.comm, error, (counts, fingerprint), collective)
        first = payloads[0][1]
        for rank, (_, other) in enumerate(payloads):
            if other != first:
                field = next(k for k in {**first, **other} if first.get(k) != other.get(k))
                raise _everywhere(
                    ValueError(
                        f"the ranks disagree on {what}: {field} is {first.get(field)!r} on rank 0 but "
                        f"{other.get(field)!r} on rank {rank} (every rank must run the same script with the same "
                        "network, optimizer, trainer settings and arguments)"
                    )
                )
        return [p[0] for p in payloads]

    def _agreed_parts(self, collective, sharded, check):
        """Run ``check()`` on every rank: it returns ``(sets, call)``, sets a list of (prefix, _Data or None,
        sample weights given), call the fingerprint entries of the call's other arguments. Its errors are
        raised on every rank, and the ranks must agree on the fingerprint; returns the _Parts (or None) of the
        sets and call."""
        error = counts = fingerprint = sets = call = None
        try:
            sharded = v.check_bool(sharded, "sharded")
            sets, call = check(sharded)
            counts = [None if data is None else self._counts(data) for _, data, _ in sets]
            fingerprint = self._fingerprint(collective, sharded, sets, **call)
        except Exception as err:
            error = err
        counts = self._agree_on(collective, error, counts, fingerprint, f"{collective}'s arguments")
        parts = []
        for i, (_, data, weighted) in enumerate(sets):
            parts.append(None if data is None else self._part(data, sharded, [c[i] for c in counts], weighted))
        return parts, call

    def _sync(self):
        """Broadcast rank 0's parameters, optimizer state and step count, and its network's dropout seed (drawn
        by each rank for ``MLP(seed=None)``), to every rank."""
        net, opt, comm = self.net, self.optimizer, self.comm
        comm.Bcast(net.params, root=0)
        net.dropout_seed = comm.bcast(net.dropout_seed, root=0)
        state = opt.init_state(net.n_params, net.dtype)
        opt.t = comm.bcast(opt.t, root=0)
        if state.size:
            comm.Bcast(state, root=0)
        self._synced = True

    def sync(self):
        """Broadcast rank 0's parameters, optimizer state (step count included) and dropout seed to every rank.
        ``fit`` does it when it starts and ``train_step`` on its first call, not on later ones: call ``sync`` (on
        every rank) after changing the parameters or the optimizer's state on some ranks only between
        ``train_step`` calls, for example after loading a checkpoint on rank 0. The settings (network, optimizer
        and its hyperparameters such as ``lr``, this trainer's) must already agree on every rank: a difference is a
        ValueError, as in every collective call. Collective."""
        with self._guard():
            self._agree_on("sync", None, None, self._fingerprint("sync", False, []), "sync's network and optimizer")
            self._sync()

    def _any(self, flag):
        """True on every rank when it is True on any rank."""
        return bool(self.comm.allreduce(int(bool(flag)), op=_mpi().MAX))

    def _check_same_params(self, collective=None):
        """Raise (on every rank) if the ranks' parameters differ (a float64 sum of each, compared). After an epoch
        (``collective`` None): all-reduce results are bitwise identical on every rank with MPICH and Open MPI, and
        this check proves it stays so. Before ``save`` and ``evaluate``, which would write rank 0's network or
        blend the ranks' results: the parameters were made or changed on some ranks only."""
        digest = np.float64(np.sum(self.net.params, dtype=np.float64)).tobytes()
        if len(set(self.comm.allgather(digest))) > 1:
            if collective is None:
                raise _everywhere(
                    RuntimeError("the ranks' parameters differ after an epoch (a non-deterministic all-reduce?)")
                )
            raise _everywhere(
                ValueError(
                    f"{collective}: the ranks hold different parameters (a network made with seed=None on each rank "
                    "before any fit or train_step, or parameters changed on some ranks only): call sync() on every "
                    "rank first, which gives every rank rank 0's"
                )
            )

    def _check_data(self, X, y, sample_weight, names, sharded=False):
        """A _Data of checked and converted arrays; with ``sharded`` this rank's part may be empty and its
        weights may sum to 0 (the global sum is checked once the ranks have agreed)."""
        net = self.net
        if sharded and np.ndim(X) == 2 and np.shape(X)[0] == 0:  # a rank may hold no rows of a sharded set
            X = v.as_float_array(X, names[0], net.dtype, 2)
            if X.shape[1] != net.n_in:
                raise ValueError(f"{names[0]} must have {net.n_in} columns (the network's input size), got {X.shape}")
        else:
            X = v.check_X(X, net.n_in, net.dtype, name=names[0])
        allow_labels = net.output == "softmax"
        Y2d, labels = v.check_targets(y, X.shape[0], net.n_out, net.dtype, allow_labels, name=names[1])
        sw = v.check_sample_weight(sample_weight, X.shape[0], net.dtype, allow_zero_sum=sharded)
        # class labels or rows of targets, also for a rank without rows (whose labels and Y2d are both empty)
        return _Data(X, Y2d, labels, sw, uses_labels=allow_labels and np.ndim(y) == 1)

    def _part(self, data, sharded, counts, weighted):
        """This rank's _Part of ``data``; counts: every rank's (rows, weight); weighted: sample weights were
        given (agreed by the ranks). Raises on every rank alike."""
        if sharded:
            start = int(sum(c[0] for c in counts[: self.rank]))
            n = int(sum(c[0] for c in counts))
        else:
            start, n = 0, data.n
        if weighted and not sum(c[1] for c in counts) > 0:
            raise _everywhere(ValueError("sample_weight must have a positive sum (all weights are zero)"))
        return _Part(data, n, start, self.rank, self.size, sharded, weighted)

    @staticmethod
    def _counts(data):
        return data.n, float(data.sw.sum(dtype=np.float64)) if data.sw.size else float(data.n)

    # ------------------------------------------------------------------ hooks of fastbp.Trainer
    def _prepare_fit(self, X, y, epochs, validation_data, validation_split, sample_weight, sharded=False):
        weighted = sample_weight is not None

        def check(sharded):
            if sharded and validation_split:
                raise ValueError(
                    "validation_split needs the whole data on every rank; with sharded=True give validation_data "
                    "(each rank's part of it)"
                )
            epochs_, train, val = self._check_fit_args(
                X, y, epochs, validation_data, validation_split, sample_weight, sharded=sharded
            )
            sets = [("", train, weighted), ("validation ", val, weighted and validation_data is None)]
            return sets, {"epochs": epochs_}

        (train, val), call = self._agreed_parts("fit", sharded, check)
        if train.n == 0:
            raise _everywhere(ValueError("the training data is empty on every rank"))
        if val is not None and val.n == 0:  # sharded: each rank's part may be empty, not all of them
            raise _everywhere(ValueError("the validation data is empty on every rank"))
        return call["epochs"], train, val

    def _prepare_step(self, X_batch, Y_batch, sample_weight, sharded=False):
        def check(sharded):
            data = self._check_data(X_batch, Y_batch, sample_weight, ("X", "Y"), sharded)
            self._schedule(None)  # a Cosine schedule without total_steps: the same error on every rank
            return [("", data, sample_weight is not None)], {}

        (part,), _ = self._agreed_parts("train_step", sharded, check)
        if part.n == 0:
            raise _everywhere(ValueError("the batch is empty on every rank"))
        return part

    def _before_fit(self):
        self._sync()  # before the schedule is built: a Cosine schedule's length counts rank 0's steps

    def _before_step(self):
        if not self._synced:
            self._sync()

    def _sums(self, X, Y2d, labels, sw):
        """``fastbp.Trainer._sums`` over the union of the ranks' rows: each rank passes its own, every rank
        gets the totals. Collective."""
        sums = np.array(super()._sums(X, Y2d, labels, sw), dtype=np.float64)
        self.comm.Allreduce(_mpi().IN_PLACE, sums, op=_mpi().SUM)
        return tuple(float(x) for x in sums)

    def _probe_batch(self, train):
        """The probe batch of ``record_deltas``, gathered from the ranks, each holding a part of its rows (in rank
        order: global row order). Collective."""
        pieces = self.comm.allgather(super()._probe_batch(train))
        return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])

    def _run_epoch(self, data, perm, batch_size, schedule, max_loss):
        status, loss_sum, steps, comm_time = self._run_steps(data, perm, batch_size, schedule, max_loss)
        return status, loss_sum, steps, {"comm_time": comm_time}

    def _end_epoch(self, stop):
        self._check_same_params()
        return self._any(stop)  # callbacks may disagree: stop when one asks for it on any rank

    def _raise_divergence(self, *args, **kwargs):
        try:
            super()._raise_divergence(*args, **kwargs)
        except DivergenceError as err:  # the all-reduced loss and gradient diverge on every rank alike
            err.agreed_across_ranks = True
            raise

    # ------------------------------------------------------------------ public
    def evaluate(self, X, y, sample_weight=None, sharded=False):
        """Mean loss (with the L2 term) and accuracy over a data set, as ``fastbp.Trainer.evaluate``, each rank
        evaluating a part and the sums reduced over the ranks. Collective.

        X: (n, n_in); y: (n, n_out) or (n,) labels; sample_weight: (n,) or None: the whole set on every rank, or
        with ``sharded=True`` this rank's rows (the ranks' parts in rank order make the set). Returns
        ``{"loss": float, "accuracy": float or None}``, the same on every rank.
        """

        def check(sharded):
            return [("", self._check_data(X, y, sample_weight, ("X", "y"), sharded), sample_weight is not None)], {}

        with self._guard():
            (part,), _ = self._agreed_parts("evaluate", sharded, check)
            if part.n == 0:
                raise _everywhere(ValueError("the data is empty on every rank"))
            self._check_same_params("evaluate")
            return self._evaluate(*part.local())

    def fit(self, X, y, epochs=10, validation_data=None, validation_split=0.0, sample_weight=None, sharded=False):
        """Train for ``epochs`` epochs on every rank; returns the history (also ``trainer.history``), the same on
        every rank. Collective: every rank calls it with the same arguments.

        X: (n, n_in); y: (n, n_out) targets or (n,) class labels; sample_weight: (n,) or None. By default every
        rank passes the whole data set and uses its part of each batch: the result equals
        ``fastbp.Trainer(...).fit(X, y)`` with the same seed (a memory map, ``np.load(path, mmap_mode="r")``,
        keeps one copy per machine in the page cache when the file holds the network's dtype; otherwise each
        rank converts it into a private copy). With ``sharded=True`` each rank passes only its rows (for example
        from ``load_shard``; the ranks' parts in rank order make the data set, a part may be empty) and uses
        the rows of each batch that it holds: the result equals ``fastbp.Trainer`` on the concatenated
        parts, though the work per rank then varies from batch to batch. validation_data / validation_split as
        for ``fastbp.Trainer`` (with ``sharded=True``, validation_data is this rank's part, and
        validation_split is refused). Raises DivergenceError on every rank when the loss or gradient stops being
        finite; errors in the arguments, and arguments or settings that differ between the ranks, are raised on
        every rank (``RankFailedError`` on the ranks whose own arguments were fine).
        """
        return self._fit(X, y, epochs, validation_data, validation_split, sample_weight, sharded=sharded)

    def train_step(self, X_batch, Y_batch, sample_weight=None, sharded=False):
        """One optimizer step on a global batch; returns the batch loss (float), the same on every rank.

        X_batch: (m, n_in); Y_batch: (m, n_out) or (m,) labels; sample_weight: (m,) or None: the whole batch on
        every rank (each rank computes its part), or with ``sharded=True`` this rank's rows of it. Collective;
        checks and divergence handling as ``fastbp.Trainer.train_step``. The first call broadcasts rank 0's
        parameters and optimizer state, later calls do not: after changing them on some ranks only, call
        ``sync``.
        """
        return self._train_step(X_batch, Y_batch, sample_weight, sharded=sharded)

    def save(self, path, extras=None):
        """Checkpoint as ``fastbp.Trainer.save``. Collective: EVERY rank calls it; rank 0 writes the file (the
        ranks hold the same parameters) and the others wait for its result, so that a failure to write is raised
        on every rank. Calling it on rank 0 only (``if rank == 0: trainer.save(...)``) puts the ranks' collective
        calls out of step: the other ranks' next collective call ends the job (an MPI abort), and without one
        rank 0 waits here. Returns the path."""
        with self._guard():
            # rank 0 writes its network and optimizer, to its path with its extras: they must be every rank's
            error = fingerprint = None
            try:
                call = {"path": os.fsdecode(path), "extras": _extras_digest(extras)}
                fingerprint = self._fingerprint("save", False, [], **call)
            except Exception as err:
                error = err
            self._agree_on("save", error, None, fingerprint, "save's network, optimizer and arguments")
            self._check_same_params("save")
            error = None
            if self.rank == 0:
                try:
                    super().save(path, extras=extras)
                except Exception as err:
                    error = err
            message = self.comm.bcast(None if error is None else f"{type(error).__name__}: {error}", root=0)
            if error is not None:
                raise _everywhere(error)
            if message is not None:
                raise _everywhere(RankFailedError(f"rank 0 could not write the checkpoint: {message}"))
        return path

    # ------------------------------------------------------------------ the step loop
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
        rank's part (weighted by its share of the batch), ONE all-reduce of gradient and loss, and the compiled step
        of the epoch loop (kernels/step.py). Returns (status, summed loss, steps, seconds in the all-reduce)."""
        MPI = _mpi()
        net, opt, comm = self.net, self.optimizer, self.comm
        hyper, schedule_params = opt.hyper(), schedule.params()
        buffer, grads, sq_norms = self._buffer, self._grads, self._sq_norms
        n_in, n_out = net.n_in, net.n_out
        X, Y2d, labels, sw = part.arrays()
        batch_weights = self._batch_weights(part, perm, batch_size)
        n = perm.shape[0]
        # The most rows of a batch this rank computes: its part of a replicated batch, at most ceil(m / ranks)
        # rows; all of a sharded batch's rows, up to its shard's size.
        rows_max = max(1, min(batch_size, X.shape[0]) if part.sharded else -(-batch_size // part.size))
        loss_sum, steps, status, comm_time = 0.0, 0, _kstep.OK, 0.0
        with net._lock:
            state = self._begin_run(rows_max)
            params, spare = net.params, self._spare
            Xb = self._Xb[: rows_max * n_in].reshape(rows_max, n_in)
            Yb = self._Yb[: rows_max * n_out].reshape(rows_max, n_out)
            lb, swb = self._lb, self._swb
            ids = np.empty(rows_max, dtype=np.int64)
            p_ids = ids.ctypes.data
            entry = {id(b): net._entry_params(b) for b in (params, spare)}
            cur, nxt = params, spare
            marker, loss_code, workspace, p_grads, l2 = (
                net._marker,
                net._loss_code,
                net._entry_workspace,
                grads.ctypes.data,
                net.l2,
            )
            optimizer = (opt.kind, hyper.ctypes.data, hyper.size, schedule.code)
            schedule_args = (schedule_params.ctypes.data, schedule_params.size, opt.lr, opt.clip_norm)
            p_state, n_state, p_sq_norms = (
                (state.ctypes.data if state.size else 0),
                state.shape[0],
                sq_norms.ctypes.data,
            )
            rows_done = 0
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                m = stop - start
                if batch_weights is not None and not batch_weights[start // batch_size] > 0:
                    continue  # no weight in the whole batch: no step, as the single-process loop (every rank agrees)
                rows = part.rows(perm[start:stop])
                k = rows.shape[0]
                # This rank's share of the batch: rows k of m, or with sample weights its share of their sum.
                if batch_weights is None:
                    scale = k / m
                else:
                    total = batch_weights[start // batch_size]
                    local = float(sw[rows].sum(dtype=np.float64)) if k else 0.0
                    scale = local / total
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
                    # the rows' indices in the whole data set key the dropout masks, as in one process
                    ids[:k] = rows
                    if part.sharded:
                        ids[:k] += part.start
                    run = net._run(True, update_stats=True, dropout=True, step=opt.t + steps)
                    buffer[-1] = _value_and_grad_entry(
                        marker, entry[id(cur)], run, p_ids, k, loss_code, batch, workspace, p_grads, l2, scale, 0
                    )
                else:  # no rows (or no weight) of this batch here: contribute nothing
                    buffer[:] = 0.0
                tick = time.perf_counter()
                comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
                comm_time += time.perf_counter() - tick
                status = _kstep._step_entry(
                    marker,
                    entry[id(cur)],
                    nxt.ctypes.data,
                    float(buffer[-1]),
                    max_loss,
                    p_grads,
                    *optimizer,
                    *schedule_args,
                    opt.t + steps,
                    p_state,
                    n_state,
                    p_sq_norms,
                )
                if status != _kstep.OK:
                    if status != _kstep.NONFINITE_GRADIENT:  # cur gave a diverged loss: back to the previous step's
                        cur, nxt = nxt, cur
                    break
                cur, nxt = nxt, cur
                loss_sum += float(buffer[-1]) * m
                rows_done += m
                steps += 1
            if status == _kstep.OK and 0 < rows_done < n:  # batches skipped: as the single-process loop
                loss_sum *= n / rows_done
            if cur is not params:
                previous = params.copy()
                params[:] = spare
                spare[:] = previous
        opt.t += steps
        return status, loss_sum, steps, comm_time


# -------------------------------------------------------------------------------------------- command line
def run_cli(train, args):
    """``fastbp train --distributed``: run the CLI's train command ``train(args, trainer_cls=...)`` on this rank.

    Sets this rank's threads (``--threads``, else ``threads_per_rank``), keeps standard output, plots and
    JSON to rank 0, and turns a failure on one rank into an abort of the job (the error printed by the rank that
    failed). Errors that every rank raises together (divergence, argument checks agreed over the ranks, ranks
    that disagree, the command line's usage errors) end every rank normally with exit code 1 (2 for a usage error),
    printed once, by rank 0; so do warnings. An error that several
    ranks raise on their own (for example an unwritable --output, checked on every rank before training) is
    printed by each of them before the job is aborted.
    """
    MPI = _mpi()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    try:
        if args.threads is None:
            args.threads = threads_per_rank(comm)
        if rank != 0:  # the progress bar shows on rank 0 only (Trainer)
            from .cli import _check_outputs, _train_inputs, _train_outputs

            # the usage errors of the output names, which rank 0 finds in train, found here too: told by rank 0
            _check_outputs(*_train_outputs(args), inputs=_train_inputs(args), names_only=True)
            args.plot = args.json = None
            sys.stdout = open(os.devnull, "w")  # lives as long as the process
            warnings.simplefilter("ignore")  # every rank reads the same data and options: rank 0 tells the warnings
        return train(args, trainer_cls=functools.partial(Trainer, comm=comm, threads=None))
    except (Exception, KeyboardInterrupt) as err:
        if _is_agreed(err):  # raised on every rank: nobody waits, no abort needed; rank 0 tells
            code = getattr(err, "exit_code", 1)  # 2 for the command line's usage errors
            if rank == 0:
                usage = " (see fastbp train --help)" if code == 2 else ""
                print(f"fastbp train: error: {' '.join(str(err).split())}{usage}", file=sys.stderr)
            return code
        if isinstance(err, (ValueError, TypeError, OSError, EOFError)):
            text = f"fastbp train: error (rank {rank} of {comm.Get_size()}): {err}; aborting every rank\n"
        else:
            text = _failure_text(err, comm)
        _abort(comm, 1, text)
