"""Arrays from raw addresses, for the entry points called from Python.

Numba wraps every array ARGUMENT of a call from Python in a fresh runtime MemInfo (one NRT allocation
per array, freed on return; ``NUMBA_NRT_STATS=1`` shows 9 for a ``_value_and_grad`` call). The entry points
therefore take data addresses and sizes (plain integers, which cost no allocation) and rebuild the arrays inside
compiled code with ``numba.carray``, which allocates nothing. The Python side guarantees that each address is
that of a live, validated, C-contiguous buffer of the stated size and dtype for the duration of the call.

The ``marker`` argument of every entry point selects its compiled specialization: a scalar of the network's dtype
(the plain tier: plain dense layers in the dtype's own precision), or a 1-tuple of one (the full tier: layers with
normalization, residual connections or dropout, and bfloat16 matmul precision). The tier reaches the passes as the
type of ``gemm`` (:func:`_gemms`), and the code of layer options and of the bfloat16 GEMM is typed, and so
compiled, only into full-tier specializations: a plain network's first run compiles none of it.
"""

import numpy as np
from numba import carray, types
from numba.extending import intrinsic, overload

from .._config import leaf
from .layout import N_COLUMNS


@intrinsic
def _pointer(typingctx, address, marker):
    """Reinterpret an integer address as a pointer to values of ``marker``'s type (marker: any scalar, or an entry
    point's full-tier 1-tuple of one)."""
    if not isinstance(address, types.Integer):
        return None
    scalar = marker.dtype if isinstance(marker, types.UniTuple) else marker
    sig = types.CPointer(types.unliteral(scalar))(address, marker)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@leaf
def _array1d(address, size, marker):
    """The (size,) C array of marker's dtype at ``address`` (no allocation, no ownership)."""
    return carray(_pointer(address, marker), size)


@leaf
def _array2d(address, rows, cols, marker):
    """The (rows, cols) C array of marker's dtype at ``address`` (no allocation, no ownership)."""
    return carray(_pointer(address, marker), (rows, cols))


# The entry points take their buffers as tuples of integers (no allocation to pass either), grouped as the Python
# side holds them (``MLP._entry_network``, ``MLP._entry_workspace``, ``MLP._entry_batch``).


def _gemms(blas, batch, bf16, marker):
    """The ``gemm`` tuple of the passes (kernels/gemm.py): ``(blas, batch)`` for a scalar marker (the plain tier),
    ``(blas, batch, bf16)`` for a 1-tuple (the full tier) (compiled code only; see the overload)."""
    raise NotImplementedError("_gemms() is for compiled code")


@overload(_gemms, inline="always")
def _gemms_impl(blas, batch, bf16, marker):
    if isinstance(marker, types.UniTuple):
        return lambda blas, batch, bf16, marker: (blas, batch, bf16)
    return lambda blas, batch, bf16, marker: (blas, batch)


@leaf
def _network_arrays(network, marker):
    """(params (n_params,), params16, layout (n_layers, 12) int64, gemm, buffers) from (p_params, n_params, p_layout,
    n_layers, blas, batch, bf16, p_params16, p_buffers, n_buffers): gemm, the addresses of the GEMMs the passes call
    (:func:`_gemms`; batch: 0 without a batch GEMM, bf16: 0 in the dtype's own precision); params16: the (n_params,)
    uint16 bfloat16 twin of the weights in bfloat16 precision, else empty; buffers: (n_buffers,), the running
    statistics of batch norm."""
    p_params, n_params, p_layout, n_layers, blas, batch, bf16, p_params16, p_buffers, n_buffers = network
    return (
        _array1d(p_params, n_params, marker),
        _array1d(p_params16, n_params if bf16 else 0, np.uint16(0)),
        _array2d(p_layout, n_layers, N_COLUMNS, np.int64(0)),
        _gemms(blas, batch, bf16, marker),
        _array1d(p_buffers, n_buffers, marker),
    )


@leaf
def _batch_arrays(batch, marker):
    """(X (n, n_in), Y (n_Y, n_out), labels (n_labels,) int64, sample weights (n_sw,)) from their addresses and
    sizes; n_Y, n_labels and n_sw are n or 0."""
    p_X, n, n_in, p_Y, n_Y, n_out, p_labels, n_labels, p_sw, n_sw = batch
    X = _array2d(p_X, n, n_in, marker)
    Y = _array2d(p_Y, n_Y, n_out, marker)
    return X, Y, _array1d(p_labels, n_labels, np.int64(0)), _array1d(p_sw, n_sw, marker)


@leaf
def _workspace_arrays(workspace, marker):
    """((acts, delta_a, delta_b, delta_c, aux, sums), (x16, acts16, delta_a16, delta_b16)) 1-D workspace buffers from
    (p_acts, n_acts, p_delta_a, p_delta_b, p_delta_c, n_delta, p_aux, n_aux, p_sums, n_sums, p_x16, n_x16, p_acts16,
    p_delta_a16, p_delta_b16): the activations, the three delta buffers, the auxiliary workspace of the layers'
    options, float64 scratch, and in bfloat16 precision (n_x16 > 0) the uint16 bfloat16 twins of the activations,
    of the first two delta buffers and of the input (empty otherwise)."""
    (
        p_acts,
        n_acts,
        p_da,
        p_db,
        p_dc,
        n_delta,
        p_aux,
        n_aux,
        p_sums,
        n_sums,
        p_x16,
        n_x16,
        p_acts16,
        p_da16,
        p_db16,
    ) = workspace
    twin = n_x16 > 0
    u16 = np.uint16(0)
    work = (
        _array1d(p_acts, n_acts, marker),
        _array1d(p_da, n_delta, marker),
        _array1d(p_db, n_delta, marker),
        _array1d(p_dc, n_delta, marker),
        _array1d(p_aux, n_aux, marker),
        _array1d(p_sums, n_sums, np.float64(0)),
    )
    work16 = (
        _array1d(p_x16, n_x16, u16),
        _array1d(p_acts16, n_acts if twin else 0, u16),
        _array1d(p_da16, n_delta if twin else 0, u16),
        _array1d(p_db16, n_delta if twin else 0, u16),
    )
    return work, work16
