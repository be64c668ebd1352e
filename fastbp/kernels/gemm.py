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

#: OpenBLAS sends a batch of products of at most this many multiply-adds (m n k) to its small-matrix kernels, whose
#: batch path crashes in the builds that pick their kernels at run time (DYNAMIC_ARCH, as SciPy's wheels are) up to
#: OpenBLAS 0.3.30 (OpenBLAS pull request 5980); :func:`_gemm_pair` sends only larger pairs to the batch.
PAIR_MIN_MNK = 100**3


def _scipy_openblas_batch():
    """dtype -> address of ``cblas_?gemm_batch`` (grouped, 32-bit integers) of the OpenBLAS that SciPy's wheels
    ship (its symbols carry the ``scipy_`` prefix), or 0 when no loaded library has it (another BLAS)."""
    from threadpoolctl import threadpool_info

    found = {np.dtype(np.float32): 0, np.dtype(np.float64): 0}
    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
            addresses = [ctypes.cast(getattr(lib, f"scipy_cblas_{x}gemm_batch"), ctypes.c_void_p).value for x in "sd"]
        except (OSError, AttributeError):
            continue
        found = dict(zip(found, addresses, strict=True))
        if "scipy" in info["filepath"].rsplit("/", 2)[-2]:  # the copy in SciPy's own folder, if there are several
            break
    return found


