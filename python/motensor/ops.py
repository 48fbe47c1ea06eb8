"""motensor's kernels as `torch.library` custom ops (namespace `motensor`).

Each op has a fake (meta) implementation for torch.compile / FakeTensor tracing, a CPU
implementation that runs the fused Rust kernels (motensor/kernels/cpu.py; the exact pure-torch
reference, motensor/kernels/reference.py, where they do not apply), and a CUDA
implementation that asks `motensor.dispatch.choose` which kernel to run (Triton, CuPy + cuBLAS,
or the reference when neither applies). Kernel modules are imported lazily inside the CUDA
implementations, so importing this module never compiles or decorates a Triton kernel.

    torch.ops.motensor.w4a16_gemm(x, qweight, scales, global_scale, bias, element, scale_kind, group_size, path)

Scalars (global_scale, weight_scale_2, input_scale) are 0-d/[1] fp32 tensors on the weight's
device; they stay tensors end to end (no `.item()`, CUDA-graph safe).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from motensor import dispatch
from motensor.kernels import cpu as cpu_kernels
from motensor.kernels import reference as ref

__all__ = ["w4a16_gemm", "w8a16_gemm", "w4a8_gemm", "nvfp4_fake_quant", "mxfp8_fake_quant",
           "fp8_quant_per_token", "fp8_quant_static", "dequant_w4"]


def _out_shape(x: Tensor, n: int):
    return (*x.shape[:-1], n)


def _choice(family: str, x: Tensor, path: Optional[str] = None):
    m = x.numel() // max(x.shape[-1], 1) if x.dim() else 1
    return dispatch.choose(family, device=x.device, dtype=x.dtype, M=m, path=path)


# ----------------------------------------------------------------------------- w4a16
@torch.library.custom_op("motensor::w4a16_gemm", mutates_args=(), device_types="cpu")
def w4a16_gemm(x: Tensor, qweight: Tensor, scales: Tensor, global_scale: Optional[Tensor], bias: Optional[Tensor],
               element: str, scale_kind: str, group_size: int, path: Optional[str] = None) -> Tensor:
    """y = x @ W^T (+ bias), W 4-bit packed (uint8 [N, K//2]) with group scales [K//G, N].

    element "E2M1" | "INT4"; scale_kind "E4M3" (with global_scale) | "E8M0" | "F32" (the names of
    ``motensor.formats.Element`` / ``ScaleEncoding``: op schemas carry plain strings);
    path: optional override of the dispatch choice ("gemv", "splitk", "tiled", "dequant_cublas").
    """
    y = cpu_kernels.w4a16_gemm(x, qweight, scales, global_scale, bias, element, scale_kind, group_size)
    if y is not None:
        return y
    return ref.w4a16_gemm(x, qweight, scales, global_scale, element=element, scale_kind=scale_kind,
                          group_size=group_size, bias=bias)


@w4a16_gemm.register_kernel("cuda")
def _(x, qweight, scales, global_scale, bias, element, scale_kind, group_size, path=None):
    choice = _choice("w4a16", x, path)
    if choice.backend == "torch":
        return ref.w4a16_gemm(x, qweight, scales, global_scale, element=element, scale_kind=scale_kind,
                              group_size=group_size, bias=bias)
    from motensor.kernels import w4a16
    return w4a16.w4a16_gemm(x, qweight, scales, global_scale, element=element, scale_kind=scale_kind,
                            group_size=group_size, bias=bias, path=choice.path)


@w4a16_gemm.register_fake
def _(x, qweight, scales, global_scale, bias, element, scale_kind, group_size, path=None):
    torch._check(x.shape[-1] == qweight.shape[1] * 2, lambda: "x K must equal 2 * qweight.shape[1]")
    return x.new_empty(_out_shape(x, qweight.shape[0]))


# ----------------------------------------------------------------------------- w8a16 (FP8 weights)
@torch.library.custom_op("motensor::w8a16_gemm", mutates_args=(), device_types="cpu")
def w8a16_gemm(x: Tensor, qweight: Tensor, scales: Tensor, bias: Optional[Tensor], scale_kind: str,
               block_size: int, path: Optional[str] = None) -> Tensor:
    """y = x @ W^T (+ bias), W float8_e4m3fn [N, K] with "F32" (FP8_PB_WO 2-D blocks, fp32
    [ceil(N/B), ceil(K/B)], B = 128) or "E8M0" (MXFP8, uint8 [K//32, N]) scales."""
    y = cpu_kernels.w8a16_gemm(x, qweight, scales, bias, scale_kind, block_size)
    if y is not None:
        return y
    return ref.w8a16_gemm(x, qweight, scales, scale_kind=scale_kind, block_size=block_size, bias=bias)


@w8a16_gemm.register_kernel("cuda")
def _(x, qweight, scales, bias, scale_kind, block_size, path=None):
    choice = _choice("w8a16", x, path)
    if choice.backend == "torch":
        return ref.w8a16_gemm(x, qweight, scales, scale_kind=scale_kind, block_size=block_size, bias=bias)
    from motensor.kernels import w8a16
    return w8a16.w8a16_gemm(x, qweight, scales, scale_kind=scale_kind, block_size=block_size, bias=bias,
                            path=choice.path)


@w8a16_gemm.register_fake
def _(x, qweight, scales, bias, scale_kind, block_size, path=None):
    torch._check(x.shape[-1] == qweight.shape[1], lambda: "x K must equal qweight.shape[1]")
    return x.new_empty(_out_shape(x, qweight.shape[0]))


# ----------------------------------------------------------------------------- w4a8
@torch.library.custom_op("motensor::w4a8_gemm", mutates_args=(), device_types="cpu")
def w4a8_gemm(x: Tensor, qweight: Tensor, scales: Tensor, weight_scale_2: Tensor, input_scale: Tensor,
              bias: Optional[Tensor], element: str, scale_kind: str, group_size: int,
              path: Optional[str] = None) -> Tensor:
    """y = (fp8(x / input_scale) @ w_fp8^T) * (input_scale * weight_scale_2) (+ bias).

    ("INT4", "F32"): W4A8_AWQ, w_fp8 = e4m3(q * scales / weight_scale_2);
    ("E2M1", "E4M3"): W4A8_NVFP4_FP8, w_fp8 = e4m3(e2m1 * scales).
    """
    y = cpu_kernels.w4a8_gemm(x, qweight, scales, weight_scale_2, input_scale, bias, element, scale_kind, group_size)
    if y is not None:
        return y
    return ref.w4a8_gemm(x, qweight, scales, weight_scale_2, input_scale, element=element,
                         scale_kind=scale_kind, group_size=group_size, bias=bias)


@w4a8_gemm.register_kernel("cuda")
def _(x, qweight, scales, weight_scale_2, input_scale, bias, element, scale_kind, group_size, path=None):
    choice = _choice("w4a8", x, path)
    if choice.backend == "torch":
        return ref.w4a8_gemm(x, qweight, scales, weight_scale_2, input_scale, element=element,
                             scale_kind=scale_kind, group_size=group_size, bias=bias)
    from motensor.kernels import w4a8
    return w4a8.w4a8_gemm(x, qweight, scales, weight_scale_2, input_scale, element=element,
                          scale_kind=scale_kind, group_size=group_size, bias=bias, path=choice.path,
                          operand=choice.operand)


@w4a8_gemm.register_fake
def _(x, qweight, scales, weight_scale_2, input_scale, bias, element, scale_kind, group_size, path=None):
    torch._check(x.shape[-1] == qweight.shape[1] * 2, lambda: "x K must equal 2 * qweight.shape[1]")
    return x.new_empty(_out_shape(x, qweight.shape[0]))


# ----------------------------------------------------------------------------- activation quantizers
@torch.library.custom_op("motensor::nvfp4_fake_quant", mutates_args=(), device_types="cpu")
def nvfp4_fake_quant(x: Tensor, input_scale: Tensor, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """NVFP4 dynamic per-16-block fake-quant with global input_scale (a scalar, or one per row of
    x: the Triton kernel takes a scalar, per-row scales run the torch reference); dequantized values.
    On the CPU: the Rust pass of ``kernels/cpu.py`` (the reference bit for bit), else the reference."""
    y = cpu_kernels.nvfp4_fake_quant(x, input_scale, out_dtype)
    if y is not None:
        return y
    return ref.nvfp4_fake_quant(x, input_scale, out_dtype)


@nvfp4_fake_quant.register_kernel("cuda")
def _(x, input_scale, out_dtype=None):
    if input_scale.numel() != 1 or _choice("nvfp4_fake_quant", x).backend == "torch":
        return ref.nvfp4_fake_quant(x, input_scale, out_dtype)
    from motensor.kernels import act_quant
    return act_quant.nvfp4_fake_quant(x, input_scale, out_dtype)


@nvfp4_fake_quant.register_fake
def _(x, input_scale, out_dtype=None):
    return x.new_empty(x.shape, dtype=out_dtype or x.dtype)


@torch.library.custom_op("motensor::mxfp8_fake_quant", mutates_args=(), device_types="cpu")
def mxfp8_fake_quant(x: Tensor, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """MXFP8 dynamic per-32-block fake-quant (E8M0 ceil(log2(amax/448))); dequantized values."""
    return ref.mxfp8_fake_quant(x, out_dtype)


@mxfp8_fake_quant.register_kernel("cuda")
def _(x, out_dtype=None):
    if _choice("mxfp8_fake_quant", x).backend == "torch":
        return ref.mxfp8_fake_quant(x, out_dtype)
    from motensor.kernels import act_quant
    return act_quant.mxfp8_fake_quant(x, out_dtype)


@mxfp8_fake_quant.register_fake
def _(x, out_dtype=None):
    return x.new_empty(x.shape, dtype=out_dtype or x.dtype)


@torch.library.custom_op("motensor::fp8_quant_per_token", mutates_args=(), device_types="cpu")
def fp8_quant_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Dynamic per-row FP8: (float8_e4m3fn x_q [..., K], fp32 scale amax/448 [..., 1])."""
    return ref.fp8_quant_per_token(x)


@fp8_quant_per_token.register_kernel("cuda")
def _(x):
    if _choice("fp8_quant_per_token", x).backend == "torch":
        return ref.fp8_quant_per_token(x)
    from motensor.kernels import act_quant
    return act_quant.fp8_quant_per_token(x)


@fp8_quant_per_token.register_fake
def _(x):
    return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
            x.new_empty((*x.shape[:-1], 1), dtype=torch.float32))


@torch.library.custom_op("motensor::fp8_quant_static", mutates_args=(), device_types="cpu")
def fp8_quant_static(x: Tensor, input_scale: Tensor) -> Tensor:
    """Static per-tensor FP8: float8_e4m3fn e4m3(clamp(x / input_scale, +-448))."""
    return ref.fp8_quant_static(x, input_scale)


@fp8_quant_static.register_kernel("cuda")
def _(x, input_scale):
    if _choice("fp8_quant_static", x).backend == "torch":
        return ref.fp8_quant_static(x, input_scale)
    from motensor.kernels import act_quant
    return act_quant.fp8_quant_static(x, input_scale)


@fp8_quant_static.register_fake
def _(x, input_scale):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn)


# ----------------------------------------------------------------------------- dequant (prefill path)
@torch.library.custom_op("motensor::dequant_w4", mutates_args=(), device_types="cpu")
def dequant_w4(qweight: Tensor, scales: Tensor, global_scale: Optional[Tensor], element: str, scale_kind: str,
               group_size: int, dtype: torch.dtype) -> Tensor:
    """4-bit packed weight -> dense [N, K] in `dtype` (fp32 math, one rounding)."""
    return ref.dequant_w4(qweight, scales, global_scale, element=element, scale_kind=scale_kind,
                          group_size=group_size).to(dtype)


@dequant_w4.register_kernel("cuda")
def _(qweight, scales, global_scale, element, scale_kind, group_size, dtype):
    choice = dispatch.choose("dequant_w4", device=qweight.device, dtype=dtype)
    if choice.backend == "cupy" and dtype in (torch.float16, torch.bfloat16):
        from motensor.kernels import cupy_dequant
        return cupy_dequant.dequant_w4(qweight, scales, global_scale, element=element, scale_kind=scale_kind,
                                       group_size=group_size, dtype=dtype)
    return ref.dequant_w4(qweight, scales, global_scale, element=element, scale_kind=scale_kind,
                          group_size=group_size).to(dtype)


@dequant_w4.register_fake
def _(qweight, scales, global_scale, element, scale_kind, group_size, dtype):
    return qweight.new_empty((qweight.shape[0], qweight.shape[1] * 2), dtype=dtype)


# ----------------------------------------------------------------------------- MX / FP8 fake quant
@torch.library.custom_op("motensor::mxfp4_fake_quant", mutates_args=(), device_types=("cpu", "cuda"))
def mxfp4_fake_quant(x: Tensor, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """MXFP4 dynamic per-32-block fake-quant (E8M0 ceil(log2(amax/6))); dequantized values.

    Torch on every device: MXFP4 activations matter only for the rare W4A4 MXFP4 checkpoints.
    """
    return ref.mxfp4_fake_quant(x, out_dtype)


@mxfp4_fake_quant.register_fake
def _(x, out_dtype=None):
    return x.new_empty(x.shape, dtype=out_dtype or x.dtype)


@torch.library.custom_op("motensor::fp8_fake_quant", mutates_args=(), device_types=("cpu", "cuda"))
def fp8_fake_quant(x: Tensor, input_scale: Optional[Tensor]) -> Tensor:
    """Per-tensor FP8 fake-quant in x.dtype: static with input_scale, else dynamic (amax/448)."""
    return ref.fp8_fake_quant(x, input_scale)


@fp8_fake_quant.register_fake
def _(x, input_scale):
    return x.new_empty(x.shape)


# ----------------------------------------------------------------------------- FP8 / INT8 on torch's own GEMMs
# FP8 weights with per-tensor or per-channel scales map onto torch._scaled_mm (FP8 tensor cores,
# sm89+), and INT8 SmoothQuant onto torch._int_mm; both are cuBLAS(Lt) underneath, so no Triton
# kernel is needed. `dispatch.choose` decides (shape and capability rules included); where its
# choice is the reference, the exact reference runs.
def _native_choice(family: str, x: Tensor, weight: Tensor):
    m = x.numel() // max(x.shape[-1], 1) if x.dim() else 1
    return dispatch.choose(family, device=x.device, dtype=x.dtype, M=m, N=weight.shape[0], K=weight.shape[-1])


@torch.library.custom_op("motensor::fp8_linear", mutates_args=(), device_types="cpu")
def fp8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, input_scale: Optional[Tensor],
               bias: Optional[Tensor]) -> Tensor:
    """FP8 weight [N, K]: per-tensor static activations (input_scale) or per-token dynamic."""
    y = cpu_kernels.fp8_linear(x, weight, weight_scale, input_scale, bias)
    if y is not None:
        return y
    return ref.fp8_linear(x, weight, weight_scale, input_scale, bias)


@fp8_linear.register_kernel("cuda")
def _(x, weight, weight_scale, input_scale, bias):
    if _native_choice("fp8_linear", x, weight).is_reference:
        return ref.fp8_linear(x, weight, weight_scale, input_scale, bias)
    out_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    if input_scale is not None:
        xq = fp8_quant_static(x, input_scale)
        sa, sb = input_scale.float().reshape(()), weight_scale.float().reshape(())
        y = torch._scaled_mm(xq, weight.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    else:
        xq, sa = fp8_quant_per_token(x)
        sb = weight_scale.float().reshape(1, -1)
        # Row-wise scaling is implemented for bf16 output.
        y = torch._scaled_mm(xq, weight.t(), scale_a=sa.float(), scale_b=sb, out_dtype=torch.bfloat16)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


@fp8_linear.register_fake
def _(x, weight, weight_scale, input_scale, bias):
    return x.new_empty(_out_shape(x, weight.shape[0]))


@torch.library.custom_op("motensor::int8_linear", mutates_args=(), device_types="cpu")
def int8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, input_scale: Optional[Tensor],
                bias: Optional[Tensor]) -> Tensor:
    """INT8 weight [N, K] with per-channel scales: W8A8 (static input_scale) or weight-only."""
    y = cpu_kernels.int8_linear(x, weight, weight_scale, input_scale, bias)
    if y is not None:
        return y
    return ref.int8_linear(x, weight, weight_scale, input_scale, bias)


@int8_linear.register_kernel("cuda")
def _(x, weight, weight_scale, input_scale, bias):
    choice = _native_choice("int8_linear" if input_scale is not None else "int8_weight_only", x, weight)
    if choice.is_reference:
        return ref.int8_linear(x, weight, weight_scale, input_scale, bias)
    if input_scale is None:
        # The weight rounded once (as the reference), the bias added in the GEMM's fp32 epilogue.
        w = ref.int8_weight(weight, weight_scale, x.dtype)
        return torch.nn.functional.linear(x, w, bias.to(x.dtype) if bias is not None else None)
    xq = ref.int8_quant_static(x, input_scale)
    m = xq.shape[0]
    if m < dispatch.INT_MM_MIN_M:  # cuBLASLt's int8 GEMM wants more than 16 rows
        xq = torch.nn.functional.pad(xq, (0, 0, 0, dispatch.INT_MM_MIN_M - m))
    acc = torch._int_mm(xq, weight.t())[:m]
    y = acc.float() * (input_scale.float().reshape(()) * weight_scale.float())
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@int8_linear.register_fake
def _(x, weight, weight_scale, input_scale, bias):
    return x.new_empty(_out_shape(x, weight.shape[0]))


# ----------------------------------------------------------------------------- routed experts (grouped)
@torch.library.custom_op("motensor::moe_w4a16_gemm", mutates_args=(), device_types="cpu")
def moe_w4a16_gemm(x: Tensor, topk_ids: Tensor, topk_weights: Optional[Tensor], qweight: Tensor, scales: Tensor,
                   global_scale: Optional[Tensor], pre_quant_scale: Optional[Tensor], element: str, scale_kind: str,
                   group_size: int, sorted_ids: Optional[Tensor] = None, expert_ids: Optional[Tensor] = None) -> Tensor:
    """Routed experts' 4-bit GEMMs in one op: ``y[p] = (x[row(p)] * pre_quant_scale[e]) @ W[e]^T
    (* topk_weights[p])`` for each pair ``p = t * top_k + j`` routed to ``e = topk_ids[t, j]``.

    x [T, K] (row per token) or [T*top_k, K] (row per pair); qweight uint8 [E, N, K//2], scales
    [E, K//G, N], global_scale fp32 [E] (E4M3 scales) or None, pre_quant_scale [E, K] or None;
    out [T*top_k, N] in x.dtype, zero rows for pairs routed outside [0, E). CPU: the loop over
    experts (``reference.moe_w4a16_gemm``); CUDA: ``dispatch.choose("moe_w4a16")``, the grouped
    Triton kernel (kernels/moe_w4a16.py) or that reference. ``sorted_ids`` / ``expert_ids``: the
    pairs already sorted by expert (``moe_align`` of the same ``topk_ids``; one sort per MoE forward
    for all projections), used by the grouped kernel when they fit its launch config, else recomputed.
    """
    return ref.moe_w4a16_gemm(x, topk_ids, topk_weights, qweight, scales, global_scale, element=element,
                              scale_kind=scale_kind, group_size=group_size, pre_quant_scale=pre_quant_scale)


@moe_w4a16_gemm.register_kernel("cuda")
def _(x, topk_ids, topk_weights, qweight, scales, global_scale, pre_quant_scale, element, scale_kind, group_size,
      sorted_ids=None, expert_ids=None):
    choice = dispatch.choose("moe_w4a16", device=x.device, dtype=x.dtype, M=topk_ids.numel(),
                             N=qweight.shape[1], K=x.shape[-1])
    if choice.is_reference:
        return ref.moe_w4a16_gemm(x, topk_ids, topk_weights, qweight, scales, global_scale, element=element,
                                  scale_kind=scale_kind, group_size=group_size, pre_quant_scale=pre_quant_scale)
    from motensor.kernels import moe_w4a16
    return moe_w4a16.moe_w4a16_gemm(x, topk_ids, topk_weights, qweight, scales, global_scale, element=element,
                                    scale_kind=scale_kind, group_size=group_size, pre_quant_scale=pre_quant_scale,
                                    alignment=_alignment(sorted_ids, expert_ids))


@moe_w4a16_gemm.register_fake
def _(x, topk_ids, topk_weights, qweight, scales, global_scale, pre_quant_scale, element, scale_kind, group_size,
      sorted_ids=None, expert_ids=None):
    torch._check(x.shape[-1] == qweight.shape[2] * 2, lambda: "x K must equal 2 * qweight.shape[2]")
    return x.new_empty((topk_ids.shape[0] * topk_ids.shape[1], qweight.shape[1]))


@torch.library.custom_op("motensor::moe_w8a16_gemm", mutates_args=(), device_types="cpu")
def moe_w8a16_gemm(x: Tensor, topk_ids: Tensor, topk_weights: Optional[Tensor], qweight: Tensor, scales: Tensor,
                   scale_kind: str, block_size: int, sorted_ids: Optional[Tensor] = None,
                   expert_ids: Optional[Tensor] = None) -> Tensor:
    """``moe_w4a16_gemm`` for FP8 E4M3 experts: qweight float8_e4m3fn [E, N, K], scales "F32"
    (FP8_PB_WO 2-D blocks [E, ceil(N/B), ceil(K/B)]) or "E8M0" (MXFP8, uint8 [E, K//G, N])."""
    return ref.moe_w8a16_gemm(x, topk_ids, topk_weights, qweight, scales, scale_kind=scale_kind,
                              block_size=block_size)


@moe_w8a16_gemm.register_kernel("cuda")
def _(x, topk_ids, topk_weights, qweight, scales, scale_kind, block_size, sorted_ids=None, expert_ids=None):
    choice = dispatch.choose("moe_w8a16", device=x.device, dtype=x.dtype, M=topk_ids.numel(),
                             N=qweight.shape[1], K=x.shape[-1])
    if choice.is_reference:
        return ref.moe_w8a16_gemm(x, topk_ids, topk_weights, qweight, scales, scale_kind=scale_kind,
                                  block_size=block_size)
    from motensor.kernels import moe_w8a16
    return moe_w8a16.moe_w8a16_gemm(x, topk_ids, topk_weights, qweight, scales, scale_kind=scale_kind,
                                    block_size=block_size, alignment=_alignment(sorted_ids, expert_ids))


@moe_w8a16_gemm.register_fake
def _(x, topk_ids, topk_weights, qweight, scales, scale_kind, block_size, sorted_ids=None, expert_ids=None):
    torch._check(x.shape[-1] == qweight.shape[2], lambda: "x K must equal qweight.shape[2]")
    return x.new_empty((topk_ids.shape[0] * topk_ids.shape[1], qweight.shape[1]))


def _alignment(sorted_ids: Optional[Tensor], expert_ids: Optional[Tensor]) -> Optional[tuple[Tensor, Tensor]]:
    return None if sorted_ids is None or expert_ids is None else (sorted_ids, expert_ids)


def moe_align(topk_ids: Tensor, num_experts: int, family: str) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The routed pairs sorted by expert and padded to the grouped kernel's block (``family``
    ``"w4a16"`` or ``"w8a16"``), to compute once per MoE forward and pass to each projection's
    ``moe_*_gemm`` (``sorted_ids``, ``expert_ids``). ``(None, None)`` where no grouped kernel runs
    (not CUDA, or no Triton): the ops then need none."""
    if topk_ids.device.type != "cuda" or not dispatch.triton_available():
        return None, None
    if family == "w8a16":
        from motensor.kernels import moe_w8a16 as mod
    else:
        from motensor.kernels import moe_w4a16 as mod  # type: ignore[no-redef]
    return mod.align(topk_ids, num_experts)


__all__ += ["mxfp4_fake_quant", "fp8_fake_quant", "fp8_linear", "int8_linear", "moe_w4a16_gemm", "moe_w8a16_gemm",
            "moe_align"]

# Backward formulas (input/bias gradients, straight-through activation quantizers) for the ops above.
from motensor import autograd as _autograd  # noqa: E402,F401
