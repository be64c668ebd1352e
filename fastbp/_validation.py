"""Input checks at the boundary of the public API.

Everything a kernel receives has been checked and converted here, once: C-contiguous arrays of the network's
dtype, finite values, labels in range. Errors name the argument, what was expected and what was given.
"""

import math
import numbers
import operator

import numpy as np

from . import _tuning
from ._config import WEIGHT_LIMIT


def check_dtype(dtype):
    """Return ``np.dtype('float32')`` or ``np.dtype('float64')``; anything else raises."""
    if dtype is None:
        raise TypeError("dtype must be 'float32' or 'float64', got None")
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from err
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


def check_int(value, name, minimum=None):
    """An integer (not bool) >= minimum, as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(value, name, minimum=None, strict=False):
    """A finite real number (>= minimum, or > minimum when strict), as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def check_bool(value, name):
    """A bool (Python or NumPy), or the integers 0 and 1, as a Python bool; strings and other values raise."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def all_finite(a):
    """Whether the array holds no NaN or infinity: ``np.isfinite(a).all()``, over blocks of the first axis so that the
    boolean temporary stays bounded (``_tuning.FINITE_BLOCK`` elements). Measured twice as fast as proving it by a
    finite float64 sum, which converts every element."""
    if a.dtype.kind in "iub":
        return True
    if a.dtype.kind not in "fc":  # objects: as float64 (what the parameters' cast will read)
        a = a.astype(np.float64)
    if a.ndim == 0:
        return bool(np.isfinite(a))
    rows = a.shape[0]
    step = max(1, _tuning.FINITE_BLOCK // max(1, a.size // max(rows, 1)))
    if step >= rows:
        return bool(np.isfinite(a).all())
    return all(np.isfinite(a[start : start + step]).all() for start in range(0, rows, step))


def check_finite(a, name):
    """Raise ValueError if the array holds NaN or inf."""
    if not all_finite(a):
        raise ValueError(f"{name} contains NaN or infinity")


def as_array(a, name):
    """np.asarray(a), with errors naming the argument; masked arrays are refused (their mask would be ignored)."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array; fill or drop the masked values first")
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} cannot be read as an array: {err}") from err


def as_float_array(a, name, dtype, ndim):
    """Convert to a C-contiguous array of ``dtype`` with ``ndim`` dims, checked finite (copy only if needed)."""
    arr = as_array(a, name)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    return _finite_as(arr, name, dtype)


def _finite_as(arr, name, dtype):
    """The real array ``arr`` as a C-contiguous array of ``dtype``, checked finite: NaN or inf given, or a value too
    large for ``dtype``, each a ValueError of its own (copy only if needed)."""
    if arr.dtype.kind == "f" and arr.dtype != dtype:
        check_finite(arr, name)  # before the cast, so that an overflow of the cast is told apart from NaN/inf
        with np.errstate(over="ignore"):
            arr = np.ascontiguousarray(arr, dtype=dtype)
        if not all_finite(arr):
            raise ValueError(f"{name} holds values too large for {np.dtype(dtype).name} (max {np.finfo(dtype).max:g})")
        return arr
    arr = np.ascontiguousarray(arr, dtype=dtype)
    check_finite(arr, name)
    return arr


def check_X(X, n_in, dtype, name="X"):
    """X as a C-contiguous (n, n_in) array of dtype, n >= 1, finite."""
    X = as_float_array(X, name, dtype, 2)
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: got shape {X.shape}, need at least one sample")
    if X.shape[1] != n_in:
        raise ValueError(f"{name} must have {n_in} columns (the network's input size), got shape {X.shape}")
    return X


_NO_LABELS = np.zeros(0, dtype=np.int64)


