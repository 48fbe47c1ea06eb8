"""W4A16 GEMM: y[M, N] = x[M, K] @ W^T (+ bias) with a 4-bit packed W dequantized in the main loop.

Weights: qweight uint8 [N, K//2] (even k in the low nibble), element E2M1 or INT4 (q + 8);
scales [K//G, N] (one row per K-group, contiguous along N) of kind E4M3 (x global_scale), E8M0
or F32. See kernels/README.md for the layouts and the design notes.

Paths (dispatch.py picks one; `path=` forces it):
  "gemv"    M <= 2: FMA GEMV, split-K. Weight read as int32 words (8 nibbles; contiguous words
            per row so loads vectorize). Nibbles i and i+4 are decoded together by one shift/mask
            pair into two fp16 bit patterns (no table, no interleave: nibble i of word j
            multiplies x[8j + i]); one group scale per word applied to the 8-element partial
            sum; fp32 atomics across K splits.
  "splitk"  M <= 16: tensor-core `tl.dot` with BLOCK_M = 16 and split-K.
  "tiled"   larger M: tensor-core `tl.dot`, grouped tile order for L2 reuse, no split.
  "dequant_cublas"  large M: CuPy kernel dequantizes W to x.dtype once, then cuBLAS (torch).
The two dot paths share one kernel: even and odd K elements live in the low and high nibbles,
so the tile is never interleaved: acc += x[:, 0::2] @ W_lo + x[:, 1::2] @ W_hi.
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
                                      group_scale_f32, int4_f16)


# ----------------------------------------------------------------------------- device code
INT4_SUBNORMAL_FACTOR = tl.constexpr(16777216.0)          # 2^24
INT4_SUBNORMAL_OFFSET = tl.constexpr(8.0 / 16777216.0)    # 8 * 2^-24
SIGN_BITS_PAIR = tl.constexpr(-2147450880)                 # 0x80008000 as an int32 literal


@triton.jit
def _shl(w, S: tl.constexpr):
    """w << S for a signed constexpr S (right shift when negative; callers mask the result)."""
    if S >= 0:
        r = w << S
    else:
        r = w >> (-S)
    return r


@triton.jit
def _nibble_pair_f16_bits(w, I: tl.constexpr, ELEMENT: tl.constexpr):  # noqa: E741 (I: the nibble index)
    """int32 word of 8 nibbles -> two fp16 bit patterns: nibble I in bits 0..15, nibble I+4 in 16..31.

    E2M1: `value * 2^-14` (see `e2m1_f16_scaled`: magnitude to bits 9..11, sign to bit 15).
    INT4: the fp16 subnormal `n * 2^-24` of the raw nibble n = q + 8 (exact; one AND).
    """
    if ELEMENT == ELEM_E2M1:
        bits = (_shl(w, 9 - 4 * I) & 0x0E000E00) | (_shl(w, 12 - 4 * I) & SIGN_BITS_PAIR)
    else:
        bits = _shl(w, -4 * I) & 0x000F000F
    return bits


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, s_ptr, gs_ptr, b_ptr, c_ptr,
    M, N, K, stride_xm, stride_wn, stride_sg, stride_cm, M_BUCKET,
    ELEMENT: tl.constexpr, SCALE_KIND: tl.constexpr, GROUP: tl.constexpr,
    HAS_GS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr, SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """FMA GEMV. w_ptr: the packed weight viewed as int32 [N, K//8] (word j = elements 8j..8j+7,
    nibble i at bits 4i). Grid (cdiv(N, BLOCK_N), SPLIT_K, cdiv(M, BLOCK_M))."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    KW = K // 8
    # Every tensor is built 3-D [BLOCK_M, BLOCK_N, BLOCK_KW] (size-1 where broadcast), so they all
    # share the weight load's register layout: broadcasts need no shared-memory layout conversion.
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None, None]
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :, None]
    mask_m = rm < M
    mask_n = rn < N
    # This split's word range, aligned to BLOCK_KW so every load starts on a vector boundary.
    kw_per_split = tl.cdiv(tl.cdiv(KW, SPLIT_K), BLOCK_KW) * BLOCK_KW
    kw_lo = pid_k * kw_per_split
    kw_hi = tl.minimum(kw_lo + kw_per_split, KW)

    # Accumulate per (row, word) and reduce across words once at the end: no shuffles in the loop.
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_KW), dtype=tl.float32)
    for kw0 in range(kw_lo, kw_hi, BLOCK_KW):
        rkw = tl.max_contiguous(tl.multiple_of(kw0 + tl.arange(0, BLOCK_KW), BLOCK_KW), BLOCK_KW)[None, None, :]
        if EVEN_K:
            w_mask = mask_n          # no K tail: masks constant along K keep the loads vectorized
            x_mask = mask_m
        else:
            w_mask = mask_n & (rkw < kw_hi)
            x_mask = mask_m & (rkw < kw_hi)
        w = tl.load(w_ptr + rn * stride_wn + rkw, mask=w_mask, other=0)                      # [1, BN, BKW]
        # A word never straddles a group (G % 8 == 0): one scale per word, L1-resident
        # (the [K//G, N] layout makes it a contiguous run along N).
        s_raw = tl.load(s_ptr + ((rkw * 8) // GROUP) * stride_sg + rn, mask=w_mask, other=0)
        s = group_scale_f32(s_raw, SCALE_KIND)
        x_word = x_ptr + row_offsets(rm, stride_xm) + rkw * 8                                             # [BM, 1, BKW]
        part = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_KW), dtype=tl.float32)
        xsum = tl.zeros((BLOCK_M, 1, BLOCK_KW), dtype=tl.float32)
        for i in tl.static_range(4):
            # Nibbles i and i + 4 of a word are 16 bits apart, so one shift/mask pair builds both
            # fp16 patterns at once (low and high half of `pair`): 2 integer ops per 2 elements.
            pair = _nibble_pair_f16_bits(w, i, ELEMENT)
            w_lo = pair.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            w_hi = (pair >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            x_lo = tl.load(x_word + i, mask=x_mask, other=0.0).to(tl.float32)
            x_hi = tl.load(x_word + (i + 4), mask=x_mask, other=0.0).to(tl.float32)
            part += w_lo * x_lo          # two separate accumulations -> two FFMAs per pair
            part += w_hi * x_hi
            if ELEMENT != ELEM_E2M1:
                xsum += x_lo + x_hi
        if ELEMENT != ELEM_E2M1:
            # INT4 nibbles were decoded as n * 2^-24 (n = q + 8): remove the +8 once per word.
            part -= INT4_SUBNORMAL_OFFSET * xsum
        acc += part * s

    y = tl.sum(acc, axis=2)
    if ELEMENT == ELEM_E2M1:
        y = y * E2M1_F16_FACTOR
    else:
        y = y * INT4_SUBNORMAL_FACTOR
    if HAS_GS:
        y = y * tl.load(gs_ptr)
    rm2 = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn2 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if HAS_BIAS:
        bias = tl.load(b_ptr + rn2, mask=rn2 < N, other=0.0).to(tl.float32)
        y += tl.where(pid_k == 0, 1.0, 0.0) * bias[None, :]       # added by one split only
    c_ptrs = c_ptr + row_offsets(rm2, stride_cm)[:, None] + rn2[None, :]
    c_mask = (rm2 < M)[:, None] & (rn2 < N)[None, :]
    if SPLIT_K == 1:
        tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=c_mask)
    else:
        tl.atomic_add(c_ptrs, y, mask=c_mask)


