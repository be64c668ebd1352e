"""Arrays from raw addresses, for the entry points called from Python.

Measured: Numba wraps every array ARGUMENT of a call from Python in a fresh runtime MemInfo (one NRT allocation
per array, freed on return; ``NUMBA_NRT_STATS=1`` shows 9 for a ``_value_and_grad`` call). The entry points
therefore take data addresses and sizes (plain integers, which cost no allocation) and rebuild the arrays inside
compiled code with ``numba.carray``, which allocates nothing. The Python side guarantees that each address is
that of a live, validated, C-contiguous buffer of the stated size and dtype for the duration of the call.
"""

from numba import carray, types
from numba.extending import intrinsic

from .._config import leaf


@intrinsic
def _pointer(typingctx, address, marker):
    """Reinterpret an integer address as a pointer to values of ``marker``'s type (marker: any scalar)."""
    if not isinstance(address, types.Integer):
        return None
    sig = types.CPointer(types.unliteral(marker))(address, marker)

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
