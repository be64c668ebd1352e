"""fastbp: fast CPU backpropagation for dense neural networks, compiled with Numba over flat buffers."""

from . import data, graph, optim, plot, reference
from .checking import gradcheck
from .checkpoint import CheckpointError, load
from .flat import FlatObjective, value_and_grad_flat
from .network import MLP
from .optim import SGD, Adam, AdamW
from .threads import blas_info, get_num_threads, set_num_threads
from .trainer import DivergenceError, Trainer

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "SGD",
    "Adam",
    "AdamW",
    "CheckpointError",
    "DivergenceError",
    "FlatObjective",
    "Trainer",
    "__version__",
    "blas_info",
    "data",
    "get_num_threads",
    "gradcheck",
    "graph",
    "load",
    "optim",
    "plot",
    "reference",
    "set_num_threads",
    "value_and_grad_flat",
]
