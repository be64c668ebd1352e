"""One place to set the thread count of BLAS, of OpenMP (via threadpoolctl) and of Numba.

fastbp's kernels are multi-threaded through their GEMMs, which hold nearly all the work: an OpenBLAS (NumPy's or
SciPy's, ``fastbp.kernels.gemm.BLAS_LIBRARY``), and in bfloat16 matmul precision oneDNN, which runs on OpenMP. No kernel
uses a Numba ``prange`` loop, so the Numba setting matters only to other Numba code in the process. The BLAS limit is
process-wide; OpenMP's and Numba's thread counts are per calling thread.
"""

import os

import numba
from threadpoolctl import threadpool_info, threadpool_limits

from ._validation import check_int


def usable_cores():
    """The cores this process may run on (its CPU affinity), as a frozenset of core numbers; every core where the
    system has no affinity (macOS, Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))  # pragma: no cover - macOS, Windows


_limiter = None


_count = None  # the count set by set_num_threads, applied again to an OpenMP runtime loaded later


def set_num_threads(n):
    """Use ``n`` threads in every BLAS library loaded (NumPy's and SciPy's), in OpenMP (oneDNN's bfloat16 GEMMs, also
    when oneDNN is loaded later) and in Numba parallel loops.

    n: int >= 1; larger than Numba's ``NUMBA_NUM_THREADS`` is capped to it. Returns the number set.
    """
    global _limiter, _count
    n = check_int(n, "n", minimum=1)
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    _limiter = threadpool_limits(limits=n, user_api="blas")
    threadpool_limits(limits=n, user_api="openmp")
    _count = n
    return n


def _apply_to_openmp():
    """After a library that runs on OpenMP is loaded (oneDNN): give it the count of ``set_num_threads``."""
    if _count is not None:
        threadpool_limits(limits=_count, user_api="openmp")


def get_num_threads():
    """Current Numba thread count (BLAS libraries follow ``set_num_threads`` when it was called)."""
    return numba.get_num_threads()


def _is_gemm_library(path, library):
    """Whether the BLAS library file at ``path`` is the one fastbp's GEMMs call: ``library``
    (``fastbp.kernels.gemm.BLAS_LIBRARY``, an OpenBLAS of NumPy's or SciPy's wheel) or, when that is None, SciPy's
    own (in SciPy's folder or its wheel's ``scipy.libs``)."""
    path = os.path.realpath(path)
    if library is not None:
        return path == os.path.realpath(library)
    import scipy

    root = os.path.realpath(os.path.dirname(scipy.__file__))
    return path.startswith((root + os.sep, root + ".libs" + os.sep))


def blas_info():
    """threadpoolctl's description of the loaded BLAS libraries (name, version, threads, CPU kernel)."""
    return [info for info in threadpool_info() if info.get("user_api") == "blas"]
