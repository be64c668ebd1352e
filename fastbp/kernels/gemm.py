"""Direct calls of a BLAS GEMM from compiled code: the newest OpenBLAS that NumPy's or SciPy's wheel ships, by default.

Numba's ``np.dot(a, b, out)`` cannot accumulate (beta is fixed at 0) and copies non-contiguous operands. Here a
Fortran GEMM is called straight from nopython code, with transpose flags, alpha and beta, and no allocation.

Which GEMM: the compiled passes take the function's ADDRESS as a run-time integer (``gemm``), and call through it.
Cached machine code therefore holds no address of the process that compiled it (a constant function pointer would
be baked into the on-disk cache and point at nothing in the next process), and one compiled specialization serves
every GEMM with the Fortran interface of the dtype: an OpenBLAS of NumPy's or SciPy's wheel (:data:`BLAS_GEMM`, the
default; NumPy's has 64-bit integers) or, in the PyTorch bridge, the MKL that PyTorch links (on torch's thread pool).
The integer arguments are passed as 64-bit integers, whose first four bytes on a little-endian machine are the 32-bit
integer that an LP64 BLAS reads: one call serves both interfaces.

Row-major trick: BLAS is column-major, and a C-ordered ``(m, n)`` array is the column-major ``(n, m)`` array of
its transpose. So ``C = op(A) @ op(B)`` in row-major is computed as the column-major ``C.T = op(B).T @ op(A).T``,
that is, BLAS is called with the operands swapped and no data is copied.
"""

import ctypes
import sys

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


#: Whether the Fortran GEMM call passes 64-bit integers, which serve both interfaces on a little-endian machine (see
#: the module docstring); a big-endian one passes the LP64 interface's 32 bits and never uses a 64-bit-integer BLAS.
_LITTLE = sys.byteorder == "little"


def _version(info):
    """threadpoolctl's version string of a library as a tuple of integers ("0.3.31.188.0" -> (0, 3, 31, 188, 0))."""
    return tuple(int(part) for part in (info.get("version") or "").split(".") if part.isdigit())


def _scipy_openblas_builds():
    """[((version, 64-bit integers), path, {dtype: Fortran ?gemm}, {dtype: batch GEMM})] of the loaded OpenBLAS
    builds of the scipy-openblas project, which NumPy's and SciPy's wheels ship (symbols prefixed ``scipy_``; NumPy's
    with 64-bit integers, suffixed ``64_``); empty when none is loaded (another BLAS). The batch GEMM's address is
    negated for 64-bit integers (:func:`_xgemm_pair`), 0 when the build has none."""
    from threadpoolctl import threadpool_info

    dtypes = (np.dtype(np.float32), np.dtype(np.float64))
    interfaces = [("scipy_{}gemm_", "scipy_cblas_{}gemm_batch", 1)]  # 32-bit integers (SciPy's)
    if _LITTLE:
        interfaces.insert(0, ("scipy_{}gemm_64_", "scipy_cblas_{}gemm_batch64_", -1))  # 64-bit (NumPy's)
    found = []
    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for gemm, batch, sign in interfaces:
            if not hasattr(lib, gemm.format("s")):
                continue
            gemms = [ctypes.cast(getattr(lib, gemm.format(x)), ctypes.c_void_p).value for x in "sd"]
            batches = [sign * (ctypes.cast(getattr(lib, batch.format(x), 0), ctypes.c_void_p).value or 0) for x in "sd"]
            key = (_version(info), sign < 0)
            found.append(
                (key, info["filepath"], dict(zip(dtypes, gemms, strict=True)), dict(zip(dtypes, batches, strict=True)))
            )
            break
    return found


#: The build fastbp's GEMMs call: the newest, because releases tune their kernels (one release's GEMM ran the
#: benchmarks' forward products up to 14% faster than the release before: docs/measurements.md); of two of one
#: version NumPy's, whose thread pool is then the one that NumPy's own products use.
_OPENBLAS = max(_scipy_openblas_builds(), key=lambda build: build[0], default=(None,))[1:]

#: Path of the library of :data:`BLAS_GEMM` (an OpenBLAS of NumPy's or SciPy's wheel), or None: the GEMM that SciPy's
#: ``cython_blas`` exports (whichever BLAS SciPy was built with).
BLAS_LIBRARY = _OPENBLAS[0] if _OPENBLAS else None

#: dtype -> address of the Fortran GEMM of that dtype, the GEMM of every compiled pass.
BLAS_GEMM = (
    _OPENBLAS[1]
    if _OPENBLAS
    else {
        np.dtype(np.float32): _capsule_address(_cython_blas.__pyx_capi__["sgemm"]),
        np.dtype(np.float64): _capsule_address(_cython_blas.__pyx_capi__["dgemm"]),
    }
)

#: OpenBLAS sends a batch of products of at most this many multiply-adds (m n k) to its small-matrix kernels, whose
#: batch path crashes in the builds that pick their kernels at run time (DYNAMIC_ARCH, as the wheels' builds are) up to
#: OpenBLAS 0.3.30 (OpenBLAS pull request 5980); :func:`_gemm_pair` sends only larger pairs to the batch.
PAIR_MIN_MNK = 100**3


