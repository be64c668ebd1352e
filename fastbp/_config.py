"""Compilation settings shared by every compiled kernel.

All kernels take their ``fastmath`` flags from :data:`FASTMATH` (a test fails if a kernel hard-codes them).
The set deliberately omits ``nnan`` and ``ninf``: with those, LLVM may assume no NaN/inf exists and fold away
the checks that detect a diverging loss.
"""

from functools import partial

import numba

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

#: Decorator for compiled kernels and drivers: cached on disk, no GIL, the fastmath flags above.
kernel = partial(numba.njit, cache=True, nogil=True, fastmath=set(FASTMATH))

#: Decorator for leaf helpers that are inlined into their callers at Numba-IR level (so a constant
#: activation code passed by the caller folds away every other branch).
leaf = partial(numba.njit, inline="always", fastmath=set(FASTMATH))

DTYPES = ("float32", "float64")