def check_targets(Y, n, n_out, dtype, allow_labels, name="Y"):
    """Targets for a batch of n samples, as ``(Y2d, labels)`` ready for the kernels.

    Y may be an (n, n_out) array of targets, or, when ``allow_labels`` (softmax output), an (n,) array of integer
    class labels in [0, n_out); then Y2d is an empty (0, n_out) array and labels is int64. For n_out == 1 an (n,)
    array of targets is accepted as a column. Otherwise labels is an empty int64 array.
    """
    arr = as_array(Y, name)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers or integer labels, got an array of dtype {arr.dtype}")
    if arr.ndim == 1 and allow_labels:
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} labels for {n} samples in X")
        if arr.dtype.kind == "f":
            check_finite(arr, name)
            if not np.array_equal(arr, np.round(arr)):
                raise ValueError(f"{name} is 1-D, so it must hold integer class labels; got non-integer values")
            if arr.size and (arr.min() < 0 or arr.max() >= n_out):
                raise ValueError(
                    f"{name} holds class labels in [{arr.min():g}, {arr.max():g}], expected labels in [0, {n_out - 1}]"
                )
        # the range of the given integers (a uint64 label of 2**63 or more would wrap in int64), then the cast
        if arr.dtype.kind in "iu" and arr.size and (arr.min() < 0 or arr.max() >= n_out):
            raise ValueError(
                f"{name} holds class labels in [{arr.min()}, {arr.max()}], expected labels in [0, {n_out - 1}]"
            )
        labels = np.ascontiguousarray(arr, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= n_out):  # bool labels: True as 1
            raise ValueError(
                f"{name} holds class labels in [{labels.min()}, {labels.max()}], expected labels in [0, {n_out - 1}]"
            )
        return np.zeros((0, n_out), dtype=dtype), labels
    if arr.ndim == 1 and n_out == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        expected = f"({n}, {n_out}) targets" + (f" or ({n},) class labels" if allow_labels else "")
        raise ValueError(f"{name} must be {expected}, got shape {arr.shape}")
    if arr.shape != (n, n_out):
        hint = f"; class labels are 1-D: give {name}.ravel()" if allow_labels and arr.shape == (n, 1) else ""
        raise ValueError(f"{name} must have shape ({n}, {n_out}) to match X and the network, got {arr.shape}{hint}")
    return _finite_as(arr, name, dtype), _NO_LABELS