#: dtype -> address of ``cblas_?gemm_batch`` (grouped) of the library of :data:`BLAS_GEMM`, negated when its integers
#: are 64-bit, or 0 when it has none (the products then run one after the other). It runs the products of a batch at
#: once, each on one of its threads: :func:`_gemm_pair` gives it the two independent products of a layer's backward
#: pass (measured 1.3x faster than each on 2 threads for 128 x 256 x 256 products).
BLAS_GEMM_BATCH = _OPENBLAS[2] if _OPENBLAS else {np.dtype(np.float32): 0, np.dtype(np.float64): 0}


def _int_cast(builder, value, to):
    """An LLVM integer value converted to the integer type ``to`` (sign-extended or truncated)."""
    if value.type.width > to.width:
        return builder.trunc(value, to)
    return builder.sext(value, to) if value.type.width < to.width else value


@intrinsic
def _xgemm(typingctx, fn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major Fortran GEMM ``c = alpha * op(a) @ op(b) + beta * c`` on the data of arrays a, b, c, by the
    function at address ``fn`` (an integer: a ``?gemm`` of the arrays' dtype with the Fortran interface).

    trans_a, trans_b: nonzero integer means transpose. m, n, k, lda, ldb, ldc: integers (passed as 64-bit integers on
    a little-endian machine, see the module docstring).
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
        i8, integer_type = ir.IntType(8), ir.IntType(64 if _LITTLE else 32)
        real = context.get_value_type(dtype)

        def by_ref(value, ty):
            slot = cgutils.alloca_once(builder, ty)
            builder.store(value, slot)
            return slot

        def flag(value):
            transposed = builder.icmp_signed("!=", value, value.type(0))
            return by_ref(builder.select(transposed, i8(ord("T")), i8(ord("N"))), i8)

        def integer(value):
            return by_ref(_int_cast(builder, value, integer_type), integer_type)

        def scalar(value, ty):
            return by_ref(context.cast(builder, value, ty, dtype), real)

        def data(value, ty):
            return builder.bitcast(context.make_array(ty)(context, builder, value).data, real.as_pointer())

        p_i8, p_int, p_real = i8.as_pointer(), integer_type.as_pointer(), real.as_pointer()
        fnty = ir.FunctionType(
            ir.VoidType(),
            [p_i8, p_i8, p_int, p_int, p_int, p_real, p_real, p_int, p_real, p_int, p_real, p_real, p_int],
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
    ``fn`` (``cblas_?gemm_batch``: two groups of one product, alpha 1), which runs them at once on the BLAS's threads;
    at address ``-fn`` with 64-bit integers when ``fn`` is negative (``BLAS_GEMM_BATCH``). Its integers are arrays,
    which one layout cannot serve for both widths as the Fortran GEMM's scalars do: both calls are compiled, and the
    sign picks one.

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
        i32 = ir.IntType(32)  # the CBLAS enums, in both interfaces
        real = context.get_value_type(dtype)
        jobs_ty = signature.args[1]
        jobs_ = [cgutils.unpack_tuple(builder, builder.extract_value(args[1], g)) for g in range(2)]

        def slots(ty, values):
            array = cgutils.alloca_once(builder, ir.ArrayType(ty, 2))
            for g, value in enumerate(values):
                builder.store(value, builder.gep(array, [i32(0), i32(g)]))
            return builder.gep(array, [i32(0), i32(0)])

        def trans(i):  # CBLAS enums: CblasNoTrans 111, CblasTrans 112
            flags = [builder.icmp_signed("!=", job[i], job[i].type(0)) for job in jobs_]
            return slots(i32, [builder.select(flag, i32(112), i32(111)) for flag in flags])

        def data(i):
            arrays = [context.make_array(jobs_ty[g][i])(context, builder, jobs_[g][i]) for g in range(2)]
            return [builder.bitcast(array.data, real.as_pointer()) for array in arrays]

        betas = [context.cast(builder, jobs_[g][9], jobs_ty[g][9], dtype) for g in range(2)]
        p_real, pp_real = real.as_pointer(), real.as_pointer().as_pointer()

        def call(address, integer_type):
            def ints(i):
                return slots(integer_type, [_int_cast(builder, job[i], integer_type) for job in jobs_])

            p_int = integer_type.as_pointer()
            # order; transa, transb, m, n, k; alpha, a, lda, b, ldb, beta, c, ldc; group count, group sizes
            matrices = [p_real, pp_real, p_int, pp_real, p_int, p_real, pp_real, p_int]
            fnty = ir.FunctionType(
                ir.VoidType(),
                [i32, i32.as_pointer(), i32.as_pointer(), p_int, p_int, p_int, *matrices, integer_type, p_int],
            )
            builder.call(
                builder.inttoptr(address, fnty.as_pointer()),
                [
                    i32(101),  # CblasRowMajor
                    trans(0),
                    trans(1),
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
                    integer_type(2),
                    slots(integer_type, [integer_type(1), integer_type(1)]),
                ],
            )

        fn_ = args[0]
        with builder.if_else(builder.icmp_signed("<", fn_, fn_.type(0))) as (wide, narrow):
            with wide:
                call(builder.neg(fn_), ir.IntType(64))
            with narrow:
                call(fn_, i32)
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
