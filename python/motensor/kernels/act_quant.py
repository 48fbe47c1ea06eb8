"""Activation quantizers (FORMATS §4.1, §4.2, §4.4, §4.10), bit-exact with kernels/reference.py.

  nvfp4_fake_quant    per 16-block along K with a global input_scale:
                      s_b = e4m3(amax_b / (6 * input_scale)), x_q = e2m1(clamp(x / (s_b * input_scale), +-6)),
                      returns x_q * s_b * input_scale (fp32 math) in out_dtype
  mxfp8_fake_quant    per 32-block: e = clamp(ceil(log2(amax_b / 448)), -127, 127) (exact, from bits),
                      returns e4m3(clamp(x * 2^-e, +-448)) * 2^e
  fp8_quant_per_token s_m = amax(|x[m, :]|) / 448; returns (e4m3(clamp(x / s_m, +-448)), s_m [M, 1] fp32)
  fp8_quant_static    e4m3(clamp(x / input_scale, +-448))

Every division is `tl.math.div_rn` (correctly rounded, like torch) and every rounding is the
software RNE of `_decode` (no fp8 hardware, exact in the interpreter), so results equal the
reference bit for bit; FP8 outputs are written as uint8 codes into a float8_e4m3fn tensor.
Blocks are loaded as 3-D tiles [rows, blocks, block] so the per-block amax is a plain reduction.
All of these are memory-bound: one read of x and one write, ~20-30 ALU ops per element.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from motensor.kernels import _util
from motensor.kernels._tiles import row_offsets
from motensor.kernels._decode import ceil_log2_clamped, e4m3_bits, e8m0_f32, round_e2m1, round_e4m3


@triton.jit
def _block_tile(M, K, BLOCK_M: tl.constexpr, NB: tl.constexpr, BS: tl.constexpr):
    """Offsets and mask of a [BLOCK_M, NB, BS] tile of NB consecutive BS-blocks along K."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * NB * BS + tl.arange(0, NB)[:, None] * BS + tl.arange(0, BS)[None, :]    # [NB, BS]
    mask = (rm < M)[:, None, None] & (rk < K)[None, :, :]
    return rm[:, None, None], rk[None, :, :], mask


