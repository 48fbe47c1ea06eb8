"""Pure-torch references for every motensor kernel (FORMATS.md §2, §4, §8). Device-agnostic.

These are the semantics the Triton/CuPy kernels must reproduce, and they are what the custom ops
run on CPU. Rules: dequantize to fp32, emulate activation quantization exactly (same fp32
operations in the same order as the kernels, so quantizers match bit for bit), matmul in fp32,
add the bias in fp32, cast to the activation dtype.

Weight layouts (the loader's contract with the kernels):
  4-bit  qweight uint8 [N, K//2], element k=2j in the low nibble, 2j+1 in the high nibble;
         element E2M1 (code, table below) or INT4 (nibble = q + 8).
         scales [K//G, N] (transposed): E4M3 float8_e4m3fn (x global_scale), E8M0 uint8, F32.
  FP8    qweight float8_e4m3fn [N, K]; F32 scales: fp32 2-D blocks [ceil(N/B), ceil(K/B)]
         (FP8_PB_WO, B = 128), or E8M0 uint8 [K//32, N] (MXFP8, transposed).
Element and scale kinds are the ``motensor.formats`` enums (``Element``, ``ScaleEncoding``), or
their names (what the ``motensor::`` ops carry).
"""
from __future__ import annotations

import functools
from typing import Optional, Union, overload

import torch

from motensor.formats import Element, ScaleEncoding, as_enum

ElementLike = Union[Element, str]
ScaleLike = Union[ScaleEncoding, str]

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
FP8_MAX = 448.0
E2M1_MAX = 6.0


@overload
def scalar(t: torch.Tensor) -> torch.Tensor: ...
@overload
def scalar(t: None) -> None: ...
def scalar(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[] or [1] scale of any float dtype -> 0-d fp32 (FORMATS §3.3)."""
    return None if t is None else t.float().reshape(())


def div(a: torch.Tensor, b) -> torch.Tensor:
    """``a / b``, correctly rounded on every device, as the kernels divide (``tl.math.div_rn``).

    CUDA torch computes ``tensor / python_number`` (and a divisor that is a 0-d CPU tensor) as
    ``tensor * (1 / b)``: one more rounding, which moves a row scale by an ulp and then the FP8
    codes quantized with it. A divisor on ``a``'s own device is divided for real.
    """
    if not isinstance(b, torch.Tensor) or b.device != a.device:
        b = torch.as_tensor(b, dtype=torch.float32).to(a.device)
    return torch.div(a, b)


# ----------------------------------------------------------------------------- weights
def unpack_4bit(qweight: torch.Tensor, element: ElementLike) -> torch.Tensor:
    """uint8 [N, K//2] -> fp32 [N, K] element values (low nibble = even k)."""
    # One lookup per byte into a 256 x 2 table of (low, high) values: 3x faster on the CPU than
    # splitting nibbles and indexing twice, and exact.
    # index_select, not advanced indexing: the same gather, without the latter's fixed cost on
    # the CPU (about 18 ms per call for a 4096-element index with torch 2.15 on 2 cores).
    table = _byte_table(as_enum(Element, element, "element"), qweight.device)
    idx = qweight.reshape(-1).long()
    return table.index_select(0, idx).reshape(*qweight.shape, 2).flatten(-2)


@functools.lru_cache(maxsize=None)
def _byte_table(element: Element, device: torch.device) -> torch.Tensor:
    if element is Element.E2M1:
        values = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    elif element is Element.INT4:
        values = torch.arange(16, dtype=torch.float32) - 8
    else:
        raise ValueError(f"4-bit weights are E2M1 or INT4, got {element.name}")
    b = torch.arange(256)
    return torch.stack([values[b & 0xF], values[b >> 4]], dim=-1).to(device)


def decode_scales(scales: torch.Tensor, scale_kind: ScaleLike) -> torch.Tensor:
    """Raw scales -> fp32 values (same shape). E8M0: 2^(e-127) (e = 0 -> 2^-127)."""
    if as_enum(ScaleEncoding, scale_kind, "scale_kind") is ScaleEncoding.E8M0:
        return torch.exp2(scales.float() - 127.0)
    return scales.float()  # E4M3 bytes and F32 values convert exactly


def dequant_w4(qweight: torch.Tensor, scales: torch.Tensor, global_scale: Optional[torch.Tensor] = None, *,
               element: ElementLike, scale_kind: ScaleLike, group_size: int) -> torch.Tensor:
    """4-bit packed weight -> fp32 W [N, K]: W[n,k] = v[n,k] * (s[k//G, n] * global_scale)."""
    v = unpack_4bit(qweight, element)
    s = decode_scales(scales, scale_kind)
    gs = scalar(global_scale)
    if gs is not None:
        s = s * gs
    return v * s.t().repeat_interleave(group_size, dim=1)


def dequant_fp8_block(qweight, scales, block: int = 128):
    """FP8_PB_WO: W[n,k] = w[n,k] * s[n//B, k//B]; scales [ceil(N/B), ceil(K/B)] (4-D form accepted)."""
    n, k = qweight.shape
    s = scales.float().reshape(scales.shape[0], -1)
    s = s.repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :k]
    return qweight.float() * s


def dequant_mxfp8(qweight, scales, group_size: int = 32):
    """MXFP8 with transposed E8M0 scales [K//G, N]: W[n,k] = w[n,k] * 2^(e[k//G, n] - 127)."""
    s = decode_scales(scales, ScaleEncoding.E8M0).t().repeat_interleave(group_size, dim=1)
    return qweight.float() * s


def dequant_w8(qweight: torch.Tensor, scales: torch.Tensor, *, scale_kind: ScaleLike, block_size: int) -> torch.Tensor:
    """FP8 weight with F32 2-D block scales (FP8_PB_WO) or E8M0 group scales (MXFP8) -> fp32."""
    kind = as_enum(ScaleEncoding, scale_kind, "scale_kind")
    if kind is ScaleEncoding.F32:
        return dequant_fp8_block(qweight, scales, block_size)
    if kind is ScaleEncoding.E8M0:
        return dequant_mxfp8(qweight, scales, block_size)
    raise ValueError(f"FP8 weights take F32 block or E8M0 group scales, got {kind.name}")


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] nibble codes (0..15) -> uint8 [..., K//2], even k in the low nibble."""
    c = codes.to(torch.uint8)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).contiguous()


