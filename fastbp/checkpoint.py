"""Checkpoints: the network (architecture, parameters, running statistics) and optionally its optimizer state, in
one ``.npz``.

Format (version 2): plain arrays only, loaded with ``allow_pickle=False``; strings are stored as NumPy unicode
arrays and the optimizer's configuration as JSON text. The entries:

- ``format`` ("fastbp-checkpoint"), ``version`` (2);
- the architecture: ``layer_sizes``, ``activations`` (one per hidden layer), ``output``, ``loss``, ``l2``,
  ``dtype``, ``trainable`` (one per layer), ``matmul_precision``;
- the hidden layers' options (version 2), one value per hidden layer: ``norms`` ("batch", "layer", or "" for
  none), ``residuals`` (bool), ``dropouts`` (float64 rates); and ``dropout_seed`` (uint64), the seed of the dropout
  masks;
- ``params`` (the flat parameter buffer) and ``buffers`` (version 2: the running statistics of the batch-norm
  layers, ``MLP.buffers``, empty without batch norm), both of the network's dtype;
- with an optimizer: ``optimizer`` (JSON: name and configuration), ``optimizer_t`` and ``optimizer_state``;
- ``extra_<name>`` for each entry of ``extras``. ``fastbp train`` stores ``x_mean`` and ``x_scale`` (its input
  standardisation), ``classes`` (the original label of each output unit, numbers or strings, as scikit-learn's
  ``classes_``), ``label_column`` (the CSV label column it read: its name when the file has a header, else its
  index counted from the end) and ``label_index`` (that index, unless the column was given by name),
  ``data_source`` ("digits" or the data file) and ``test_rows`` (the row indices of its held-out split);
  ``fastbp predict`` uses them, and checkpoints without them load and predict as before;
- ``sha256``: a SHA-256 digest of every other entry (names, dtypes, shapes and bytes), so a truncated, edited or
  otherwise damaged file is rejected on load.

Version 1 (fastbp before the layer options) has the same entries without the options, ``dropout_seed`` and
``buffers``; such files still load, as networks without options. Files of a later version are refused.

Files are written atomically and durably by ``fastbp._files.atomic_write``: to a locked temporary file
``.fastbp-<name>-<random>.tmp`` in the same directory, fsynced, renamed over the target, and the directory fsynced;
a crash never leaves a partial checkpoint under the target name, and the temporary file of a killed save is removed
by the next save or load of the same path.
"""

import hashlib
import json
import os
from collections.abc import Mapping

import numpy as np

from . import _files

FORMAT = "fastbp-checkpoint"
VERSION = 2
#: The format versions ``load`` reads (version 1: no layer options, no running statistics).
READABLE_VERSIONS = (1, 2)
WHAT = "a fastbp checkpoint (written by fastbp train or MLP.save)"


class CheckpointError(ValueError):
    """The file is not a valid fastbp checkpoint (truncated, damaged, edited, or of another format)."""


def _digest(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _uint64(value, name):
    if not 0 <= value < 2**64:
        raise ValueError(f"cannot save a network whose {name} {value} is not in [0, 2**64)")
    return np.array(value, dtype=np.uint64)


def _schedule_config(schedule):
    return {"name": type(schedule).__name__, **vars(schedule)}


def save(net, path, optimizer=None, extras=None):
    """Write ``net`` (and ``optimizer``'s configuration, state and step count) to ``path`` atomically.

    path: str or os.PathLike; ``.npz`` is not appended. extras: optional dict of name -> array stored alongside
    (for example input standardisation), with ``net.extras`` (the arrays a loaded checkpoint brought; a name in both
    takes extras' array); on load they are in ``net.extras``. Returns the path written.
    """
    from .optim import Optimizer

    path = os.fsdecode(path)
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a fastbp optimizer (fastbp.SGD, fastbp.Adam, ...) or None, got {optimizer!r}"
        )
    if extras is not None and not isinstance(extras, Mapping):
        raise TypeError(f"extras must be a dict of name -> array or None, got {type(extras).__name__}")
    extras = {**net.extras, **(extras or {})}
    if not all(isinstance(name, str) for name in extras):
        raise TypeError(f"extras' names must be strings, got {sorted(map(repr, extras))}")
    # one step's parameters, statistics and optimizer state: a training call on another thread changes them under
    # the network's lock, so they are copied under it (and the digest and the file made from the copies)
    with net._lock:
        params, buffers = net.params.copy(), net.buffers.copy()
        if optimizer is not None:
            t, state = optimizer.t, optimizer.state
            state = state.copy() if isinstance(state, np.ndarray) else state
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION),
        "layer_sizes": np.array(net.layer_sizes, dtype=np.int64),
        "activations": np.array(net.activations, dtype=str).reshape(-1),
        "output": np.array(net.output),
        "loss": np.array(net.loss),
        "l2": np.array(net.l2),
        "dtype": np.array(net.dtype.name),
        "trainable": np.array(net.trainable, dtype=bool),
        "matmul_precision": np.array(net.matmul_precision),
        # the hidden layers' options (net.norms, residuals and dropouts also hold the output layer's: none)
        "norms": np.array([k or "" for k in net.norms[:-1]], dtype=str).reshape(-1),
        "residuals": np.array(net.residuals[:-1], dtype=bool).reshape(-1),
        "dropouts": np.array(net.dropouts[:-1], dtype=np.float64).reshape(-1),
        "dropout_seed": _uint64(net.dropout_seed, "dropout_seed"),
        "params": params,
        "buffers": buffers,
    }
    if optimizer is not None:
        config = {k: (_schedule_config(val) if k == "schedule" else val) for k, val in optimizer.config().items()}
        arrays["optimizer"] = np.array(json.dumps({"name": optimizer.name, "config": config}))
        arrays["optimizer_t"] = np.array(t, dtype=np.int64)
        if state is not None and (state.shape[1:] != (net.n_params,) or state.dtype != net.dtype):
            raise ValueError(
                f"the optimizer's state, shape {state.shape} of {state.dtype}, was made for another network (this "
                f"one has {net.n_params} parameters of {net.dtype}): save an optimizer with the network it trains, "
                "or call optimizer.reset() first"
            )
        if state is None or state.shape[0] != optimizer.n_state:  # none yet, or its rows changed with momentum:
            state = np.zeros((optimizer.n_state, net.n_params), net.dtype)  # what its next step starts from
        arrays["optimizer_state"] = state
    for name, value in extras.items():
        value = np.asarray(value)
        if value.dtype.kind not in "biufcUS":  # object arrays would need pickle, which load refuses
            raise TypeError(f"extras[{name!r}] must be a numeric or string array, got dtype {value.dtype}")
        arrays[f"extra_{name}"] = value
    arrays["sha256"] = np.array(_digest(arrays))
    with _files.atomic_write(path, "wb", what="checkpoint") as f:
        np.savez(f, **arrays)
    return path


