"""4-bit weight dequantization to fp16/bf16 with one raw CUDA kernel compiled by CuPy (NVRTC).

Used by the large-M prefill path ("w4a16_dequant_cublas"): dequantize W once per call, then
cuBLAS through torch. CuPy is optional: it is imported only when a kernel is first needed, and
`is_available()` says whether it can be. Without it `dequant_w4` raises `CupyUnavailableError`.

Layout (kernels/README.md): qweight uint8 [N, K//2] (even k in the low nibble), E2M1 codes or
INT4 (q + 8); scales [K//G, N]: E4M3 (float8_e4m3fn, times global_scale), E8M0 or F32.
W[n, k] = v[n, k] * (s[k//G, n] * global_scale), rounded once to the output dtype: the same
fp32 operations as kernels/reference.py `dequant_w4`.

One thread per 32-bit word (8 elements, one group since G % 8 == 0): a coalesced 4-byte load,
the nibbles decoded with an fp32 bit trick (no table, no CUDA headers), one 16-byte store of 8 halves.
The global scale is read from device memory (no host sync; CUDA-graph safe).
"""
from __future__ import annotations

import functools
from typing import Optional, Union

import torch

from motensor._cupy import CupyUnavailableError, import_cupy, is_available
from motensor._cupy import cupy as _cupy_module
from motensor.formats import Element, ScaleEncoding, as_enum
from motensor.kernels import _util

__all__ = ["CupyUnavailableError", "dequant_w4", "is_available"]

_SOURCE = r"""
// No #include: NVRTC under cupy-cuda13x need not find cuda_fp16.h / cuda_bf16.h, so every
// conversion is written out. Values are built from fp32 bit patterns with exact power-of-two
// factors (no flush to zero: NVRTC keeps fp32 subnormals unless told --ftz).

// E2M1 code -> float (exact): code bits 0..2 as fp32 exponent/mantissa bits 22..24 give
// value * 2^-126 for normal and subnormal codes alike (times 2^126, exact); sign to bit 31.
__device__ __forceinline__ float e2m1_value(unsigned int c) {
    return __int_as_float((int)(((c & 7u) << 22) | ((c & 8u) << 28))) * 0x1p126f;
}
__device__ __forceinline__ float scale_value(const SCALE_T* scales, long long idx) {
#if SCALE_KIND == SCALE_E4M3   // E4M3 byte -> fp32 bits 20..30 give value * 2^-120 (subnormals too)
    unsigned int b = scales[idx];
    return __int_as_float((int)(((b & 0x7Fu) << 20) | ((b & 0x80u) << 24))) * 0x1p120f;
#elif SCALE_KIND == SCALE_E8M0 // E8M0
    unsigned int e = scales[idx];
    return e == 0 ? __int_as_float(0x00400000) : __int_as_float((int)(e << 23));
#else
    return scales[idx];
#endif
}
// fp32 -> fp16 bits, round to nearest even (the hardware cvt).
__device__ __forceinline__ unsigned short f16_bits(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
// fp32 -> bf16 bits, round to nearest even (finite inputs; NaN cannot arise here).
__device__ __forceinline__ unsigned short bf16_bits(float v) {
    unsigned int u = __float_as_uint(v);
    return (unsigned short)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

extern "C" __global__ void dequant_w4(const unsigned int* __restrict__ qw, const SCALE_T* __restrict__ scales,
                                      const float* __restrict__ global_scale, uint4* __restrict__ out,
                                      long long n_words, int words_per_row, int n_cols, int group) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n_words) return;
    long long n = idx / words_per_row;
    int kw = (int)(idx - n * words_per_row);
    float s = scale_value(scales, (long long)(kw * 8 / group) * n_cols + n);
#if HAS_GS
    s = s * global_scale[0];
#endif
    unsigned int w = qw[idx];
    union { uint4 v; unsigned short h[8]; } pack;   // 16-byte store of 8 halves
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        unsigned int c = (w >> (4 * i)) & 0xFu;
#if ELEMENT == ELEM_E2M1
        float v = e2m1_value(c);
#else
        float v = (float)((int)c - 8);
#endif
        pack.h[i] = TO_BITS(v * s);
    }
    out[idx] = pack.v;
}
"""