#: dtype -> address of the batch GEMM of SciPy's OpenBLAS, which runs the products of a batch at once, each on one of
#: its threads (0: none; the products then run one after the other). :func:`_gemm_pair` gives it the two independent
#: products of a layer's backward pass: measured 1.3x faster than each on 2 threads for 128 x 256 x 256 products.
BLAS_GEMM_BATCH = _scipy_openblas_batch()


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
def _xgemm_pair(typingctx, fn, jobs):
    """Two row-major products ``C = op(A) @ op(B) + beta * C`` in one call of the grouped batch GEMM at address
    ``fn`` (``cblas_?gemm_batch``: two groups of one product, alpha 1), which runs them at once on the BLAS's threads.

    jobs: a 2-tuple of (trans_a, trans_b, m, n, k, A, lda, B, ldb, beta, C, ldc) with integers (nonzero trans:
    transpose), a real beta, and arrays of one float dtype (only their data pointers are used). The arrays of
    arguments the CBLAS interface takes are stack slots allocated once in the caller's entry block.
    """
    if not (isinstance(fn, types.Integer) and isinstance(jobs, types.BaseTuple) and len(jobs) == 2):
        return None
    dtype = jobs[0][10].dtype
    if dtype not in (types.float32, types.float64) or any(job[i].dtype != dtype for job in jobs for i in (5, 7, 10)):
        return None
    sig = types.void(fn, jobs)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        real = context.get_value_type(dtype)
        jobs_ty = signature.args[1]
        jobs_ = [cgutils.unpack_tuple(builder, builder.extract_value(args[1], g)) for g in range(2)]

        def slots(ty, values):
            array = cgutils.alloca_once(builder, ir.ArrayType(ty, 2))
            for g, value in enumerate(values):
                builder.store(value, builder.gep(array, [i32(0), i32(g)]))
            return builder.gep(array, [i32(0), i32(0)])

        def ints(i, convert=None):
            values = [builder.trunc(job[i], i32) for job in jobs_]
            return slots(i32, values if convert is None else [convert(v) for v in values])

        def trans(value):  # CBLAS enums: CblasNoTrans 111, CblasTrans 112
            return builder.select(builder.icmp_signed("!=", value, value.type(0)), i32(112), i32(111))

        def data(i):
            arrays = [context.make_array(jobs_ty[g][i])(context, builder, jobs_[g][i]) for g in range(2)]
            return [builder.bitcast(array.data, real.as_pointer()) for array in arrays]

        betas = [context.cast(builder, jobs_[g][9], jobs_ty[g][9], dtype) for g in range(2)]
        p_i32, p_real, pp_real = i32.as_pointer(), real.as_pointer(), real.as_pointer().as_pointer()
        # order; transa, transb, m, n, k; alpha, a, lda, b, ldb, beta, c, ldc; group count, group sizes
        matrices = [p_real, pp_real, p_i32, pp_real, p_i32, p_real, pp_real, p_i32]
        fnty = ir.FunctionType(ir.VoidType(), [i32, p_i32, p_i32, p_i32, p_i32, p_i32, *matrices, i32, p_i32])
        builder.call(
            builder.inttoptr(args[0], fnty.as_pointer()),
            [
                i32(101),  # CblasRowMajor
                ints(0, trans),
                ints(1, trans),
                ints(2),
                ints(3),
                ints(4),
                slots(real, [real(1.0), real(1.0)]),
                slots(real.as_pointer(), data(5)),
                ints(6),
                slots(real.as_pointer(), data(7)),
                ints(8),
                slots(real, betas),
                slots(real.as_pointer(), data(10)),
                ints(11),
                i32(2),
                slots(i32, [i32(1), i32(1)]),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


@leaf
def _gemm_pair(gemm, batch, first, second):
    """Two independent row-major products, each ``(trans_a, trans_b, A, B, beta, C)`` meaning ``C = op(A) @ op(B)
    + beta * C`` as for :func:`_gemm`: at once by the batch GEMM at address ``batch`` (``BLAS_GEMM_BATCH``), or one
    after the other by the GEMM at ``gemm`` when ``batch`` is 0 or a product is not larger than
    :data:`PAIR_MIN_MNK`. NumPy: both products. The two C must not overlap each other or any operand."""
    ta1, tb1, A1, B1, beta1, C1 = first
    ta2, tb2, A2, B2, beta2, C2 = second
    m1, n1 = C1.shape
    m2, n2 = C2.shape
    k1 = A1.shape[0] if ta1 else A1.shape[1]
    k2 = A2.shape[0] if ta2 else A2.shape[1]
    if batch == 0 or min(m1 * n1 * k1, m2 * n2 * k2) <= PAIR_MIN_MNK:
        for ta, tb, A, B, beta, C in (first, second):  # one inlined copy of _gemm for both
            _gemm(gemm, ta, tb, 1.0, A, B, beta, C)
        return
    _xgemm_pair(
        batch,
        (
            (ta1, tb1, m1, n1, k1, A1, A1.shape[1], B1, B1.shape[1], beta1, C1, n1),
            (ta2, tb2, m2, n2, k2, A2, A2.shape[1], B2, B2.shape[1], beta2, C2, n2),
        ),
    )


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


def _plain_tier(gemm):
    """Whether the Numba type of a ``gemm`` tuple is the plain tier's ``(blas, batch)`` rather than the full tier's
    ``(blas, batch, bf16)`` (boundary.py): the test of the overloads that leave the full tier's code (bfloat16, the
    layer options) out of the plain tier's specializations."""
    return len(gemm) == 2


def _matmul(gemm, trans_a, trans_b, A, A16, B, B16, beta, C):
    """``C = op(A) @ op(B) + beta * C`` in the network's matmul precision (compiled code only; see the overload)."""
    raise NotImplementedError("_matmul() is for compiled code")


@overload(_matmul)
def _matmul_impl(gemm, trans_a, trans_b, A, A16, B, B16, beta, C):
    """The GEMM of every pass: ``gemm = (blas, batch, bf16)`` addresses in the full tier (boundary.py), ``(blas,
    batch)`` in the plain tier. With ``bf16 == 0`` (the network's dtype precision), ``C = op(A) @ op(B) + beta * C``
    by the BLAS at ``blas`` (:func:`_gemm`); otherwise (bfloat16 matmul precision, float32 networks only) by the
    bfloat16 GEMM at ``bf16`` on the bfloat16 twins A16 and B16 of A and B (uint16 arrays of the same shapes),
    accumulated in float32. The plain tier and float64 specializations have no bfloat16 branch."""
    if C.dtype != types.float32 or _plain_tier(gemm):

        def dtype_precision(gemm, trans_a, trans_b, A, A16, B, B16, beta, C):
            _gemm(gemm[0], trans_a, trans_b, 1.0, A, B, beta, C)

        return dtype_precision

    def either(gemm, trans_a, trans_b, A, A16, B, B16, beta, C):
        if gemm[2] != 0:
            m, n = C.shape
            if m == 0 or n == 0:
                return
            k = A16.shape[0] if trans_a else A16.shape[1]
            if k == 0:
                for i in range(m):
                    for j in range(n):
                        C[i, j] = beta * C[i, j] if beta != 0.0 else 0.0
                return
            _xgemm_bf16(gemm[2], trans_a, trans_b, m, n, k, 1.0, A16, A16.shape[1], B16, B16.shape[1], beta, C, n)
        else:
            _gemm(gemm[0], trans_a, trans_b, 1.0, A, B, beta, C)

    return either


def _matmul_pair(gemm, first, second):
    """Two independent products of a pass, each ``(trans_a, trans_b, A, A16, B, B16, beta, C)`` as :func:`_matmul`
    takes it (compiled code only; see the overload)."""
    raise NotImplementedError("_matmul_pair() is for compiled code")


@overload(_matmul_pair)
def _matmul_pair_impl(gemm, first, second):
    """In the dtype's own precision, both at once by the batch GEMM at ``gemm[1]`` (:func:`_gemm_pair`); in bfloat16
    precision, one after the other by :func:`_matmul` (oneDNN's bfloat16 GEMM has no batch)."""
    bf16 = not _plain_tier(gemm) and first[7].dtype == types.float32  # as in _matmul: else no bfloat16 branch

    def pair(gemm, first, second):
        ta1, tb1, A1, A1_16, B1, B1_16, beta1, C1 = first
        ta2, tb2, A2, A2_16, B2, B2_16, beta2, C2 = second
        if bf16 and gemm[-1] != 0:
            _matmul(gemm, ta1, tb1, A1, A1_16, B1, B1_16, beta1, C1)
            _matmul(gemm, ta2, tb2, A2, A2_16, B2, B2_16, beta2, C2)
        else:
            _gemm_pair(gemm[0], gemm[1], (ta1, tb1, A1, B1, beta1, C1), (ta2, tb2, A2, B2, beta2, C2))

    return pair


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
