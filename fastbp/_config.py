"""Compilation settings shared by every compiled kernel.

All kernels take their ``fastmath`` flags from ``FASTMATH`` (a test fails if a kernel hard-codes them).
The set deliberately omits ``nnan`` and ``ninf``: with those, LLVM may assume no NaN/inf exists and fold away
the checks that detect a diverging loss.

``error_model="numpy"``: a float division by zero gives inf/NaN (IEEE) instead of raising. Besides being the
semantics we want (NaN detection), Python's model adds a zero check to every division, which keeps loops with a
division from vectorising (Adam's update ran 10x slower).
"""

import hashlib
import math
import pathlib
from functools import partial

import numba
from numba import types
from numba.core import caching
from numba.extending import overload
from numba.np.numpy_support import as_dtype

# --------------------------------------------------------------------------------------------------------------
# On-disk cache invalidation. Numba checks only the source file of the function it loads from its cache, but a
# cached driver contains the machine code of every kernel it calls, from other files. Editing a kernel (or
# installing a version that changes one) would leave drivers running stale code. fastbp's kernels are therefore
# cached with a source stamp that hashes ALL kernel sources (this file and fastbp/kernels/*.py): any change to any
# of them invalidates every kernel's cache. The profiler's timing loops (fastbp/breakdown.py) call kernels too: their
# stamp hashes that one, so that a kernel change recompiles them, but editing the profiler recompiles nothing else.

_PACKAGE = pathlib.Path(__file__).resolve().parent
_SOURCES = sorted([_PACKAGE / "_config.py", *(_PACKAGE / "kernels").glob("*.py")])
KERNEL_SOURCE_STAMP = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in _SOURCES)).hexdigest()
_PROFILER = _PACKAGE / "breakdown.py"
#: Source file -> the stamp of the cache entries of the functions it defines.
STAMPS = {
    **{path: KERNEL_SOURCE_STAMP for path in _SOURCES},
    _PROFILER: hashlib.sha256(KERNEL_SOURCE_STAMP.encode() + _PROFILER.read_bytes()).hexdigest(),
}


def _stamped(locator):
    class Stamped(locator):
        @classmethod
        def from_function(cls, py_func, py_file):
            if pathlib.Path(py_file).resolve() not in STAMPS:
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return STAMPS[pathlib.Path(self._py_file).resolve()]

    Stamped.__name__ = Stamped.__qualname__ = f"Fastbp{locator.__name__}"
    return Stamped


def _caching_class(name):
    """A class of numba.core.caching by its public name, or the private one of older Numba releases."""
    return getattr(caching, name, None) or getattr(caching, "_" + name)


_locators = _caching_class("CacheImpl")._locator_classes
if not any(cls.__name__.startswith("Fastbp") for cls in _locators):
    _locators[:0] = [
        _stamped(_caching_class(name))
        for name in ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
    ]

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

#: Decorator for compiled kernels and drivers: cached on disk, no GIL, the fastmath flags above, and inlined by LLVM
#: into every compiled caller, so that the process that compiles a kernel runs the machine code that later processes
#: load from the cache. A call left to the JIT ran the callee's own copy in the first process and, in the others, the
#: copy linked into the caller and optimized again with it, whose fused multiply-adds differ in the last bit.
kernel = partial(numba.njit, cache=True, nogil=True, fastmath=set(FASTMATH), error_model="numpy", forceinline=True)

#: Decorator for leaf helpers that are inlined into their callers at Numba-IR level (so a constant
#: activation code passed by the caller folds away every other branch).
leaf = partial(numba.njit, inline="always", fastmath=set(FASTMATH), error_model="numpy")

DTYPES = ("float32", "float64")

#: Sample weights whose largest lies outside [1 / WEIGHT_LIMIT, WEIGHT_LIMIT] are scaled by a power of two (exact: the
#: weighted mean is unchanged) before use: each row's delta takes sw_i / sum(sw), which the fastmath flags compute as
#: sw_i * (1 / sum(sw)), and that reciprocal overflows for weights near the smallest float64 (the sum itself near the
#: largest).
WEIGHT_LIMIT = 2.0**64


def like(x, arr):
    """``x`` converted to the dtype of ``arr``, an array, a float scalar or a tuple of floats (an entry point's
    marker, kernels/boundary.py), in compiled code only. Float64 scalars mixed into float32 loops would promote every
    operation to float64; converting the scalars once before a loop keeps it in float32."""
    raise NotImplementedError("like() is for compiled code")


@overload(like, inline="always")
def _like(x, arr):
    scalar = as_dtype(arr.dtype if isinstance(arr, (types.Array, types.UniTuple)) else arr).type
    return lambda x, arr: scalar(x)


@leaf
def finite(x):
    """True when the float x is neither NaN nor infinite, in compiled code. Use this, not math.isfinite: Numba's
    math.isfinite tests ``x - x == 0``, which the nsz + reassoc flags fold to True (found by a divergence test;
    NaN went undetected). isnan (an unordered compare) and isinf (a compare with inf) survive these flags."""
    return not (math.isnan(x) or math.isinf(x))