_ELEMENTS = (Element.E2M1, Element.INT4)
# C type of a scale, per encoding (the defines below carry the encodings' ids).
_SCALE_C_TYPES = {ScaleEncoding.E4M3: "unsigned char", ScaleEncoding.E8M0: "unsigned char",
                  ScaleEncoding.F32: "float"}
_OUTS = {torch.float16: "f16_bits(v)", torch.bfloat16: "bf16_bits(v)"}
_THREADS = 256


# The probe lives in motensor._cupy (shared with motensor.dispatch, which must not import kernels).
_import_cupy = import_cupy
_cupy = _cupy_module


def defines(element: Element, scale_kind: ScaleEncoding, out_dtype: torch.dtype, has_gs: bool) -> str:
    """The preprocessor defines that specialise the kernel source: the ids of the vocabulary's
    enums (motensor._vocab), so the CUDA source and the Triton kernels read the same numbers."""
    return (f"#define ELEM_E2M1 {Element.E2M1.value}\n#define SCALE_E4M3 {ScaleEncoding.E4M3.value}\n"
            f"#define SCALE_E8M0 {ScaleEncoding.E8M0.value}\n"
            f"#define ELEMENT {element.value}\n#define SCALE_KIND {scale_kind.value}\n"
            f"#define SCALE_T {_SCALE_C_TYPES[scale_kind]}\n"
            f"#define TO_BITS(v) {_OUTS[out_dtype]}\n#define HAS_GS {int(has_gs)}\n")


@functools.lru_cache(maxsize=None)
def _kernel(element: Element, scale_kind: ScaleEncoding, out_dtype: torch.dtype, has_gs: bool):
    cupy = _cupy()
    code = defines(element, scale_kind, out_dtype, has_gs) + _SOURCE
    return cupy.RawModule(code=code, options=("--std=c++17",)).get_function("dequant_w4")


def dequant_w4(qweight: torch.Tensor, scales: torch.Tensor, global_scale: Optional[torch.Tensor] = None, *,
               element: Union[Element, str], scale_kind: Union[ScaleEncoding, str], group_size: int,
               dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Dequantize a 4-bit packed weight to `dtype` (fp16/bf16) [N, K] on its CUDA device."""
    element = _util.w4_element(element)
    scale_kind = as_enum(ScaleEncoding, scale_kind, "scale_kind")
    if dtype not in _OUTS:
        raise ValueError(f"dtype must be float16 or bfloat16, got {dtype}")
    n, k = _util.check_w4_layout(qweight, scales, scale_kind, group_size)
    cupy = _cupy()
    if qweight.device.type != "cuda":
        raise ValueError("dequant_w4 (CuPy) needs CUDA tensors; use kernels.reference.dequant_w4 on CPU")
    qw = qweight.contiguous()
    sc = (scales.view(torch.uint8) if scale_kind is ScaleEncoding.E4M3 else scales).contiguous()
    gs = _util.as_scalar(global_scale, "global_scale")
    out = torch.empty((n, k), device=qweight.device, dtype=dtype)
    n_words = n * k // 8
    if n_words == 0:
        return out
    fn = _kernel(element, scale_kind, dtype, gs is not None)
    import numpy as np
    stream = torch.cuda.current_stream(qweight.device)
    with cupy.cuda.Device(qweight.device.index), cupy.cuda.ExternalStream(stream.cuda_stream):
        fn(((n_words + _THREADS - 1) // _THREADS,), (_THREADS,),
           (np.uint64(qw.data_ptr()), np.uint64(sc.data_ptr()), np.uint64(gs.data_ptr() if gs is not None else 0),
            np.uint64(out.data_ptr()), np.int64(n_words), np.int32(k // 8), np.int32(n), np.int32(group_size)))
    return out