@triton.jit
def _nvfp4_fake_quant_kernel(x_ptr, is_ptr, o_ptr, M, K, stride_xm, stride_om,
                             BLOCK_M: tl.constexpr, NB: tl.constexpr, BS: tl.constexpr):
    rm, rk, mask = _block_tile(M, K, BLOCK_M, NB, BS)
    x = tl.load(x_ptr + row_offsets(rm, stride_xm) + rk, mask=mask, other=0.0).to(tl.float32)
    gs = tl.load(is_ptr)
    amax = tl.max(tl.abs(x), axis=2)                                         # [BLOCK_M, NB]
    sb = round_e4m3(tl.math.div_rn(amax, 6.0 * gs))
    denom = (sb * gs)[:, :, None]
    safe = tl.where(denom == 0.0, 1.0, denom)
    q = round_e2m1(tl.minimum(tl.maximum(tl.math.div_rn(x, safe), -6.0), 6.0))
    q = tl.where(denom == 0.0, 0.0, q)
    y = (q * sb[:, :, None]) * gs
    tl.store(o_ptr + row_offsets(rm, stride_om) + rk, y.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mxfp8_fake_quant_kernel(x_ptr, o_ptr, M, K, stride_xm, stride_om,
                             BLOCK_M: tl.constexpr, NB: tl.constexpr, BS: tl.constexpr):
    rm, rk, mask = _block_tile(M, K, BLOCK_M, NB, BS)
    x = tl.load(x_ptr + row_offsets(rm, stride_xm) + rk, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=2)
    e = ceil_log2_clamped(tl.math.div_rn(amax, 448.0))
    inv = e8m0_f32(127 - e)[:, :, None]                                      # 2^-e, exact
    scale = e8m0_f32(e + 127)[:, :, None]                                    # 2^e (2^-127 subnormal ok)
    y = round_e4m3(x * inv) * scale
    tl.store(o_ptr + row_offsets(rm, stride_om) + rk, y.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fp8_per_token_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm,
                          BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Two passes over a row block: amax, then quantize (the second read mostly hits L2)."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rm < M
    amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mask = mask_m[:, None] & (rk < K)[None, :]
        x = tl.load(x_ptr + row_offsets(rm, stride_xm)[:, None] + rk[None, :], mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
    s = tl.math.div_rn(amax, 448.0)
    tl.store(s_ptr + rm, s, mask=mask_m)
    safe = tl.where(s == 0.0, 1.0, s)[:, None]
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mask = mask_m[:, None] & (rk < K)[None, :]
        x = tl.load(x_ptr + row_offsets(rm, stride_xm)[:, None] + rk[None, :], mask=mask, other=0.0).to(tl.float32)
        q = tl.where(s[:, None] == 0.0, 0.0, round_e4m3(tl.math.div_rn(x, safe)))
        tl.store(q_ptr + row_offsets(rm, stride_qm)[:, None] + rk[None, :], e4m3_bits(q), mask=mask)


@triton.jit
def _fp8_static_kernel(x_ptr, is_ptr, q_ptr, M, K, stride_xm, stride_qm,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rm < M)[:, None] & (rk < K)[None, :]
    x = tl.load(x_ptr + row_offsets(rm, stride_xm)[:, None] + rk[None, :], mask=mask, other=0.0).to(tl.float32)
    q = round_e4m3(tl.math.div_rn(x, tl.load(is_ptr)))
    tl.store(q_ptr + row_offsets(rm, stride_qm)[:, None] + rk[None, :], e4m3_bits(q), mask=mask)


# ----------------------------------------------------------------------------- launchers
# Fixed launch shapes (memory-bound elementwise kernels; no autotuning). Tiles of 16 rows x 256
# K elements (4-16 KiB of bf16 in flight per program) on a GPU; smaller under the interpreter.
def _tile_k(k: int) -> int:
    return 64 if _util.interpreting() else 256


def _rows(x: torch.Tensor):
    if x.dtype not in _util.ACT_DTYPES:
        raise ValueError(f"x dtype must be fp16/bf16/fp32, got {x.dtype}")
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _blocked(kernel, x, out_dtype, block, *extra):
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"K={k} must be a multiple of the block size {block}")
    _util.check_device(x, *extra)
    x2 = _rows(x)
    m = x2.shape[0]
    out = torch.empty((m, k), device=x.device, dtype=out_dtype or x.dtype)
    if m and k:
        nb = max(1, _tile_k(k) // block)
        block_m = 4 if _util.interpreting() else 16
        grid = (triton.cdiv(m, block_m), triton.cdiv(k, nb * block))
        kernel[grid](x2, *extra, out, m, k, x2.stride(0), out.stride(0), BLOCK_M=block_m, NB=nb, BS=block)
    return out.reshape(x.shape)


def nvfp4_fake_quant(x: torch.Tensor, input_scale: torch.Tensor, out_dtype: Optional[torch.dtype] = None,
                     block: int = 16) -> torch.Tensor:
    """NVFP4 activation fake-quant; returns dequantized values, same shape, out_dtype (default x.dtype)."""
    return _blocked(_nvfp4_fake_quant_kernel, x, out_dtype, block, _util.as_scalar(input_scale, "input_scale"))


def mxfp8_fake_quant(x: torch.Tensor, out_dtype: Optional[torch.dtype] = None, block: int = 32) -> torch.Tensor:
    """MXFP8 activation fake-quant; returns dequantized values, same shape, out_dtype (default x.dtype)."""
    return _blocked(_mxfp8_fake_quant_kernel, x, out_dtype, block)


def fp8_quant_per_token(x: torch.Tensor):
    """Dynamic per-row FP8: returns (x_q float8_e4m3fn [..., K], scale fp32 [..., 1])."""
    _util.check_device(x)
    x2 = _rows(x)
    m, k = x2.shape
    q = torch.empty((m, k), device=x.device, dtype=torch.float8_e4m3fn)
    s = torch.empty((m, 1), device=x.device, dtype=torch.float32)
    if m:
        block_m = 4 if _util.interpreting() else 8
        _fp8_per_token_kernel[(triton.cdiv(m, block_m),)](
            x2, q.view(torch.uint8), s, m, k, x2.stride(0), q.stride(0),
            BLOCK_M=block_m, BLOCK_K=min(_tile_k(k), triton.next_power_of_2(max(k, 1))))
    return q.reshape(x.shape), s.reshape(*x.shape[:-1], 1)


def fp8_quant_static(x: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
    """Static per-tensor FP8: e4m3(clamp(x / input_scale, +-448)) as float8_e4m3fn, same shape."""
    in_s = _util.as_scalar(input_scale, "input_scale")
    _util.check_device(x, in_s)
    x2 = _rows(x)
    m, k = x2.shape
    q = torch.empty((m, k), device=x.device, dtype=torch.float8_e4m3fn)
    if m and k:
        block_m = 4 if _util.interpreting() else 16
        block_k = _tile_k(k)
        _fp8_static_kernel[(triton.cdiv(m, block_m), triton.cdiv(k, block_k))](
            x2, in_s, q.view(torch.uint8), m, k, x2.stride(0), q.stride(0), BLOCK_M=block_m, BLOCK_K=block_k)
    return q.reshape(x.shape)
