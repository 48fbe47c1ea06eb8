"""W8A16 GEMM for FP8 E4M3 weights with block scales: y = x @ W^T (+ bias), x fp16/bf16/fp32.

Weights: qweight float8_e4m3fn [N, K] row-major, with scales of kind (``ScaleEncoding``)
  F32   FP8_PB_WO: fp32 2-D block scales [ceil(N/B), ceil(K/B)] (B = block_size = 128),
        W[n, k] = w[n, k] * s[n // B, k // B]; the 4-D checkpoint form [N/B, 1, K/B, 1] is accepted;
  E8M0  MXFP8: uint8 scales transposed [K//G, N] (G = 32), W[n, k] = w[n, k] * 2^(s[k//G, n] - 127).

Design: one tensor-core kernel (paths "splitk" for M <= 16 with BLOCK_M = 16, "tiled" otherwise).
The FP8 byte is decoded with bit operations into fp16 (`w * 2^-8`, exact, subnormals included), so
no fp8 hardware is needed (sm80 works) and the interpreter is exact. When a K chunk lies inside one
scale block (always for F32 blocks: BLOCK_K divides B; for E8M0 when BLOCK_K divides 32) the scale is
applied to the fp32 partial product per column; otherwise (E8M0 with BLOCK_K > 32) each element is
scaled in fp32 and rounded once to the operand dtype.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl

from motensor.formats import ScaleEncoding, as_enum
from motensor.kernels import _util
from motensor.kernels._tiles import grouped_tile, row_offsets, split_k_range, store_tile
from motensor.kernels._decode import e4m3_f16_scaled, e8m0_f32

# The scale encodings this kernel reads (the vocabulary's ids, passed as SCALE_KIND).
SCALE_F32_BLOCK = tl.constexpr(ScaleEncoding.F32.value)   # fp32 2-D blocks
SCALE_E8M0_T = tl.constexpr(ScaleEncoding.E8M0.value)     # E8M0 groups, transposed [K//G, N]
W8_SCALE_KINDS = (ScaleEncoding.F32, ScaleEncoding.E8M0)


@triton.jit
def dot_main_loop(acc, x_row, mask_m, w_base, s_base, rn, mask_n, k_lo, k_hi, stride_wn, stride_s0,
                  SCALE_KIND: tl.constexpr, SBLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  EVEN_K: tl.constexpr):
    """The FP8-weight main loop over K in [k_lo, k_hi): ``acc += x[rows] @ W[rn]^T``, returned.

    x_row: [BLOCK_M] pointers to the activation rows (operand dtype = theirs); w_base: the weight
    as uint8 [N, K]; s_base: its scales. When a K chunk lies in one scale block the result carries
    a 2^-8 the caller removes (``acc * 256``); shared by ``_w8a16_kernel`` and ``moe_w8a16``.
    """
    CHUNK_IN_BLOCK: tl.constexpr = SBLOCK % BLOCK_K == 0
    op_dtype = x_row.dtype.element_ty
    for k0 in range(k_lo, k_hi, BLOCK_K):
        rk = tl.max_contiguous(tl.multiple_of(k0 + tl.arange(0, BLOCK_K), BLOCK_K), BLOCK_K)
        if EVEN_K:
            # No K tail anywhere: masks constant along K keep the loads vectorized.
            x_mask = mask_m[:, None]
            w_mask = mask_n[:, None]
        else:
            x_mask = mask_m[:, None] & (rk < k_hi)[None, :]
            w_mask = mask_n[:, None] & (rk < k_hi)[None, :]
        x = tl.load(x_row[:, None] + rk[None, :], mask=x_mask, other=0.0)
        if CHUNK_IN_BLOCK:
            # N-major tile (memory order, wide loads), handed to the MMA transposed (a smem view).
            wb = tl.load(w_base + row_offsets(rn, stride_wn)[:, None] + rk[None, :], mask=w_mask, other=0)  # [BN, BK]
            h = e4m3_f16_scaled(wb)                                                            # w * 2^-8
            if SCALE_KIND == SCALE_F32_BLOCK:
                s = tl.load(s_base + (rn // SBLOCK) * stride_s0 + k0 // SBLOCK, mask=mask_n, other=0.0)
            else:
                s = e8m0_f32(tl.load(s_base + (k0 // SBLOCK) * stride_s0 + rn, mask=mask_n, other=0))
            acc += tl.dot(x, tl.trans(h.to(op_dtype))) * s[None, :]
        else:
            # Only E8M0 gets here (F32 block chunks always lie inside one block, asserted by callers).
            # [BN, groups, G] view: one scale load/decode per group, broadcast in registers.
            NG: tl.constexpr = BLOCK_K // SBLOCK
            rn3 = rn[:, None, None]
            rg = tl.arange(0, NG)[None, :, None]
            k3 = k0 + rg * SBLOCK + tl.arange(0, SBLOCK)[None, None, :]
            if EVEN_K:
                mask3 = mask_n[:, None, None]
            else:
                mask3 = mask_n[:, None, None] & (k3 < k_hi)
            wb3 = tl.load(w_base + row_offsets(rn3, stride_wn) + k3, mask=mask3, other=0)
            s3 = e8m0_f32(tl.load(s_base + (k0 // SBLOCK + rg) * stride_s0 + rn3,
                                  mask=mask_n[:, None, None] & (k0 + rg * SBLOCK < k_hi), other=0))
            w = (e4m3_f16_scaled(wb3).to(tl.float32) * (s3 * 256.0)).to(op_dtype)
            acc = tl.dot(x, tl.trans(tl.reshape(w, (BLOCK_N, BLOCK_K))), acc)
    return acc


@triton.jit
def _w8a16_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, c_ptr,
    M, N, K, stride_xm, stride_wn, stride_s0, stride_cm, M_BUCKET,
    SCALE_KIND: tl.constexpr, SBLOCK: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
):
    """w_ptr: the FP8 weight viewed as uint8 [N, K]. Grid (cdiv(M, BM) * cdiv(N, BN), SPLIT_K)."""
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    CHUNK_IN_BLOCK: tl.constexpr = SBLOCK % BLOCK_K == 0
    tl.static_assert(CHUNK_IN_BLOCK or SCALE_KIND == SCALE_E8M0_T, "F32 block scales need BLOCK_K | block size")
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < M
    mask_n = rn < N
    k_lo, k_hi = split_k_range(K, pid_k, SPLIT_K, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = dot_main_loop(acc, x_ptr + row_offsets(rm, stride_xm), mask_m, w_ptr, s_ptr, rn, mask_n, k_lo, k_hi,
                        stride_wn, stride_s0, SCALE_KIND, SBLOCK, BLOCK_N, BLOCK_K, EVEN_K)
    if CHUNK_IN_BLOCK:
        acc = acc * 256.0
    store_tile(acc, c_ptr, b_ptr, rm, rn, mask_m, mask_n, stride_cm, pid_k, HAS_BIAS, SPLIT_K)


_cfg = _util.config


# H100 candidates, unmeasured. BLOCK_K always divides 128 (one FP8_PB_WO block per chunk).
SPLITK_CONFIGS = [
    _cfg(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, GROUP_M=1),
    _cfg(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, SPLIT_K=4, GROUP_M=1),
    _cfg(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, SPLIT_K=8, GROUP_M=1),
    _cfg(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, SPLIT_K=8, GROUP_M=1, num_stages=4),
    _cfg(BLOCK_M=16, BLOCK_N=128, BLOCK_K=64, SPLIT_K=2, GROUP_M=1, num_stages=4),
]
TILED_CONFIGS = [
    _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, GROUP_M=8, num_stages=4),
    _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, GROUP_M=8, num_warps=8, num_stages=3),
    _cfg(BLOCK_M=64, BLOCK_N=256, BLOCK_K=64, SPLIT_K=1, GROUP_M=8, num_warps=8, num_stages=3),
    _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, SPLIT_K=1, GROUP_M=8, num_warps=8, num_stages=3),
    _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, SPLIT_K=1, GROUP_M=8, num_stages=4),
]
INTERP_CONFIGS = {
    "splitk": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=2, GROUP_M=1),
    "tiled": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1, GROUP_M=4),
}
_KEY = ["N", "K", "M_BUCKET", "SCALE_KIND", "SBLOCK"]
_kernel = triton.heuristics({"EVEN_K": lambda a: a["K"] % (a["BLOCK_K"] * a["SPLIT_K"]) == 0})(_w8a16_kernel)
_splitk_tuned = triton.autotune(SPLITK_CONFIGS, key=_KEY, reset_to_zero=["c_ptr"])(_kernel)
_tiled_tuned = triton.autotune(TILED_CONFIGS, key=_KEY)(_kernel)
PATHS = ("splitk", "tiled")


def _check(qweight: torch.Tensor, scales: torch.Tensor, scale_kind: ScaleEncoding,
           block_size: int) -> tuple[int, int, torch.Tensor]:
    if qweight.dtype != torch.float8_e4m3fn or qweight.dim() != 2:
        raise ValueError(f"qweight must be float8_e4m3fn [N, K], got {qweight.dtype} {tuple(qweight.shape)}")
    n, k = qweight.shape
    if scale_kind is ScaleEncoding.F32:
        scales = scales.reshape(scales.shape[0], -1)      # accepts the 4-D [N/B, 1, K/B, 1] form
        want = (triton.cdiv(n, block_size), triton.cdiv(k, block_size))
        if scales.dtype != torch.float32 or tuple(scales.shape) != want:
            raise ValueError(f"F32 block scales must be float32 {want}, got {scales.dtype} {tuple(scales.shape)}")
    elif scale_kind is ScaleEncoding.E8M0:
        if k % block_size or scales.dtype != torch.uint8 or tuple(scales.shape) != (k // block_size, n):
            raise ValueError(f"E8M0 scales must be uint8 [K//G, N] = [{k // block_size}, {n}] with K % G == 0, "
                             f"got {scales.dtype} {tuple(scales.shape)}")
    else:
        raise ValueError(f"scale_kind must be one of {[s.name for s in W8_SCALE_KINDS]}, got {scale_kind.name}")
    return n, k, scales


def w8a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, *, scale_kind: Union[ScaleEncoding, str],
               block_size: int, bias: Optional[torch.Tensor] = None, path: Optional[str] = None,
               config: Optional[dict] = None) -> torch.Tensor:
    """y = x @ dequant(qweight, scales)^T (+ bias) in x.dtype. scale_kind F32 (2-D blocks, block_size
    128) or E8M0 (block_size 32); path None | "splitk" | "tiled"; config as in w4a16_gemm."""
    scale_kind = as_enum(ScaleEncoding, scale_kind, "scale_kind")
    n, k, scales = _check(qweight, scales, scale_kind, block_size)
    _util.check_device(x, qweight, scales, bias)
    x2 = _util.flatten_rows(x, k)
    m = x2.shape[0]
    out_shape = (*x.shape[:-1], n)
    path = _util.resolve_path("w8a16", x, m, path, PATHS)
    if m == 0:
        return x.new_empty(out_shape)
    fixed = config if config is not None else (INTERP_CONFIGS[path] if _util.interpreting() else None)
    if scale_kind is ScaleEncoding.F32 and fixed is not None and block_size % fixed["BLOCK_K"]:
        raise ValueError(f"BLOCK_K={fixed['BLOCK_K']} must divide block_size={block_size}")
    if scale_kind is ScaleEncoding.F32 and fixed is None and block_size % 128:
        raise ValueError("tuned configs assume block_size 128 (pass config= for other block sizes)")
    qw = qweight.view(torch.uint8)
    if qw.stride(-1) != 1:
        qw = qw.contiguous()
    direct = fixed["SPLIT_K"] == 1 if fixed is not None else path == "tiled"
    c = torch.empty((m, n), device=x.device, dtype=x.dtype) if direct else \
        torch.zeros((m, n), device=x.device, dtype=torch.float32)
    args = (x2, qw, scales, bias if bias is not None else x2, c, m, n, k, x2.stride(0), qw.stride(0),
            scales.stride(0), c.stride(0), _util.m_bucket(m))
    meta = dict(SCALE_KIND=scale_kind.value, SBLOCK=block_size, HAS_BIAS=bias is not None)
    grid = lambda mt: (triton.cdiv(m, mt["BLOCK_M"]) * triton.cdiv(n, mt["BLOCK_N"]), mt["SPLIT_K"])
    if fixed is not None:
        _kernel[grid](*args, **meta, **fixed)
    else:
        (_splitk_tuned if path == "splitk" else _tiled_tuned)[grid](*args, **meta)
    y = c if direct else c.to(x.dtype)
    return y.reshape(out_shape)