@triton.jit
def _dequant_tile(codes, s_raw, ELEMENT: tl.constexpr, SCALE_KIND: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """Nibble codes (int32 tile) times their group scales, as an MMA operand.

    E4M3 scales: in fp16, `e2m1 * 2^-14 * s` (or `q * s`) is exact (<= 6 significant bits, no
    under/overflow), so one fp16 multiply suffices and the 2^14 is applied to the accumulator.
    E8M0/F32 scales can leave fp16's range, so the product is formed in fp32 (E2M1's 2^14
    folded into the scale) and rounded once to the operand dtype.
    """
    if ELEMENT == ELEM_E2M1:
        h = e2m1_f16_scaled(codes)
    else:
        h = int4_f16(codes)
    if SCALE_KIND == SCALE_E4M3:
        w = (h * (e4m3_f16_scaled(s_raw) * 256.0)).to(OUT_DTYPE)
    else:
        s = group_scale_f32(s_raw, SCALE_KIND)
        if ELEMENT == ELEM_E2M1:
            s = s * E2M1_F16_FACTOR
        w = (h.to(tl.float32) * s).to(OUT_DTYPE)
    return w


@triton.jit
def dot_main_loop(acc, x_row, mask_m, w_base, s_base, rn, mask_n, k_lo, k_hi, stride_wn, stride_sg, pqs_row,
                  ELEMENT: tl.constexpr, SCALE_KIND: tl.constexpr, GROUP: tl.constexpr, HAS_PQS: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """The tensor-core main loop over K in [k_lo, k_hi): ``acc += x[rows] @ W[rn]^T``, returned.

    x_row: [BLOCK_M] pointers to the activation rows (the operand dtype is theirs); w_base/s_base:
    this weight's packed bytes [N, K//2] and group scales [K//G, N]; pqs_row: the per-K
    ``pre_quant_scale`` (HAS_PQS; multiplied in the activation dtype, as QuantLinear does). Shared
    by ``_dot_kernel`` and the grouped experts kernel (``moe_w4a16``). The E2M1 2^-14 factor is left
    to the caller (see ``_dot_kernel``'s epilogue).
    """
    HALF: tl.constexpr = BLOCK_K // 2
    # A K chunk inside one group: the scale is one [BLOCK_N] vector, applied to the fp32 partial
    # product (exact for every scale kind, and cheaper than scaling the tile when M is small).
    CHUNK_IN_GROUP: tl.constexpr = GROUP % BLOCK_K == 0
    rj = tl.arange(0, HALF)
    op_dtype = x_row.dtype.element_ty
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + 2 * rj                       # even k of each byte; K is even so kk + 1 < k_hi too
        if EVEN_K:
            # No K tail anywhere: masks constant along K keep the loads vectorized.
            x_mask = mask_m[:, None]
            w_mask = mask_n[:, None]
        else:
            x_mask = mask_m[:, None] & (kk < k_hi)[None, :]
            w_mask = mask_n[:, None] & (kk < k_hi)[None, :]
        x_even = tl.load(x_row[:, None] + kk[None, :], mask=x_mask, other=0.0)
        x_odd = tl.load(x_row[:, None] + (kk + 1)[None, :], mask=x_mask, other=0.0)
        if HAS_PQS:
            x_even = (x_even * tl.load(pqs_row + kk, mask=kk < k_hi, other=0.0)[None, :]).to(op_dtype)
            x_odd = (x_odd * tl.load(pqs_row + kk + 1, mask=kk < k_hi, other=0.0)[None, :]).to(op_dtype)
        # The packed tile is loaded N-major ([BLOCK_N, K/2], the memory order: contiguous bytes
        # per thread, wide loads), decoded there and handed to the MMA transposed (`tl.trans` is a
        # view of the shared-memory operand, not a data movement).
        if CHUNK_IN_GROUP:
            rb = tl.max_contiguous(tl.multiple_of(k0 // 2 + rj, HALF), HALF)
            p = tl.load(w_base + row_offsets(rn, stride_wn)[:, None] + rb[None, :], mask=w_mask, other=0).to(tl.int32)
            s_raw = tl.load(s_base + (k0 // GROUP) * stride_sg + rn, mask=mask_n, other=0)
            if ELEMENT == ELEM_E2M1:
                w_lo = e2m1_f16_scaled(p & 0xF).to(op_dtype)
                w_hi = e2m1_f16_scaled(p >> 4).to(op_dtype)
            else:
                w_lo = int4_f16(p & 0xF).to(op_dtype)
                w_hi = int4_f16(p >> 4).to(op_dtype)
            part = tl.dot(x_even, tl.trans(w_lo))
            part = tl.dot(x_odd, tl.trans(w_hi), part)
            acc += part * group_scale_f32(s_raw, SCALE_KIND)[None, :]
        else:
            # Several groups per chunk: a [BLOCK_N, groups, G/2] view of the tile, so each group's
            # scale is loaded and decoded once and broadcast in registers; the last two dims merge
            # back into the operand's K.
            NG: tl.constexpr = BLOCK_K // GROUP
            rn3 = rn[:, None, None]
            rg = tl.arange(0, NG)[None, :, None]
            kb3 = k0 // 2 + rg * (GROUP // 2) + tl.arange(0, GROUP // 2)[None, None, :]   # byte along K/2
            if EVEN_K:
                mask3 = mask_n[:, None, None]
            else:
                mask3 = mask_n[:, None, None] & (2 * kb3 < k_hi)
            p3 = tl.load(w_base + row_offsets(rn3, stride_wn) + kb3, mask=mask3, other=0).to(tl.int32)
            s3 = tl.load(s_base + (k0 // GROUP + rg) * stride_sg + rn3,
                         mask=mask_n[:, None, None] & (k0 + rg * GROUP < k_hi), other=0)     # [BLOCK_N, NG, 1]
            w_lo = tl.reshape(_dequant_tile(p3 & 0xF, s3, ELEMENT, SCALE_KIND, op_dtype), (BLOCK_N, HALF))
            w_hi = tl.reshape(_dequant_tile(p3 >> 4, s3, ELEMENT, SCALE_KIND, op_dtype), (BLOCK_N, HALF))
            acc = tl.dot(x_even, tl.trans(w_lo), acc)
            acc = tl.dot(x_odd, tl.trans(w_hi), acc)
    return acc


@triton.jit
def _dot_kernel(
    x_ptr, w_ptr, s_ptr, gs_ptr, b_ptr, c_ptr,
    M, N, K, stride_xm, stride_wn, stride_sg, stride_cm, M_BUCKET,
    ELEMENT: tl.constexpr, SCALE_KIND: tl.constexpr, GROUP: tl.constexpr,
    HAS_GS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
):
    """Tensor-core W4A16. Operand dtype = x's dtype (fp16, bf16, fp32 -> tf32 on GPU).
    Grid (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N), SPLIT_K)."""
    tl.static_assert(BLOCK_K % 32 == 0, "BLOCK_K/2 must be a multiple of 16 (MMA K)")
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < M
    mask_n = rn < N
    k_lo, k_hi = split_k_range(K, pid_k, SPLIT_K, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = dot_main_loop(acc, x_ptr + row_offsets(rm, stride_xm), mask_m, w_ptr, s_ptr, rn, mask_n, k_lo, k_hi,
                        stride_wn, stride_sg, x_ptr, ELEMENT, SCALE_KIND, GROUP, False, BLOCK_N, BLOCK_K, EVEN_K)

    # E2M1 operands carry a 2^-14 unless the fp32 prescale path folded it into the scale.
    if ELEMENT == ELEM_E2M1:
        if GROUP % BLOCK_K == 0 or SCALE_KIND == SCALE_E4M3:
            acc = acc * E2M1_F16_FACTOR
    if HAS_GS:
        acc = acc * tl.load(gs_ptr)
    store_tile(acc, c_ptr, b_ptr, rm, rn, mask_m, mask_n, stride_cm, pid_k, HAS_BIAS, SPLIT_K)


# ----------------------------------------------------------------------------- configs
_cfg = _util.config


# H100 candidates, unmeasured (this code was written without a GPU): chosen so that the grid
# covers 132 SMs for N = 4096..28672 at M = 1 and each program streams >= 8 KiB of weight per
# K split. BLOCK_KW = 32 words = 256 K elements = 128 bytes per row per iteration. None of them
# spills registers when compiled for sm90 with fp16/bf16 activations (checked offline with
# `python -m motensor.kernels.aot_check --all-configs`; 128x256 tiles did and were dropped).
# With fp32 activations (tf32) the BLOCK_K=128 tiled config spills; autotuning skips it by time.
GEMV_CONFIGS = [
    _cfg(BLOCK_N=64, BLOCK_KW=32, SPLIT_K=4),     # fewest SASS per weight offline (6.6 E2M1 / 5.5 INT4)
    _cfg(BLOCK_N=32, BLOCK_KW=32, SPLIT_K=4),
    _cfg(BLOCK_N=64, BLOCK_KW=32, SPLIT_K=8),
    _cfg(BLOCK_N=64, BLOCK_KW=64, SPLIT_K=2, num_warps=8),
    _cfg(BLOCK_N=128, BLOCK_KW=16, SPLIT_K=4, num_warps=8),
    _cfg(BLOCK_N=128, BLOCK_KW=32, SPLIT_K=1, num_warps=8),
]
SPLITK_CONFIGS = [
    _cfg(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, GROUP_M=1),
    _cfg(BLOCK_M=16, BLOCK_N=64, BLOCK_K=256, SPLIT_K=2, GROUP_M=1),
    _cfg(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, SPLIT_K=4, GROUP_M=1),
    _cfg(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, SPLIT_K=8, GROUP_M=1),
    _cfg(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, SPLIT_K=8, GROUP_M=1, num_stages=4),
    _cfg(BLOCK_M=16, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, GROUP_M=1, num_stages=4),
]
TILED_CONFIGS = [
    _cfg(BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, SPLIT_K=1, GROUP_M=8),
    _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, SPLIT_K=1, GROUP_M=8, num_stages=4),
    _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, GROUP_M=8, num_stages=4),
    _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, SPLIT_K=1, GROUP_M=8, num_warps=8, num_stages=4),
    _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, GROUP_M=8, num_warps=8, num_stages=3),
    _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, SPLIT_K=1, GROUP_M=8, num_stages=4),
]
# Interpreter defaults: tiny tiles so CPU tests stay fast; tests override them to hit every branch.
INTERP_CONFIGS = {
    "gemv": dict(BLOCK_N=16, BLOCK_KW=4, SPLIT_K=2),
    "splitk": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=2, GROUP_M=1),
    "tiled": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1, GROUP_M=4),
}
_KEY = ["N", "K", "M_BUCKET", "ELEMENT", "SCALE_KIND", "GROUP"]
# EVEN_K: every K split is whole BLOCK_K chunks, so the K mask can go (masks that vary along K
# stop Triton from vectorizing the weight loads: byte-wise LDG in the SASS otherwise).
_gemv = triton.heuristics({"EVEN_K": lambda a: (a["K"] // 8) % (a["BLOCK_KW"] * a["SPLIT_K"]) == 0})(_gemv_kernel)
_dot = triton.heuristics({"EVEN_K": lambda a: a["K"] % (a["BLOCK_K"] * a["SPLIT_K"]) == 0})(_dot_kernel)
_gemv_tuned = triton.autotune(GEMV_CONFIGS, key=_KEY, reset_to_zero=["c_ptr"])(_gemv)
_splitk_tuned = triton.autotune(SPLITK_CONFIGS, key=_KEY, reset_to_zero=["c_ptr"])(_dot)
_tiled_tuned = triton.autotune(TILED_CONFIGS, key=_KEY)(_dot)

PATHS = ("gemv", "splitk", "tiled", "dequant_cublas")


# ----------------------------------------------------------------------------- launcher
def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
               global_scale: Optional[torch.Tensor] = None, *, element: Union[Element, str],
               scale_kind: Union[ScaleEncoding, str], group_size: int,
               bias: Optional[torch.Tensor] = None, path: Optional[str] = None,
               config: Optional[dict] = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) for a 4-bit packed W. Output dtype = x.dtype, shape [..., N].

    x [..., K] fp16/bf16/fp32; qweight uint8 [N, K//2]; scales [K//G, N] (E4M3: float8_e4m3fn,
    E8M0: uint8, F32: float32); global_scale fp32 scalar tensor (E4M3 only, or None);
    element E2M1 | INT4 and scale_kind E4M3 | E8M0 | F32 (the ``motensor.formats`` enums or
    their names); path None (dispatch.py decides) | "gemv" | "splitk" | "tiled" |
    "dequant_cublas"; config: fixed launch meta-parameters instead of autotuning (benchmarks,
    tests; always used under the interpreter, where it defaults to INTERP_CONFIGS[path]).
    """
    el = _util.w4_element(element)
    sk = as_enum(ScaleEncoding, scale_kind, "scale_kind")
    n, k = _util.check_w4_layout(qweight, scales, sk, group_size)
    _util.check_device(x, qweight, scales, global_scale, bias)
    x2 = _util.flatten_rows(x, k)
    m = x2.shape[0]
    out_shape = (*x.shape[:-1], n)
    path = _util.resolve_path("w4a16", x, m, path, PATHS)
    if m == 0:
        return x.new_empty(out_shape)
    if path == "dequant_cublas":
        from motensor.kernels import cupy_dequant
        w = cupy_dequant.dequant_w4(qweight, scales, global_scale, element=el, scale_kind=sk,
                                    group_size=group_size, dtype=x.dtype)
        return torch.nn.functional.linear(x2, w, bias).reshape(out_shape)

    gs = _util.as_scalar(global_scale, "global_scale")
    s_arg = scales.view(torch.uint8) if sk is ScaleEncoding.E4M3 else scales
    qw = qweight if qweight.stride(-1) == 1 else qweight.contiguous()
    if path == "gemv":
        if qw.data_ptr() % 4 or qw.stride(0) % 4:
            qw = qw.contiguous().clone()
        qw = qw.view(torch.int32)                    # [N, K//8]: 8 nibbles per load element
    fixed = config if config is not None else (INTERP_CONFIGS[path] if _util.interpreting() else None)
    # Split-K partial sums meet in a zeroed fp32 buffer (atomics); a single split stores straight
    # to y. The tuned tiled configs never split; tuned gemv/splitk configs may, so they get a buffer.
    direct = fixed["SPLIT_K"] == 1 if fixed is not None else path == "tiled"
    c = torch.empty((m, n), device=x.device, dtype=x.dtype) if direct else \
        torch.zeros((m, n), device=x.device, dtype=torch.float32)
    # Launched by keyword: both kernels name their arguments alike, and no position is patched.
    args = dict(
        x_ptr=x2, w_ptr=qw, s_ptr=s_arg, gs_ptr=gs if gs is not None else s_arg,
        b_ptr=bias if bias is not None else x2, c_ptr=c, M=m, N=n, K=k,
        stride_xm=x2.stride(0), stride_wn=qw.stride(0), stride_sg=s_arg.stride(0), stride_cm=c.stride(0),
        M_BUCKET=_util.m_bucket(m),
        ELEMENT=el.value, SCALE_KIND=sk.value, GROUP=group_size, HAS_GS=gs is not None, HAS_BIAS=bias is not None,
    )
    if path == "gemv":
        block_m = min(triton.next_power_of_2(m), 4)
        gemv_grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"], triton.cdiv(m, block_m))
        if fixed is not None:
            _gemv[gemv_grid](**args, BLOCK_M=block_m, **fixed)
        else:
            _gemv_tuned[gemv_grid](**args, BLOCK_M=block_m)
    else:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])
        if fixed is not None:
            _dot[grid](**args, **fixed)
        else:
            (_splitk_tuned if path == "splitk" else _tiled_tuned)[grid](**args)
    y = c if direct else c.to(x.dtype)
    return y.reshape(out_shape)
