"""oneDNN's bfloat16 GEMM, for ``matmul_precision="bfloat16"`` (the ``bf16`` extra: the ``onednn-cpu-gomp`` wheel).

The library is found through the installed distribution's file list (no search path to configure), loaded once
with ctypes, and its functions are called from compiled code through their addresses (kernels/gemm.py), like the
BLAS's float GEMMs. bfloat16 products are fast only where the CPU multiplies bfloat16 in hardware: oneDNN's effective
instruction set must include AVX512_BF16 (or AMX); elsewhere oneDNN would emulate them, slower than float32, so
asking for bfloat16 there is refused with an error that says so.
"""

import ctypes
import functools
import importlib.metadata
import os

DISTRIBUTION = "onednn-cpu-gomp"
INSTALL = "python -m pip install 'fastbp[bf16]'"

# oneDNN's dnnl_cpu_isa_t values are bit masks that contain those of the instruction sets they extend.
_ISA_NAMES = {
    0x0: "default",
    0x1: "sse41",
    0x3: "avx",
    0x7: "avx2",
    0xF: "avx2_vnni",
    0x1F: "avx2_vnni_2",
    0x27: "avx512_core",
    0x67: "avx512_core_vnni",
    0xE7: "avx512_core_bf16",
    0x1EF: "avx512_core_fp16",
    0xFEF: "avx512_core_amx",
    0x1FEF: "avx512_core_amx_fp16",
}
_BF16_ISA = 0xE7  # avx512_core_bf16: VDPBF16PS, the bfloat16 dot product in hardware; AMX includes it


class _Version(ctypes.Structure):
    _fields_ = [
        ("major", ctypes.c_int),
        ("minor", ctypes.c_int),
        ("patch", ctypes.c_int),
        ("hash", ctypes.c_char_p),
        ("cpu_runtime", ctypes.c_uint),
        ("gpu_runtime", ctypes.c_uint),
    ]


def _library_path():
    """Path of libdnnl.so.3 as installed by the onednn-cpu-gomp wheel, or None when it is not installed."""
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if os.path.basename(str(file)).startswith("libdnnl.so"):
            path = os.path.realpath(file.locate())
            if os.path.isfile(path):
                return path
    return None


@functools.cache
def info():
    """What this machine offers for bfloat16 matrix products, as a dict: ``installed`` (bool), ``path``,
    ``version``, ``isa`` (oneDNN's effective instruction set, by name), ``accelerated`` (bool: the CPU multiplies
    bfloat16 in hardware), ``gemm`` (address of ``dnnl_gemm_bf16bf16f32``, or 0) and ``reason`` (why bfloat16 is not
    available, or None)."""
    path = _library_path()
    result = {"installed": path is not None, "path": path, "version": None, "isa": None, "accelerated": False}
    result.update(gemm=0, reason=None)
    if path is None:
        result["reason"] = f"oneDNN is not installed ({INSTALL})"
        return result
    try:
        lib = ctypes.CDLL(path)
        from .threads import _apply_to_openmp

        _apply_to_openmp()
        lib.dnnl_version.restype = ctypes.POINTER(_Version)
        version = lib.dnnl_version().contents
        lib.dnnl_get_effective_cpu_isa.restype = ctypes.c_int
        isa = lib.dnnl_get_effective_cpu_isa()
        gemm = ctypes.cast(lib.dnnl_gemm_bf16bf16f32, ctypes.c_void_p).value
    except (OSError, AttributeError) as err:
        result["reason"] = f"oneDNN at {path} could not be loaded ({err}); reinstall it ({INSTALL})"
        return result
    result.update(version=f"{version.major}.{version.minor}.{version.patch}", isa=_ISA_NAMES.get(isa, hex(isa)))
    result["accelerated"] = isa & _BF16_ISA == _BF16_ISA
    if result["accelerated"]:
        result["gemm"] = gemm
    else:
        result["reason"] = (
            f"this CPU has no bfloat16 arithmetic (oneDNN's instruction set here is {result['isa']}; bfloat16 needs "
            "AVX512_BF16 or AMX), so bfloat16 products would be emulated and slower than float32"
        )
    return result


def bf16_gemm():
    """Address of oneDNN's bfloat16 GEMM; raises RuntimeError saying why and what to do when bfloat16 matrix
    products are not available here."""
    status = info()
    if status["reason"] is not None:
        raise RuntimeError(
            f"matmul_precision='bfloat16' is not available: {status['reason']}. Use matmul_precision='float32'."
        )
    return status["gemm"]
