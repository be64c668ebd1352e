"""One place to set the thread count of both Numba (prange) and BLAS (via threadpoolctl)."""

import numba
from threadpoolctl import threadpool_info, threadpool_limits

from ._validation import check_int

_limiter = None


def set_num_threads(n):
    """Use ``n`` threads in Numba parallel loops and in every BLAS library loaded (NumPy's and SciPy's).

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