def _read(path):
    try:
        arrays = _files.read_npz(path, WHAT)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    fmt = arrays.get("format")
    if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        raise CheckpointError(f"{path} is an .npz archive of arrays {_names(arrays)}; expected {WHAT}")
    version = arrays.get("version")
    if version is None or version.shape != () or version.dtype.kind not in "iu":
        raise CheckpointError(f"{path} has no valid checkpoint format version ({version!r})")
    if int(version) not in READABLE_VERSIONS:
        newer = "; a newer fastbp wrote it: load it with that version" if int(version) > VERSION else ""
        raise CheckpointError(
            f"{path} has checkpoint format version {int(version)}, but this fastbp ({_version()}) reads versions "
            f"{' and '.join(map(str, READABLE_VERSIONS))}{newer}"
        )
    stored = str(arrays.pop("sha256", ""))
    if stored != _digest(arrays):
        raise CheckpointError(f"{path} is damaged or was modified: its SHA-256 digest does not match its content")
    return arrays


def _names(arrays, limit=8):
    names = sorted(arrays)
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
    return f"[{shown}]" if names else "(none)"


def _version():
    from . import __version__

    return __version__


def _options(a):
    """The MLP keyword arguments of the hidden layers' options stored in version-2 checkpoint entries ``a``."""
    if int(a["version"]) < 2:
        return {}
    norms = [str(k) or None for k in a["norms"]]
    residuals = [bool(r) for r in a["residuals"]]
    dropouts = [float(p) for p in a["dropouts"]]
    n_hidden = len(a["layer_sizes"]) - 2
    for name, values in (("norms", norms), ("residuals", residuals), ("dropouts", dropouts)):
        if len(values) != n_hidden:
            raise ValueError(f"{name} has {len(values)} values for {n_hidden} hidden layers")
    return {"norm": norms, "residual": residuals, "dropout": dropouts}


def _described_param_count(a):
    """The number of parameters of the architecture that entries ``a`` describe, or None when its sizes or norms are
    not valid (the MLP constructor's error then names what is wrong)."""
    from .network import _NORMS, param_count

    try:
        sizes = [int(s) for s in a["layer_sizes"]]
        norms = [*(_options(a).get("norm") or [None] * (len(sizes) - 2)), None]
    except (KeyError, TypeError, ValueError):
        return None
    valid = min(sizes) >= 1 and len(norms) == len(sizes) - 1 and all(k is None or k in _NORMS for k in norms)
    return param_count(sizes, norms) if valid else None


def _params_mismatch(path, params, dtype, count):
    """The error of ``params`` that are not the ``count`` values of ``dtype`` the architecture needs."""
    return CheckpointError(
        f"{path}: params has dtype {params.dtype} and shape {params.shape}, but the architecture needs {dtype} and "
        f"({count},)"
    )