def check_out(out, size, dtype, name="out"):
    """A writeable, C-contiguous 1-D array of ``size`` elements and exactly ``dtype`` (it is written in place)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the network's), got {out.dtype}")
    if out.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},) like params, got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous array")
    return out


def check_sample_weight(sample_weight, n, dtype, name="sample_weight", allow_zero_sum=False, return_scale=False):
    """Sample weights for n samples as a C-contiguous (n,) array of dtype: finite, >= 0, with a positive sum
    (unless ``allow_zero_sum``: a part of the weights, whose total is checked elsewhere). None gives an empty
    array (unit weights, the kernels' fast path). Weights whose largest is outside [1 / ``WEIGHT_LIMIT``,
    ``WEIGHT_LIMIT``] come back scaled by the power of two that brings it just inside (a copy; not for a part of the
    weights), which leaves every weighted mean as it was (exactly, but for weights so much smaller than the largest
    that the scaling takes them below the dtype's smallest float); float64 weights are scaled before they are
    converted to a float32 dtype, so that weights below or above float32's range are weights too. With
    ``return_scale``, returns (weights, the factor they were scaled by: 1.0, or the power of two)."""
    if sample_weight is None:
        return (np.zeros(0, dtype=dtype), 1.0) if return_scale else np.zeros(0, dtype=dtype)
    given = as_array(sample_weight, name)
    sw = as_float_array(given, name, np.float64 if given.dtype == np.float64 else dtype, 1)
    if sw.shape[0] != n:
        raise ValueError(f"{name} has {sw.shape[0]} weights for {n} samples in X")
    if sw.size and sw.min() < 0:
        raise ValueError(f"{name} must be >= 0, got a minimum of {sw.min():g}")
    top = float(sw.max()) if sw.size else 0.0
    scale = 1.0
    if not allow_zero_sum and top > 0 and not 1.0 / WEIGHT_LIMIT <= top <= WEIGHT_LIMIT:
        # the largest into [LIMIT / 2, LIMIT) or [1 / LIMIT, 2 / LIMIT) (frexp's exponents): the smallest shift,
        # so that the fewest small weights fall below the dtype's range
        target = math.frexp(WEIGHT_LIMIT)[1] - 1 if top > WEIGHT_LIMIT else math.frexp(1.0 / WEIGHT_LIMIT)[1]
        shift = target - math.frexp(top)[1]
        sw, scale = np.ldexp(sw, shift), math.ldexp(1.0, shift)
    if not allow_zero_sum and not sw.sum(dtype=np.float64) > 0:
        raise ValueError(f"{name} must have a positive sum (all weights are zero)")
    if sw.dtype != dtype:  # float64 weights for a float32 network (checked finite above: only the cast's range)
        sw = _finite_as(sw, name, dtype)
    return (sw, scale) if return_scale else sw


def _array_object_layout():
    """Where NumPy's array object keeps what the checked entry points read (fastbp/kernels/checked.py), as
    ``(ndarray type, offset of the type, of the data pointer, of ndim, of the dimensions pointer, of the dtype, of
    the flags, the C-contiguous flag, the writeable flag, the int64 dtype)``: object addresses and byte offsets
    into the object. The offsets are those of NumPy's ``PyArrayObject_fields`` after CPython's object header, and
    each is verified on probe arrays against what NumPy itself reports; None when any differs (another Python or
    NumPy build), and then every call takes the checks in Python."""
    import ctypes

    word = ctypes.sizeof(ctypes.c_void_p)
    head = object.__basicsize__  # the object header; its last field is the type
    offsets = {"type": head - word, "data": head, "ndim": head + word, "dims": head + 2 * word}
    offsets.update(descr=head + 5 * word, flags=head + 6 * word)
    c_contiguous, writeable = 0x0001, 0x0400  # NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_WRITEABLE

    def read(obj, field, ctype=ctypes.c_int64):
        return ctype.from_address(id(obj) + offsets[field]).value

    def dims(a):
        return tuple(ctypes.c_int64.from_address(read(a, "dims") + word * k).value for k in range(a.ndim))

    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    frozen = np.arange(5, dtype=np.int64)
    frozen.flags.writeable = False
    probes = (base, base[:, ::2], base[1:3], frozen, np.zeros((2, 3, 0)))
    try:
        for a in probes:
            flags = read(a, "flags", ctypes.c_int32)
            if (
                read(a, "type") != id(np.ndarray)
                or read(a, "data") != a.ctypes.data
                or read(a, "ndim", ctypes.c_int32) != a.ndim
                or dims(a) != a.shape
                or read(a, "descr") != id(a.dtype)
                or bool(flags & c_contiguous) != a.flags.c_contiguous
                or bool(flags & writeable) != a.flags.writeable
            ):
                return None
    except (ValueError, TypeError, OSError):
        return None
    layout = (id(np.ndarray), *(offsets[k] for k in ("type", "data", "ndim", "dims", "descr", "flags")))
    return (*layout, c_contiguous, writeable, id(np.dtype(np.int64)))


#: The array object's layout for the checked entry points, or None (see ``_array_object_layout``).
ARRAY_OBJECT = _array_object_layout()


def writeable_arrays(state, names):
    """An unpickled object's ``state`` (its ``__dict__``) with the arrays ``names``, which compiled code writes
    through their addresses, copied when they arrived read-only: joblib passes large arrays to its worker processes
    as read-only memory maps, and a write into one is a segmentation fault, not an error. None entries stay."""
    for name in names:
        array = state.get(name)
        if isinstance(array, np.ndarray) and not array.flags.writeable:
            state[name] = np.array(array)
    return state
