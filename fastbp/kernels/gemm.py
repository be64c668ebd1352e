"""Direct calls of a BLAS GEMM from compiled code: SciPy's ``sgemm``/``dgemm`` by default.

Numba's ``np.dot(a, b, out)`` cannot accumulate (beta is fixed at 0) and copies non-contiguous operands. Here a
Fortran GEMM is called straight from nopython code, with transpose flags, alpha and beta, and no allocation.

Which GEMM: the compiled passes take the function's ADDRESS as a run-time integer (``gemm``), and call through it.
Cached machine code therefore holds no address of the process that compiled it (a constant function pointer would
be baked into the on-disk cache and point at nothing in the next process), and one compiled specialization serves
every GEMM with the Fortran interface of the dtype: SciPy's OpenBLAS (:data:`BLAS_GEMM`, the default) or, in the
PyTorch bridge, the MKL that PyTorch links (it runs on torch's own thread pool).

Row-major trick: BLAS is column-major, and a C-ordered ``(m, n)`` array is the column-major ``(n, m)`` array of
its transpose. So ``C = op(A) @ op(B)`` in row-major is computed as the column-major ``C.T = op(B).T @ op(A).T``,
that is, BLAS is called with the operands swapped and no data is copied.
"""

import ctypes

import numpy as np
import scipy.linalg.cython_blas as _cython_blas
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._config import leaf


def _capsule_address(capsule):
    """Address of the C function held in a Cython ``__pyx_capi__`` capsule."""
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


#: dtype -> address of SciPy's Fortran GEMM of that dtype (32-bit integers), the GEMM of every compiled pass.
BLAS_GEMM = {
    np.dtype(np.float32): _capsule_address(_cython_blas.__pyx_capi__["sgemm"]),
    np.dtype(np.float64): _capsule_address(_cython_blas.__pyx_capi__["dgemm"]),
}