def load(path, return_optimizer=False, matmul_precision=None):
    """Read a checkpoint written by ``MLP.save`` or ``Trainer.save`` (``save``).

    Returns the ``fastbp.MLP``, or ``(net, optimizer)`` with ``return_optimizer=True`` (optimizer is None
    when the file has none). ``matmul_precision``: the network's matrix-product precision, by default the one it
    was saved with ("float32" for checkpoints written before it was stored); the parameters are float32 either way,
    so a network trained in bfloat16 can be loaded in float32 (e.g. on a machine without bfloat16) and the reverse.
    The hidden layers' options (normalization, residual connections, dropout and its seed) and the running
    statistics of batch norm (``net.buffers``) are restored exactly, so ``predict`` (evaluation mode) gives what it
    gave before the save; a version-1 checkpoint (written before the options existed) loads as a network without
    options.
    Raises FileNotFoundError, or CheckpointError (a ValueError) naming what is wrong (including a checkpoint of a
    format version this fastbp does not know), or RuntimeError when the precision asked for is not available here.
    """
    from . import optim
    from .network import MLP

    path = os.fsdecode(path)
    if matmul_precision is not None:  # the caller's argument, checked before the file (whose errors are the file's)
        from .network import _PRECISIONS, _check_name

        precision = _PRECISIONS[_check_name(matmul_precision, "matmul_precision", _PRECISIONS)]
    _files.remove_stale_temp_files(path)  # of saves of this path that were killed
    a = _read(path)
    dtype = str(a["dtype"]) if "dtype" in a else None
    if matmul_precision is not None and precision == "bfloat16" and dtype not in (None, "float32"):
        raise ValueError(  # the caller's argument is at fault, not the file
            f"matmul_precision={matmul_precision!r} needs a float32 network; {path} holds a {dtype} one"
        )
    params = a.get("params")
    if params is None:
        raise CheckpointError(f"{path} has no entry params (the network's parameters)")
    # checked before the network is made: a crafted file may describe a huge one beside a few values
    count = _described_param_count(a)
    if count is not None and params.shape != (count,):
        raise _params_mismatch(path, params, dtype, count)
    try:
        net = MLP(
            [int(s) for s in a["layer_sizes"]],
            activation=[str(s) for s in a["activations"]],
            output=str(a["output"]),
            loss=str(a["loss"]),
            l2=float(a["l2"]),
            dtype=str(a["dtype"]),
            seed=None,
            trainable=[bool(t) for t in a["trainable"]],
            matmul_precision=str(a.get("matmul_precision", "float32"))
            if matmul_precision is None
            else matmul_precision,
            **_options(a),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} describes an invalid network: {err}") from err
    if params.dtype != net.dtype or params.shape != (net.n_params,):
        raise _params_mismatch(path, params, net.dtype, net.n_params)
    net.params[:] = params
    if int(a["version"]) >= 2:
        if "buffers" not in a or "dropout_seed" not in a:
            raise CheckpointError(f"{path}: a version-2 checkpoint needs the entries buffers and dropout_seed")
        buffers, seed = a["buffers"], a["dropout_seed"]
        if buffers.dtype != net.dtype or buffers.shape != net.buffers.shape:
            raise CheckpointError(
                f"{path}: buffers (running statistics) has dtype {buffers.dtype} and shape {buffers.shape}, but the "
                f"architecture needs {net.dtype} and {net.buffers.shape}"
            )
        if seed.shape != () or seed.dtype.kind not in "iu" or int(seed) < 0:
            raise CheckpointError(f"{path}: dropout_seed must be a non-negative integer, got {seed.dtype} {seed!r}")
        net.buffers[:] = buffers
        net.dropout_seed = int(seed) % 2**63  # as the constructor reduces it: the int64 the compiled code takes
    net.extras = {name[len("extra_") :]: value for name, value in a.items() if name.startswith("extra_")}
    if not return_optimizer:
        return net
    if "optimizer" not in a:
        return net, None
    try:
        spec = json.loads(str(a["optimizer"]))
        config = dict(spec["config"])
        schedule = dict(config.pop("schedule"))
        name = schedule.pop("name")
        schedules = {
            "Schedule": optim.Constant,
            "StepDecay": optim.StepDecay,
            "InverseScaling": optim.InverseScaling,
            "Cosine": optim.Cosine,
        }
        opt = optim.OPTIMIZERS[spec["name"]](**config, schedule=schedules[name](**schedule))
        state, t = a["optimizer_state"], int(a["optimizer_t"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} describes an invalid optimizer: {type(err).__name__}: {err}") from err
    if t < 0:
        raise CheckpointError(f"{path}: optimizer_t (the optimizer's step count) is {t}, below 0")
    if state.shape != (opt.n_state, net.n_params) or state.dtype != net.dtype:
        raise CheckpointError(
            f"{path}: optimizer state has shape {state.shape} of {state.dtype}, expected ({opt.n_state}, "
            f"{net.n_params}) of {net.dtype}"
        )
    opt.state = state.copy()
    opt.t = t
    return net, opt
