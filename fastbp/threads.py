"""One place to set the thread count of both BLAS (via threadpoolctl) and Numba.

fastbp's kernels are multi-threaded through BLAS (the GEMMs, which hold nearly all the work); no kernel uses a
Numba ``prange`` loop yet, so today the Numba setting matters only to other Numba code in the process. The BLAS
limit is process-wide; Numba's thread count is per calling thread.
"""

import numba
from threadpoolctl import threadpool_info, threadpool_limits

from ._validation import check_int

_limiter = None


def set_num_threads(n):
    """Use ``n`` threads in every BLAS library loaded (NumPy's and SciPy's) and in Numba parallel loops.

    n: int >= 1; larger than Numba's ``NUMBA_NUM_THREADS`` is capped to it. Returns the number set.
    """
    global _limiter
    n = check_int(n, "n", minimum=1)
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    _limiter = threadpool_limits(limits=n, user_api="blas")
    return n


def get_num_threads():
    """Current Numba thread count (BLAS libraries follow :func:`set_num_threads` when it was called)."""
    return numba.get_num_threads()


def blas_info():
    """threadpoolctl's description of the loaded BLAS libraries (name, version, threads, CPU kernel)."""
    return [info for info in threadpool_info() if info.get("user_api") == "blas"]