# ----------------------------------------------------------------------------- rounding
def round_e4m3(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> nearest float8_e4m3fn value (RNE), saturated to +-448, returned as fp32."""
    return t.float().clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def e2m1_codes(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> nearest E2M1 code (uint8 nibble, sign in bit 3), ties to even mantissa, saturated.

    The bounds between magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 are .25, .75, 1.25, 1.75, 2.5, 3.5, 5;
    a value on a bound goes to the code with an even mantissa (ModelOpt `nvfp4._cast_fp4`), so a
    bound below an odd code compares with `>` and one below an even code with `>=`.
    """
    a = t.abs().float()
    code = ((a > 0.25).int() + (a >= 0.75).int() + (a > 1.25).int() + (a >= 1.75).int()
            + (a > 2.5).int() + (a >= 3.5).int() + (a > 5.0).int())
    return (code | ((t < 0).int() << 3)).to(torch.uint8)


def round_e2m1(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> nearest E2M1 value, ties to even mantissa (ModelOpt `_cast_fp4`), saturated to +-6."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=t.device)
    codes = (e2m1_codes(t) & 0x7).long()
    mag = table.index_select(0, codes.reshape(-1)).reshape(codes.shape)  # see unpack_4bit
    return torch.where(t < 0, -mag, mag)


def ceil_log2_clamped(r: torch.Tensor) -> torch.Tensor:
    """Exact ceil(log2(r)) for fp32 r >= 0, clamped to [-127, 127]; r = 0 -> -127 (int32)."""
    bits = r.float().contiguous().view(torch.int32)
    efield = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    normal = efield - 127 + (mant != 0).int()
    sub = torch.where(mant > 0x400000, -126, -127).int()
    return torch.where(efield == 0, sub, normal).clamp(-127, 127)


# ----------------------------------------------------------------------------- activation quantizers
def fp8_quant_static(x: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
    """x_q = fp8(clamp(x / input_scale, +-448)) (FORMATS §4.1), float8_e4m3fn, same shape."""
    return round_e4m3(div(x.float(), scalar(input_scale))).to(torch.float8_e4m3fn)


def fp8_quant_per_token(x: torch.Tensor):
    """Dynamic per-row FP8: s = amax(|x[m, :]|) / 448, x_q = fp8(clamp(x / s, +-448)).

    Returns (x_q float8_e4m3fn [..., K], s fp32 [..., 1]); an all-zero row gives s = 0, x_q = 0.
    """
    xf = x.float()
    s = div(xf.abs().amax(dim=-1, keepdim=True), FP8_MAX)
    q = torch.where(s == 0, torch.zeros_like(xf), round_e4m3(div(xf, s)))
    return q.to(torch.float8_e4m3fn), s


def nvfp4_fake_quant(x: torch.Tensor, input_scale: torch.Tensor, out_dtype: Optional[torch.dtype] = None,
                     block: int = 16) -> torch.Tensor:
    """NVFP4 dynamic activation fake-quant (FORMATS §4.4), per 16-block along K, global input_scale.

    s_b = e4m3(amax_b / (6 * input_scale)); x_q = e2m1(clamp(x / (s_b * input_scale), +-6));
    returns x_q * s_b * input_scale (fp32 math) in `out_dtype` (default x.dtype). A block whose
    s_b * input_scale is 0 quantizes to 0 (vLLM's `get_reciprocal` convention). `input_scale` is
    one scalar, or one per row (shape ``x.shape[:-1]``: each routed pair with its expert's scale).
    """
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"K={k} must be a multiple of {block}")
    if input_scale.numel() == 1:
        gs = scalar(input_scale)
    elif tuple(input_scale.shape) == tuple(x.shape[:-1]):
        gs = input_scale.float().reshape(*x.shape[:-1], 1, 1)
    else:
        raise ValueError(f"input_scale must be a scalar or one per row {tuple(x.shape[:-1])}, "
                         f"got {tuple(input_scale.shape)}")
    xb = x.float().reshape(*x.shape[:-1], k // block, block)
    amax = xb.abs().amax(dim=-1, keepdim=True)
    sb = round_e4m3(div(amax, 6.0 * gs))
    denom = sb * gs
    safe = torch.where(denom == 0, torch.ones_like(denom), denom)
    q = torch.where(denom == 0, torch.zeros_like(xb), round_e2m1(div(xb, safe).clamp(-E2M1_MAX, E2M1_MAX)))
    y = (q * sb) * gs
    return y.reshape(x.shape).to(out_dtype or x.dtype)


def mxfp8_fake_quant(x: torch.Tensor, out_dtype: Optional[torch.dtype] = None, block: int = 32) -> torch.Tensor:
    """MXFP8 dynamic activation fake-quant (FORMATS §4.10), per 32-block along K.

    e = clamp(ceil(log2(amax_b / 448)), -127, 127) computed exactly from the fp32 bits;
    x_q = fp8(clamp(x * 2^-e, +-448)); returns x_q * 2^e in `out_dtype` (default x.dtype).
    """
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"K={k} must be a multiple of {block}")
    xb = x.float().reshape(*x.shape[:-1], k // block, block)
    e = ceil_log2_clamped(div(xb.abs().amax(dim=-1, keepdim=True), FP8_MAX)).float()
    q = round_e4m3(xb * torch.exp2(-e))
    return (q * torch.exp2(e)).reshape(x.shape).to(out_dtype or x.dtype)


# ----------------------------------------------------------------------------- GEMMs
def _linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], post_scale=None) -> torch.Tensor:
    """fp32 x[..., K] @ w[N, K]^T (* post_scale) (+ bias) -> fp32."""
    return _epilogue(x.float() @ w.t(), post_scale, bias)


def _as_operand(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The dequantized weight as the MMA sees it: rounded once to the activation dtype.

    ModelOpt's fake-quant weight is in the model dtype (its quantizer returns its input's dtype)
    and motensor's tensor-core kernels feed fp16/bf16 operands, so the reference rounds the
    same way; with it, motensor's logits equal ModelOpt's on the fixtures (tests/test_models.py).
    """
    return w.to(dtype).float() if dtype in (torch.float16, torch.bfloat16) else w


def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
               global_scale: Optional[torch.Tensor] = None, *, element: ElementLike, scale_kind: ScaleLike,
               group_size: int, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ W^T (+ bias), W = dequant_w4(...) rounded to x.dtype, fp32 accumulation, output x.dtype."""
    w = dequant_w4(qweight, scales, global_scale, element=element, scale_kind=scale_kind, group_size=group_size)
    return _linear(x, _as_operand(w, x.dtype), bias).to(x.dtype)


def w8a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, *, scale_kind: ScaleLike,
               block_size: int, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ W^T (+ bias), W = dequant_w8(...) rounded to x.dtype, fp32 accumulation, output x.dtype."""
    w = dequant_w8(qweight, scales, scale_kind=scale_kind, block_size=block_size)
    return _linear(x, _as_operand(w, x.dtype), bias).to(x.dtype)


def w4a8_weight_fp8(qweight: torch.Tensor, scales: torch.Tensor, weight_scale_2: torch.Tensor, *,
                    element: ElementLike, scale_kind: ScaleLike, group_size: int) -> torch.Tensor:
    """The FP8 weight operand of the W4A8 GEMMs (fp32 holding E4M3 values) [N, K].

    W4A8_AWQ (INT4, F32):        e4m3(q * (weight_scale[g, n] / weight_scale_2))   (FORMATS §4.8)
    W4A8_NVFP4_FP8 (E2M1, E4M3): e4m3(e2m1 * weight_scale[g, n])                   (FORMATS §4.6b)
    """
    el, kind = as_enum(Element, element, "element"), as_enum(ScaleEncoding, scale_kind, "scale_kind")
    v = unpack_4bit(qweight, el)
    s = decode_scales(scales, kind)
    if (el, kind) == (Element.INT4, ScaleEncoding.F32):
        s = div(s, scalar(weight_scale_2))
    elif (el, kind) != (Element.E2M1, ScaleEncoding.E4M3):
        raise ValueError(f"W4A8 supports (INT4, F32) and (E2M1, E4M3), got ({el.name}, {kind.name})")
    return round_e4m3(v * s.t().repeat_interleave(group_size, dim=1))


def w4a8_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, weight_scale_2: torch.Tensor,
              input_scale: torch.Tensor, *, element: ElementLike, scale_kind: ScaleLike, group_size: int,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = (fp8(x / input_scale) @ w_fp8^T) * (input_scale * weight_scale_2) (+ bias), output x.dtype."""
    xq = fp8_quant_static(x, input_scale).float()
    w = w4a8_weight_fp8(qweight, scales, weight_scale_2, element=element, scale_kind=scale_kind,
                        group_size=group_size)
    return _linear(xq, w, bias, scalar(input_scale) * scalar(weight_scale_2)).to(x.dtype)


def mxfp4_fake_quant(x: torch.Tensor, out_dtype: Optional[torch.dtype] = None, block: int = 32) -> torch.Tensor:
    """MXFP4 dynamic activation fake-quant (FORMATS §4.11), per 32-block along K.

    e = clamp(ceil(log2(amax_b / 6)), -127, 127); x_q = e2m1(clamp(x * 2^-e, +-6)); returns
    x_q * 2^e in `out_dtype` (default x.dtype).
    """
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"K={k} must be a multiple of {block}")
    xb = x.float().reshape(*x.shape[:-1], k // block, block)
    e = ceil_log2_clamped(div(xb.abs().amax(dim=-1, keepdim=True), E2M1_MAX)).float()
    q = round_e2m1((xb * torch.exp2(-e)).clamp(-E2M1_MAX, E2M1_MAX))
    return (q * torch.exp2(e)).reshape(x.shape).to(out_dtype or x.dtype)


def fp8_fake_quant(x: torch.Tensor, input_scale: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-tensor FP8 fake-quant in x.dtype: e4m3(clamp(x / s, +-448)) * s, with s the static
    `input_scale`, or without one the dynamic per-tensor amax(|x|) / 448.

    The dynamic case is what ModelOpt's W4A8_MXFP4_FP8 fake quant computes (its config calibrates
    no input amax and exports no input_scale): measured against its 0.47 references, dynamic
    per-tensor matches to bf16 rounding (2e-3) while an unscaled cast or per-token scales are
    off by 2-3e-2 (tests/test_nn_oracle.py).
    """
    s: torch.Tensor = scalar(input_scale) if input_scale is not None else div(x.float().abs().amax(), FP8_MAX)
    safe = torch.where(s == 0, torch.ones_like(s), s)
    return (round_e4m3(div(x.float(), safe)) * s).to(x.dtype)


def fp8_linear(x, weight, weight_scale, input_scale=None, bias=None) -> torch.Tensor:
    """FP8 weights with per-tensor (scalar) or per-channel ([N]) scales.

    With `input_scale`: x quantized statically per tensor (FORMATS §4.1); without: dynamically per
    token (FORMATS §4.2). y = (x_q @ w_q^T) * s_x * s_w (+ bias), fp32 math, output x.dtype.
    """
    if input_scale is not None:
        xq, sx = fp8_quant_static(x, input_scale).float(), scalar(input_scale)
    else:
        xq, sx = fp8_quant_per_token(x)
        xq = xq.float()
    sw = weight_scale.float()
    sw = sw.reshape(()) if sw.numel() == 1 else sw
    return _linear(xq, weight.float(), bias, sx * sw).to(x.dtype)


def int8_quant_static(x: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
    """x_q = clamp(round(x / input_scale), -128, 127) as int8.

    FORMATS §4.9 expects ModelOpt's narrow range (±127); its 0.47 fake quant of SmoothQuant
    activations uses the full int8 range, which the fixtures' emulation check confirmed.
    """
    return torch.round(div(x.float(), scalar(input_scale))).clamp(-128, 127).to(torch.int8)


def int8_weight(weight: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W8A16's dequantized weight w[n, k] * s[n]: the product in fp32, rounded once to `dtype`.

    (Casting both factors to bf16 first and multiplying there rounds twice: the per-row scale's
    own bf16 rounding shifts whole output columns, about 4e-3 relative.)
    """
    return (weight.float() * weight_scale.float().reshape(-1, 1)).to(dtype)


def int8_linear(x, weight, weight_scale, input_scale=None, bias=None) -> torch.Tensor:
    """INT8 per-channel weights; static INT8 activations with `input_scale` (W8A8 SmoothQuant),
    else weight-only (W8A16). fp32 math (the int8 products are exact in float64), output x.dtype."""
    sw = weight_scale.float()
    if input_scale is None:
        return _linear(x.float(), _as_operand(int8_weight(weight, weight_scale), x.dtype), bias).to(x.dtype)
    xq = int8_quant_static(x, input_scale)
    acc = (xq.double() @ weight.double().t()).float()  # exact integer sums
    return _epilogue(acc, scalar(input_scale) * sw, bias).to(x.dtype)


def _epilogue(acc: torch.Tensor, scale, bias) -> torch.Tensor:
    """fp32 accumulator (* scale) (+ bias)."""
    y = acc * scale if scale is not None else acc
    return y + bias.float() if bias is not None else y


# ----------------------------------------------------------------------------- grouped MoE (routed experts)
def moe_row_div(x: torch.Tensor, topk_ids: torch.Tensor) -> int:
    """How the grouped-experts GEMMs map (token, slot) pair ``p = t * top_k + j`` to a row of x:
    ``x [T, K]`` (one row per token, shared by its top_k slots) -> ``p // top_k``; ``x [T*top_k, K]``
    (one row per pair, e.g. the down projection's input) -> ``p``."""
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be [T, top_k], got {tuple(topk_ids.shape)}")
    t, k = topk_ids.shape
    if x.dim() != 2 or x.shape[0] not in (t, t * k):
        raise ValueError(f"x must be [T, K] or [T*top_k, K] for topk_ids {tuple(topk_ids.shape)}, got {tuple(x.shape)}")
    return 1 if x.shape[0] == t * k else k


def moe_w4a16_gemm(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: Optional[torch.Tensor],
                   qweight: torch.Tensor, scales: torch.Tensor, global_scale: Optional[torch.Tensor] = None, *,
                   element: ElementLike, scale_kind: ScaleLike, group_size: int,
                   pre_quant_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Routed experts, one 4-bit GEMM per (token, slot) pair, as a loop over the experts.

    ``y[p] = (x[row(p)] * pre_quant_scale[e]) @ W[e]^T * topk_weights[p]`` for every pair
    ``p = t * top_k + j`` routed to expert ``e = topk_ids[t, j]`` (rows per ``moe_row_div``);
    W[e] = ``dequant_w4(qweight[e], scales[e], global_scale[e])`` rounded to x.dtype; fp32
    accumulation, rounded to x.dtype (and, with routing weights, multiplied by the weight in fp32
    and rounded again: transformers' loop does ``expert(x) * weight``). Pairs routed outside ``[0, E)`` (transformers'
    "no expert" slot) give zero rows. Shapes: qweight [E, N, K//2], scales [E, K//G, N],
    global_scale [E] (or None), pre_quant_scale [E, K] (or None); out [T*top_k, N].
    """
    gs = None if global_scale is None else global_scale.reshape(-1)
    return _moe_loop(x, topk_ids, topk_weights, qweight.shape[0], qweight.shape[1],
                     lambda e: dequant_w4(qweight[e], scales[e], None if gs is None else gs[e], element=element,
                                          scale_kind=scale_kind, group_size=group_size), pre_quant_scale)


def moe_w8a16_gemm(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: Optional[torch.Tensor],
                   qweight: torch.Tensor, scales: torch.Tensor, *, scale_kind: ScaleLike,
                   block_size: int) -> torch.Tensor:
    """``moe_w4a16_gemm`` for FP8 E4M3 experts: qweight float8_e4m3fn [E, N, K], scales per expert in
    the ``w8a16_gemm`` layout (F32 2-D blocks [E, ceil(N/B), ceil(K/B)], or E8M0 [E, K//G, N])."""
    return _moe_loop(x, topk_ids, topk_weights, qweight.shape[0], qweight.shape[1],
                     lambda e: dequant_w8(qweight[e], scales[e], scale_kind=scale_kind, block_size=block_size), None)


def _moe_loop(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: Optional[torch.Tensor], num_experts: int,
              n: int, weight_of, pre_quant_scale: Optional[torch.Tensor]) -> torch.Tensor:
    """The routed-experts loop shared by the grouped references; ``weight_of(e)``: expert e's fp32 [N, K]."""
    row_div = moe_row_div(x, topk_ids)
    flat = topk_ids.reshape(-1)
    weights = None if topk_weights is None else topk_weights.reshape(-1).float()
    y = torch.zeros(flat.numel(), n, dtype=torch.float32, device=x.device)
    for e in range(num_experts):
        idx = (flat == e).nonzero().flatten()
        if idx.numel() == 0:
            continue
        xe = x[idx // row_div]
        if pre_quant_scale is not None:
            xe = xe * pre_quant_scale[e].to(xe.dtype)
        acc = _linear(xe, _as_operand(weight_of(e), x.dtype), None)
        y[idx] = acc if weights is None else acc.to(x.dtype).float() * weights[idx, None]
    return y.to(x.dtype)


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's ``moe_align_block_size`` in torch, without a host sync (CUDA-graph safe).

    The ``P = T * top_k`` pairs are sorted by expert (stably) and each expert's run is padded to a
    multiple of ``block_m`` with the sentinel ``P``, so every block of ``block_m`` sorted entries
    belongs to one expert. Returns ``sorted_ids`` (int32 ``[EM]``, ``EM`` the static bound
    ``ceil((P + (E + 1) * (block_m - 1)) / block_m) * block_m``) and ``expert_ids`` (int32
    ``[EM / block_m]``): the block's expert, or -1 for a block of pairs routed outside ``[0, E)``
    (their rows are written as zeros) or past the last used block (all sentinels).
    """
    flat = topk_ids.reshape(-1).to(torch.int64)
    p = flat.numel()
    dev = flat.device
    bucket = torch.where((flat >= 0) & (flat < num_experts), flat, torch.full_like(flat, num_experts))
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=dev).scatter_add_(0, bucket, torch.ones_like(bucket))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    first = torch.cumsum(counts, 0) - counts           # first sorted index of each bucket, unpadded
    order = torch.argsort(bucket, stable=True)
    sorted_bucket = bucket[order]
    pos = starts[sorted_bucket] + (torch.arange(p, device=dev) - first[sorted_bucket])
    em = -(-(p + (num_experts + 1) * (block_m - 1)) // block_m) * block_m
    sorted_ids = torch.full((em,), p, dtype=torch.int32, device=dev)
    sorted_ids[pos] = order.to(torch.int32)
    block_start = torch.arange(0, em, block_m, device=dev)
    expert = torch.searchsorted(ends, block_start, right=True)
    expert_ids = torch.where(expert < num_experts, expert, torch.full_like(expert, -1)).to(torch.int32)
    return sorted_ids, expert_ids
