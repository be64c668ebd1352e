"""fastbp: fast CPU backpropagation for dense neural networks, compiled with Numba over flat buffers."""

from . import reference
from .network import MLP
from .threads import blas_info, get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = ["MLP", "__version__", "blas_info", "get_num_threads", "reference", "set_num_threads"]