@intrinsic
def _xgemm(typingctx, fn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major Fortran GEMM ``c = alpha * op(a) @ op(b) + beta * c`` on the data of arrays a, b, c, by the
    function at address ``fn`` (an integer: a ``?gemm`` of the arrays' dtype with the Fortran interface).

    trans_a, trans_b: nonzero integer means transpose. m, n, k, lda, ldb, ldc: integers (BLAS 32-bit int).
    alpha, beta: any real scalar, cast to the arrays' dtype. a, b, c: arrays of one float dtype; only their data
    pointers are used. All scalar arguments are passed by reference, as Fortran expects, through stack slots
    allocated once in the caller's entry block.
    """
    if not (
        isinstance(fn, types.Integer)
        and isinstance(c, types.Array)
        and c.dtype in (types.float32, types.float64)
        and a.dtype == c.dtype
        and b.dtype == c.dtype
    ):
        return None
    dtype = c.dtype
    sig = types.void(fn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        fn_, ta, tb, m_, n_, k_, alpha_, a_, lda_, b_, ldb_, beta_, c_, ldc_ = args
        argtys = signature.args
        i8, i32 = ir.IntType(8), ir.IntType(32)
        real = context.get_value_type(dtype)

        def by_ref(value, ty):
            slot = cgutils.alloca_once(builder, ty)
            builder.store(value, slot)
            return slot

        def flag(value):
            transposed = builder.icmp_signed("!=", value, value.type(0))
            return by_ref(builder.select(transposed, i8(ord("T")), i8(ord("N"))), i8)

        def integer(value):
            return by_ref(builder.trunc(value, i32), i32)

        def scalar(value, ty):
            return by_ref(context.cast(builder, value, ty, dtype), real)

        def data(value, ty):
            return builder.bitcast(context.make_array(ty)(context, builder, value).data, real.as_pointer())

        p_i8, p_i32, p_real = i8.as_pointer(), i32.as_pointer(), real.as_pointer()
        fnty = ir.FunctionType(
            ir.VoidType(),
            [p_i8, p_i8, p_i32, p_i32, p_i32, p_real, p_real, p_i32, p_real, p_i32, p_real, p_real, p_i32],
        )
        target = builder.inttoptr(fn_, fnty.as_pointer())
        builder.call(
            target,
            [
                flag(ta),
                flag(tb),
                integer(m_),
                integer(n_),
                integer(k_),
                scalar(alpha_, argtys[6]),
                data(a_, argtys[7]),
                integer(lda_),
                data(b_, argtys[9]),
                integer(ldb_),
                scalar(beta_, argtys[11]),
                data(c_, argtys[12]),
                integer(ldc_),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


@leaf
def _gemm(gemm, trans_a, trans_b, alpha, A, B, beta, C):
    """Row-major ``C = alpha * op(A) @ op(B) + beta * C`` by one call of the GEMM at address ``gemm``, in place.

    NumPy: ``C[...] = alpha * (A.T if trans_a else A) @ (B.T if trans_b else B) + beta * C``.

    gemm: int, address of a Fortran ``?gemm`` of the arrays' dtype (e.g. ``BLAS_GEMM[dtype]``). A, B, C: 2-D
    C-contiguous arrays of one dtype (float32 or float64); C is (m, n) and the output. trans_a, trans_b: int, 0 or
    1. alpha, beta: float. With beta == 0, C's previous content is ignored (BLAS does not read it, so NaN in C does
    not propagate). Thread-safe for distinct C; BLAS may use several threads.
    """
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:
        # Defensive (the network's sizes are >= 1): C = beta * C, without relying on BLAS's handling of k == 0.
        for i in range(m):
            for j in range(n):
                C[i, j] = beta * C[i, j] if beta != 0.0 else 0.0
        return
    _xgemm(gemm, trans_b, trans_a, n, m, k, alpha, B, B.shape[1], A, A.shape[1], beta, C, n)


@intrinsic
def _xgemm_bf16(typingctx, fn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Row-major ``c = alpha * op(a) @ op(b) + beta * c`` with bfloat16 a and b (uint16 arrays holding the bits)
    and a float32 c, by oneDNN's ``dnnl_gemm_bf16bf16f32`` at address ``fn`` (its C interface: flags as chars,
    sizes as int64 and alpha, beta as float, all by value; the products are accumulated in float32).

    trans_a, trans_b: nonzero integer means transpose. m, n, k, lda, ldb, ldc: integers. alpha, beta: real scalars.
    Returns nothing; a nonzero status of oneDNN (invalid arguments, which the callers' shapes rule out) is ignored.
    """
    if not (
        isinstance(fn, types.Integer)
        and isinstance(c, types.Array)
        and c.dtype == types.float32
        and a.dtype == types.uint16
        and b.dtype == types.uint16
    ):
        return None
    sig = types.void(fn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        fn_, ta, tb, m_, n_, k_, alpha_, a_, lda_, b_, ldb_, beta_, c_, ldc_ = args
        argtys = signature.args
        i8, i64, f32 = ir.IntType(8), ir.IntType(64), ir.FloatType()

        def flag(value):
            transposed = builder.icmp_signed("!=", value, value.type(0))
            return builder.select(transposed, i8(ord("T")), i8(ord("N")))

        def integer(value, ty):
            return context.cast(builder, value, ty, types.int64)

        def scalar(value, ty):
            return context.cast(builder, value, ty, types.float32)

        def data(value, ty, elem):
            return builder.bitcast(context.make_array(ty)(context, builder, value).data, elem.as_pointer())

        i16 = ir.IntType(16)
        fnty = ir.FunctionType(
            ir.IntType(32),
            [i8, i8, i64, i64, i64, f32, i16.as_pointer(), i64, i16.as_pointer(), i64, f32, f32.as_pointer(), i64],
        )
        target = builder.inttoptr(fn_, fnty.as_pointer())
        builder.call(
            target,
            [
                flag(ta),
                flag(tb),
                integer(m_, argtys[3]),
                integer(n_, argtys[4]),
                integer(k_, argtys[5]),
                scalar(alpha_, argtys[6]),
                data(a_, argtys[7], i16),
                integer(lda_, argtys[8]),
                data(b_, argtys[9], i16),
                integer(ldb_, argtys[10]),
                scalar(beta_, argtys[11]),
                data(c_, argtys[12], f32),
                integer(ldc_, argtys[13]),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


def _matmul(gemm, trans_a, trans_b, A, A16, B, B16, beta, C):
    """``C = op(A) @ op(B) + beta * C`` in the network's matmul precision (compiled code only; see the overload)."""
    raise NotImplementedError("_matmul() is for compiled code")


@overload(_matmul)
def _matmul_impl(gemm, trans_a, trans_b, A, A16, B, B16, beta, C):
    """The GEMM of every pass: ``gemm = (blas, bf16)`` addresses in the full tier (boundary.py), ``(blas,)`` in the
    plain tier. With ``bf16 == 0`` (the network's dtype precision), ``C = op(A) @ op(B) + beta * C`` by the BLAS at
    ``blas`` (:func:`_gemm`); otherwise (bfloat16 matmul precision, float32 networks only) by the bfloat16 GEMM at
    ``bf16`` on the bfloat16 twins A16 and B16 of A and B (uint16 arrays of the same shapes), accumulated in float32.
    The plain tier and float64 specializations have no bfloat16 branch."""
    if C.dtype != types.float32 or len(gemm) == 1:

        def dtype_precision(gemm, trans_a, trans_b, A, A16, B, B16, beta, C):
            _gemm(gemm[0], trans_a, trans_b, 1.0, A, B, beta, C)

        return dtype_precision

    def either(gemm, trans_a, trans_b, A, A16, B, B16, beta, C):
        if gemm[1] != 0:
            m, n = C.shape
            if m == 0 or n == 0:
                return
            k = A16.shape[0] if trans_a else A16.shape[1]
            if k == 0:
                for i in range(m):
                    for j in range(n):
                        C[i, j] = beta * C[i, j] if beta != 0.0 else 0.0
                return
            _xgemm_bf16(gemm[1], trans_a, trans_b, m, n, k, 1.0, A16, A16.shape[1], B16, B16.shape[1], beta, C, n)
        else:
            _gemm(gemm[0], trans_a, trans_b, 1.0, A, B, beta, C)

    return either


@intrinsic
def _bits32(typingctx, x):
    """The IEEE bits of a float32 as a uint32 (a bit cast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(x), codegen


@leaf
def _bf16(x):
    """The bfloat16 nearest to the float32 x (ties to even), as its 16 bits (uint16); NaN stays a (quiet) NaN.
    The top 16 bits of x after adding 0x7FFF plus the lowest kept bit: the rounding of oneDNN and PyTorch. (A
    float64 x, in code that a float64 network compiles but never runs, is taken as float32 first.)"""
    if x != x:
        return np.uint16(0x7FC0)
    u = _bits32(np.float32(x))
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@leaf
def _bf16_row(X, X16, i):
    """X16[i, :] <- the bfloat16 of X[i, :] (X: float32 (n, m); X16: uint16, the same shape), the twin of a row
    written while the row is in L1."""
    for j in range(X.shape[1]):
        X16[i, j] = _bf16(X[i, j])


@leaf
def _to_bf16(x, x16):
    """x16[...] <- the bfloat16 of x (1-D, one length). Callers pass views of the range, and the loop runs over
    range(len): over range(start, stop) LLVM does not vectorise it."""
    for k in range(x.shape[0]):
        x16[k] = _bf16(x[k])
