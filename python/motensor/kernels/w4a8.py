"""W4A8 GEMM on FP8 tensor cores: FP8 per-tensor static activations x 4-bit weights expanded to FP8.

  x_q   = e4m3(clamp(x / input_scale, +-448))                       (static, per tensor)
  W4A8_AWQ       (element INT4, scale F32):  w_fp8 = e4m3(q * (weight_scale[g, n] / weight_scale_2))
  W4A8_NVFP4_FP8 (element E2M1, scale E4M3): w_fp8 = e4m3(e2m1 * weight_scale[g, n])
  y     = (x_q @ w_fp8^T) * (input_scale * weight_scale_2) (+ bias)   (FORMATS §4.6b, §4.8)

Weight layout as in w4a16 (qweight uint8 [N, K//2], scales [K//G, N]). E8M0 (W4A8_MXFP4_FP8) is
not supported: its scales belong in a block-scaled MMA, not in an FP8 weight.

Operand dtype is a constexpr:
  fp8e4nv  sm89+ (and the CPU interpreter, whose fp8 `tl.dot` is exact on fp8-valued operands);
  fp16     older GPUs: the same fp8-rounded values held in fp16 (exact), fp32 accumulation.
Rounding to E4M3 is done in software (`round_e4m3`, bit exact, works everywhere). With
`HW_CVT=True` (sm89+ only, never in the interpreter, whose fp8 cast is wrong) the hardware
round-to-nearest-even `cvt` is used instead: same values, fewer instructions; unverified here.

Activations: with `X_PREQUANT` the kernel reads an already-quantized float8 x (the launcher runs
`act_quant.fp8_quant_static` once for the tiled path, so large M does not re-quantize x for every
N tile); otherwise x is quantized in the main loop (small M, one launch).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl

from motensor.formats import Element, ScaleEncoding, as_enum
from motensor.kernels import _util
from motensor.kernels._tiles import grouped_tile, row_offsets, split_k_range, store_tile
from motensor.kernels._decode import (ELEM_E2M1, E2M1_F16_FACTOR, SCALE_E4M3, e2m1_f16_scaled, e4m3_f16_scaled,
                                      int4_f32, round_e4m3)


# Hopper's fp8 MMA adds its products into the accumulator with fewer than fp32's bits, and on sm90
# Triton lets that run over all of K unless told otherwise (its default there is 2^30 products).
# Every FP8_IMPRECISE_ACC products (one fp8 wgmma's K) the partial sum is added to the fp32
# accumulator instead, as cuBLAS does for `_scaled_mm` without fast accumulation. No effect on
# other GPUs, fp16 operands or the interpreter.
FP8_IMPRECISE_ACC = tl.constexpr(32)


@triton.jit
def _to_operand(v, OP_DTYPE: tl.constexpr, HW_CVT: tl.constexpr):
    """fp32 -> E4M3-valued operand. Software RNE (exact everywhere) or the hardware cvt."""
    if HW_CVT:
        return tl.minimum(tl.maximum(v, -448.0), 448.0).to(tl.float8e4nv, fp_downcast_rounding="rtne")
    return round_e4m3(v).to(OP_DTYPE)


@triton.jit
def _x_operand(x_ptr, offs, mask, in_scale, X_PREQUANT: tl.constexpr, OP_DTYPE: tl.constexpr,
               HW_CVT: tl.constexpr):
    if X_PREQUANT:
        bits = tl.load(x_ptr + offs, mask=mask, other=0)          # float8 x viewed as uint8
        if OP_DTYPE == tl.float8e4nv:
            xq = bits.to(tl.float8e4nv, bitcast=True)
        else:
            xq = (e4m3_f16_scaled(bits) * 256.0).to(OP_DTYPE)
    else:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        xq = _to_operand(tl.math.div_rn(x, in_scale), OP_DTYPE, HW_CVT)
    return xq


@triton.jit
def _w_operand(codes, scale, ELEMENT: tl.constexpr, OP_DTYPE: tl.constexpr, HW_CVT: tl.constexpr):
    """codes: nibbles; scale: fp32 multiplier already divided by weight_scale_2 where needed."""
    if ELEMENT == ELEM_E2M1:
        v = e2m1_f16_scaled(codes).to(tl.float32) * E2M1_F16_FACTOR
    else:
        v = int4_f32(codes)
    return _to_operand(v * scale, OP_DTYPE, HW_CVT)


@triton.jit
def _w4a8_kernel(
    x_ptr, w_ptr, s_ptr, ws2_ptr, is_ptr, b_ptr, c_ptr,
    M, N, K, stride_xm, stride_wn, stride_sg, stride_cm, M_BUCKET,
    ELEMENT: tl.constexpr, SCALE_KIND: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr,
    X_PREQUANT: tl.constexpr, OP_DTYPE: tl.constexpr, HW_CVT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
):
    """Grid (cdiv(M, BM) * cdiv(N, BN), SPLIT_K). Even/odd K halves as in w4a16 (no interleave)."""
    tl.static_assert(BLOCK_K % 64 == 0, "each nibble half feeds an fp8 MMA with K >= 32")
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    HALF: tl.constexpr = BLOCK_K // 2
    CHUNK_IN_GROUP: tl.constexpr = GROUP % BLOCK_K == 0
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tl.arange(0, HALF)
    mask_m = rm < M
    mask_n = rn < N
    k_lo, k_hi = split_k_range(K, pid_k, SPLIT_K, BLOCK_K)
    ws2 = tl.load(ws2_ptr)
    in_scale = tl.load(is_ptr)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + 2 * rj
        if EVEN_K:
            x_mask = mask_m[:, None]   # no K tail: masks constant along K keep loads vectorized
        else:
            x_mask = mask_m[:, None] & (kk < k_hi)[None, :]
        x_offs = row_offsets(rm, stride_xm)[:, None] + kk[None, :]
        x_even = _x_operand(x_ptr, x_offs, x_mask, in_scale, X_PREQUANT, OP_DTYPE, HW_CVT)
        x_odd = _x_operand(x_ptr, x_offs + 1, x_mask, in_scale, X_PREQUANT, OP_DTYPE, HW_CVT)
        # Packed tile N-major (memory order), FP8 operand handed to the MMA transposed.
        if CHUNK_IN_GROUP:
            # One scale per column for the whole chunk: one division per column, not per element.
            rb = tl.max_contiguous(tl.multiple_of(k0 // 2 + rj, HALF), HALF)
            if EVEN_K:
                w_mask = mask_n[:, None]
            else:
                w_mask = mask_n[:, None] & (kk < k_hi)[None, :]
            p = tl.load(w_ptr + row_offsets(rn, stride_wn)[:, None] + rb[None, :], mask=w_mask, other=0).to(tl.int32)
            s_raw = tl.load(s_ptr + (k0 // GROUP) * stride_sg + rn, mask=mask_n, other=0)[:, None]
        else:
            # [BN, groups, G/2] view: one scale load (and AWQ division) per group.
            NG: tl.constexpr = BLOCK_K // GROUP
            rn3 = rn[:, None, None]
            rg = tl.arange(0, NG)[None, :, None]
            kb3 = k0 // 2 + rg * (GROUP // 2) + tl.arange(0, GROUP // 2)[None, None, :]
            if EVEN_K:
                mask3 = rn3 < N
            else:
                mask3 = (rn3 < N) & (2 * kb3 < k_hi)
            p = tl.load(w_ptr + row_offsets(rn3, stride_wn) + kb3, mask=mask3, other=0).to(tl.int32)
            s_raw = tl.load(s_ptr + (k0 // GROUP + rg) * stride_sg + rn3,
                            mask=(rn3 < N) & (k0 + rg * GROUP < k_hi), other=0)
        if SCALE_KIND == SCALE_E4M3:
            scale = e4m3_f16_scaled(s_raw).to(tl.float32) * 256.0
        else:
            scale = tl.math.div_rn(s_raw.to(tl.float32), ws2)      # correctly rounded, as the reference
        w_lo = tl.reshape(_w_operand(p & 0xF, scale, ELEMENT, OP_DTYPE, HW_CVT), (BLOCK_N, HALF))
        w_hi = tl.reshape(_w_operand(p >> 4, scale, ELEMENT, OP_DTYPE, HW_CVT), (BLOCK_N, HALF))
        if OP_DTYPE == tl.float8e4nv:
            acc = tl.dot(x_even, tl.trans(w_lo), acc, max_num_imprecise_acc=FP8_IMPRECISE_ACC)
            acc = tl.dot(x_odd, tl.trans(w_hi), acc, max_num_imprecise_acc=FP8_IMPRECISE_ACC)
        else:
            acc = tl.dot(x_even, tl.trans(w_lo), acc)
            acc = tl.dot(x_odd, tl.trans(w_hi), acc)

    acc = acc * (in_scale * ws2)
    store_tile(acc, c_ptr, b_ptr, rm, rn, mask_m, mask_n, stride_cm, pid_k, HAS_BIAS, SPLIT_K)


_cfg = _util.config


# H100 candidates, unmeasured; none spills registers on sm90 (python -m motensor.kernels.aot_check
# --all-configs). BLOCK_K >= 64 (fp8 wgmma K = 32 per nibble half).
SPLITK_CONFIGS = [
    _cfg(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, GROUP_M=1),
    _cfg(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, SPLIT_K=4, GROUP_M=1),
    _cfg(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, SPLIT_K=8, GROUP_M=1),
    _cfg(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, SPLIT_K=8, GROUP_M=1, num_stages=4),
]
TILED_CONFIGS = [
    _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, GROUP_M=8, num_stages=4),
    _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, GROUP_M=8, num_warps=8, num_stages=3),
    _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, SPLIT_K=1, GROUP_M=8, num_warps=8, num_stages=4),
    _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, SPLIT_K=1, GROUP_M=8, num_warps=4, num_stages=4),
]
INTERP_CONFIGS = {
    "splitk": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=2, GROUP_M=1),
    "tiled": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=1, GROUP_M=4),
}
_KEY = ["N", "K", "M_BUCKET", "ELEMENT", "GROUP"]
_kernel = triton.heuristics({"EVEN_K": lambda a: a["K"] % (a["BLOCK_K"] * a["SPLIT_K"]) == 0})(_w4a8_kernel)
_splitk_tuned = triton.autotune(SPLITK_CONFIGS, key=_KEY, reset_to_zero=["c_ptr"])(_kernel)
_tiled_tuned = triton.autotune(TILED_CONFIGS, key=_KEY)(_kernel)
PATHS = ("splitk", "tiled")
OPERANDS = {"fp8e4m3": tl.float8e4nv, "fp16(fp8 values)": tl.float16}
#: (element, scale) pairs whose weight is an FP8 operand per tensor (FORMATS 4.6b, 4.8).
W4A8_KINDS = ((Element.INT4, ScaleEncoding.F32), (Element.E2M1, ScaleEncoding.E4M3))


def w4a8_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, weight_scale_2: torch.Tensor,
              input_scale: torch.Tensor, *, element: Union[Element, str], scale_kind: Union[ScaleEncoding, str],
              group_size: int,
              bias: Optional[torch.Tensor] = None, path: Optional[str] = None, operand: Optional[str] = None,
              prequant: Optional[bool] = None, hw_cvt: bool = False, config: Optional[dict] = None) -> torch.Tensor:
    """W4A8 GEMM, output in x.dtype, shape [..., N].

    (element, scale_kind) = ("INT4", "F32") for W4A8_AWQ or ("E2M1", "E4M3") for W4A8_NVFP4_FP8;
    weight_scale_2 / input_scale: fp32 scalar tensors. path None | "splitk" | "tiled";
    operand None (dispatch) | "fp8e4m3" | "fp16(fp8 values)"; prequant None (= path == "tiled"):
    quantize x in a separate kernel first; hw_cvt: hardware fp8 rounding (sm89+ GPUs only).
    """
    element = _util.w4_element(element)
    scale_kind = as_enum(ScaleEncoding, scale_kind, "scale_kind")
    if (element, scale_kind) not in W4A8_KINDS:
        raise NotImplementedError(f"W4A8 supports (INT4, F32) and (E2M1, E4M3), got ({element.name}, {scale_kind.name})")
    n, k = _util.check_w4_layout(qweight, scales, scale_kind, group_size)
    _util.check_device(x, qweight, scales, weight_scale_2, input_scale, bias)
    x2 = _util.flatten_rows(x, k)
    m = x2.shape[0]
    out_shape = (*x.shape[:-1], n)
    if path is None or operand is None:
        from motensor import dispatch
        choice = dispatch.triton_choice("w4a8", x.device, x.dtype, m, path=path)
        path, operand = choice.path, operand or choice.operand
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if operand not in OPERANDS:
        raise ValueError(f"operand must be one of {sorted(OPERANDS)}, got {operand!r}")
    if hw_cvt and (operand != "fp8e4m3" or _util.interpreting()):
        raise ValueError("hw_cvt needs fp8 operands on an sm89+ GPU (the interpreter's fp8 cast is wrong)")
    if m == 0:
        return x.new_empty(out_shape)
    ws2 = _util.as_scalar(weight_scale_2, "weight_scale_2")
    in_s = _util.as_scalar(input_scale, "input_scale")
    if prequant is None:
        prequant = path == "tiled"
    if prequant:
        from motensor.kernels import act_quant
        x_arg = act_quant.fp8_quant_static(x2, in_s).view(torch.uint8)
    else:
        x_arg = x2
    s_arg = scales.view(torch.uint8) if scale_kind is ScaleEncoding.E4M3 else scales
    qw = qweight if qweight.stride(-1) == 1 else qweight.contiguous()
    fixed = config if config is not None else (INTERP_CONFIGS[path] if _util.interpreting() else None)
    direct = fixed["SPLIT_K"] == 1 if fixed is not None else path == "tiled"
    c = torch.empty((m, n), device=x.device, dtype=x.dtype) if direct else \
        torch.zeros((m, n), device=x.device, dtype=torch.float32)
    args = (x_arg, qw, s_arg, ws2, in_s, bias if bias is not None else x2, c, m, n, k, x_arg.stride(0),
            qw.stride(0), s_arg.stride(0), c.stride(0), _util.m_bucket(m))
    meta = dict(ELEMENT=element.value, SCALE_KIND=scale_kind.value, GROUP=group_size,
                HAS_BIAS=bias is not None, X_PREQUANT=prequant, OP_DTYPE=OPERANDS[operand], HW_CVT=hw_cvt)
    grid = lambda mt: (triton.cdiv(m, mt["BLOCK_M"]) * triton.cdiv(n, mt["BLOCK_N"]), mt["SPLIT_K"])
    if fixed is not None:
        _kernel[grid](*args, **meta, **fixed)
    else:
        (_splitk_tuned if path == "splitk" else _tiled_tuned)[grid](*args, **meta)
    y = c if direct else c.to(x.dtype)
    return y.reshape(out_shape)
