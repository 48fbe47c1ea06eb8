"""Backward formulas for motensor's custom ops: training adapters on frozen quantized weights.

Every ``motensor::`` op a :class:`~motensor.nn.QuantLinear` forward can run gets a
``torch.library.register_autograd`` formula here (``motensor.ops`` imports this module once, so
importing the ops is enough). What the formulas compute:

* **Input gradient of a GEMM** ``y = q(x) @ W^T (+ b)``: ``dx = (dy @ W) * q'(x)``, with ``W`` the
  very weight the forward multiplies with (the format's dequantized weight, rounded to the
  activation dtype where the forward rounds it). The weight is dequantized **per layer, in the
  backward only, and freed right after** (a transient ``[N, K]`` tensor in the gradient's dtype;
  on CUDA the 4-bit weights go through the CuPy dequant kernel, the others through torch
  element-wise ops), then one dense matmul runs. No full-precision copy of the model ever
  exists; the peak extra memory is one layer's weight. A transposed-layout quantized kernel
  would save that transient; it is not built yet.
* **Bias gradient**: ``db = sum(dy)`` over the rows, when the bias requires grad.
* **Grouped routed experts** (``moe_w4a16_gemm`` / ``moe_w8a16_gemm``): the input gradient pair by
  pair through each expert's dense weight (one expert at a time), times its ``pre_quant_scale``;
  the routing weights' gradient ``<dy[p], unweighted output of pair p>`` (recomputed).
* **Activation quantizers** (NVFP4 W4A4, MXFP8, MXFP4, FP8 W8A8 static and per token, INT8
  SmoothQuant, the FP8 activations of W4A8): the **straight-through estimator**, as ModelOpt's
  QAT (``modelopt.torch.quantization.tensor_quant``) computes it. Quantizers with a static scale
  (FP8 / INT8 ``input_scale``) pass the gradient where the quantizer does not saturate and zero it
  where it clips (ModelOpt's "STE with clipping", ``|x| <= amax``); dynamic quantizers (NVFP4 and
  MX blocks, FP8 per token or per tensor without ``input_scale``) never clip and pass it unchanged
  (ModelOpt's ``pass_through_bwd``).
* **Quantized weights and scales are frozen**: they are buffers, and asking for their gradient
  (``module.weight.requires_grad_()``) raises :class:`FrozenWeightError` at the forward, naming the
  op and the tensor. Train adapters (PEFT LoRA, ``motensor.lora``) on top of them instead.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from motensor import ops
from motensor.errors import ArgumentError
from motensor.kernels import reference as ref

__all__ = ["FrozenWeightError", "INT8_QMIN", "INT8_QMAX", "TRAINABLE"]

# Read by transformers-facing code: a motensor ``HfQuantizer`` answers ``is_trainable`` with this
# (adapters train on top of the frozen quantized modules; tests/test_lora.py).
TRAINABLE = True

INT8_QMIN, INT8_QMAX = -128.0, 127.0  # the INT8 SmoothQuant activation range (reference.int8_quant_static)


class FrozenWeightError(ArgumentError):
    """A gradient was asked for a quantized weight or one of its scales (they are frozen)."""


# ----------------------------------------------------------------------------- helpers
def _check_frozen(op: str, **tensors: Optional[Tensor]) -> None:
    for role, t in tensors.items():
        if t is not None and t.requires_grad:
            raise FrozenWeightError(
                f"motensor::{op}: {role} requires grad, but quantized weights and their scales are frozen "
                "(no gradient flows into packed 4/8-bit storage). Train an adapter instead "
                "(motensor.lora.get_peft_model), or dequantize the layer into an nn.Linear to fine-tune it fully."
            )


def _input_grad(grad: Tensor, w: Tensor) -> Tensor:
    """dy [..., N] @ W [N, K] -> [..., K] in dy's dtype; ``w`` is used once and dropped.

    ``w`` is first rounded to the gradient's dtype, the operand the forward multiplies with. On
    the GPU the product runs in that dtype (tensor cores, fp32 accumulation); elsewhere in fp32
    like the CPU references (CPU bf16 GEMMs are both slower and less exact).
    """
    w = w.to(grad.dtype)
    if grad.device.type == "cuda" or grad.dtype == torch.float32:
        return grad @ w
    return (grad.float() @ w.float()).to(grad.dtype)


def _bias_grad(grad: Tensor, bias: Optional[Tensor], needed: bool) -> Optional[Tensor]:
    if bias is None or not needed:
        return None
    return grad.reshape(-1, grad.shape[-1]).sum(0, dtype=torch.float32).to(bias.dtype)


def _ste_mask(x: Tensor, scale: Tensor, lo: float, hi: float) -> Tensor:
    """Where the static quantizer ``clamp(x / scale, lo, hi)`` does not clip (bool, x's shape)."""
    r = x.float() / ref.scalar(scale)
    return (r >= lo) & (r <= hi)


def _masked(dx: Optional[Tensor], mask: Optional[Tensor]) -> Optional[Tensor]:
    if dx is None or mask is None:
        return dx
    return dx * mask.to(dx.dtype)


def _saved_mask(ctx, x: Tensor, scale: Optional[Tensor], lo: float, hi: float):
    """The clipping mask is all the backward needs of x (1 byte per element instead of x itself)."""
    if scale is None or not ctx.needs_input_grad[0]:
        return None
    return _ste_mask(x, scale, lo, hi)


# ----------------------------------------------------------------------------- 4-bit weights, 16-bit activations
def _w4a16_setup(ctx, inputs, output):
    x, qweight, scales, global_scale, bias, element, scale_kind, group_size = inputs[:8]
    _check_frozen("w4a16_gemm", weight=qweight, weight_scale=scales, weight_scale_2=global_scale)
    ctx.save_for_backward(qweight, scales, global_scale, bias)
    ctx.w4 = (element, scale_kind, group_size)


def _w4a16_backward(ctx, grad):
    qweight, scales, global_scale, bias = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        element, scale_kind, group_size = ctx.w4
        # One dense [N, K] weight in the gradient's dtype, exactly the operand the forward rounds to.
        w = ops.dequant_w4(qweight, scales, global_scale, element, scale_kind, group_size, grad.dtype)
        dx = _input_grad(grad, w)
    return dx, None, None, None, _bias_grad(grad, bias, ctx.needs_input_grad[4]), None, None, None, None


# ----------------------------------------------------------------------------- FP8 weights (block / MX scales)
def _w8a16_setup(ctx, inputs, output):
    x, qweight, scales, bias, scale_kind, block_size = inputs[:6]
    _check_frozen("w8a16_gemm", weight=qweight, weight_scale=scales)
    ctx.save_for_backward(qweight, scales, bias)
    ctx.w8 = (scale_kind, block_size)


def _w8a16_backward(ctx, grad):
    qweight, scales, bias = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        scale_kind, block_size = ctx.w8
        dx = _input_grad(grad, ref.dequant_w8(qweight, scales, scale_kind=scale_kind, block_size=block_size))
    return dx, None, None, _bias_grad(grad, bias, ctx.needs_input_grad[3]), None, None, None


# ----------------------------------------------------------------------------- W4A8 (FP8 activations, static)
def _w4a8_setup(ctx, inputs, output):
    x, qweight, scales, weight_scale_2, input_scale, bias, element, scale_kind, group_size = inputs[:9]
    _check_frozen("w4a8_gemm", weight=qweight, weight_scale=scales, weight_scale_2=weight_scale_2,
                  input_scale=input_scale)
    ctx.save_for_backward(qweight, scales, weight_scale_2, bias,
                          _saved_mask(ctx, x, input_scale, -ref.FP8_MAX, ref.FP8_MAX))
    ctx.w4 = (element, scale_kind, group_size)


def _w4a8_backward(ctx, grad):
    qweight, scales, weight_scale_2, bias, mask = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        element, scale_kind, group_size = ctx.w4
        # y = fp8(x / s_in) @ w_fp8^T * (s_in * s_w2): STE through fp8(x / s_in) * s_in leaves w_fp8 * s_w2.
        w = ref.w4a8_weight_fp8(qweight, scales, weight_scale_2, element=element, scale_kind=scale_kind,
                                group_size=group_size) * ref.scalar(weight_scale_2)
        dx = _masked(_input_grad(grad, w), mask)
    return dx, None, None, None, None, _bias_grad(grad, bias, ctx.needs_input_grad[5]), None, None, None, None


# ----------------------------------------------------------------------------- FP8 / INT8 per-tensor or per-channel
def _per_channel(weight: Tensor, weight_scale: Tensor) -> Tensor:
    s = weight_scale.float()
    return weight.float() * (s.reshape(()) if s.numel() == 1 else s.reshape(-1, 1))


def _fp8_linear_setup(ctx, inputs, output):
    x, weight, weight_scale, input_scale, bias = inputs[:5]
    _check_frozen("fp8_linear", weight=weight, weight_scale=weight_scale, input_scale=input_scale)
    ctx.save_for_backward(weight, weight_scale, bias, _saved_mask(ctx, x, input_scale, -ref.FP8_MAX, ref.FP8_MAX))


def _fp8_linear_backward(ctx, grad):
    weight, weight_scale, bias, mask = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        # Static: STE with clipping at +-448 * input_scale; per token: the scale follows the row's
        # amax, nothing clips, plain STE.
        dx = _masked(_input_grad(grad, _per_channel(weight, weight_scale)), mask)
    return dx, None, None, None, _bias_grad(grad, bias, ctx.needs_input_grad[4])


def _int8_linear_setup(ctx, inputs, output):
    x, weight, weight_scale, input_scale, bias = inputs[:5]
    _check_frozen("int8_linear", weight=weight, weight_scale=weight_scale, input_scale=input_scale)
    ctx.save_for_backward(weight, weight_scale, bias, _saved_mask(ctx, x, input_scale, INT8_QMIN, INT8_QMAX))


def _int8_linear_backward(ctx, grad):
    weight, weight_scale, bias, mask = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        dx = _masked(_input_grad(grad, _per_channel(weight, weight_scale)), mask)
    return dx, None, None, None, _bias_grad(grad, bias, ctx.needs_input_grad[4])


# ----------------------------------------------------------------------------- activation fake-quantizers (STE)
def _pass_through_setup(ctx, inputs, output):
    ctx.x_dtype = inputs[0].dtype
    ctx.n_inputs = len(inputs)


def _pass_through_backward(ctx, grad):
    """Dynamic block / per-tensor quantizers: plain straight-through (ModelOpt ``pass_through_bwd``)."""
    return (grad.to(ctx.x_dtype),) + (None,) * (ctx.n_inputs - 1)


def _nvfp4_setup(ctx, inputs, output):
    _check_frozen("nvfp4_fake_quant", input_scale=inputs[1])
    _pass_through_setup(ctx, inputs, output)


def _fp8_fake_quant_setup(ctx, inputs, output):
    x, input_scale = inputs[:2]
    _check_frozen("fp8_fake_quant", input_scale=input_scale)
    ctx.x_dtype = x.dtype
    ctx.save_for_backward(_saved_mask(ctx, x, input_scale, -ref.FP8_MAX, ref.FP8_MAX))


def _fp8_fake_quant_backward(ctx, grad):
    (mask,) = ctx.saved_tensors
    return _masked(grad.to(ctx.x_dtype), mask), None


# ----------------------------------------------------------------------------- grouped routed experts
def _moe_setup(ctx, x, topk_ids, topk_weights, frozen: dict, weight_of, pre_quant_scale, op_name: str):
    _check_frozen(op_name, **frozen)
    _check_frozen(op_name, pre_quant_scale=pre_quant_scale)
    ctx.save_for_backward(x, topk_ids, topk_weights, pre_quant_scale)
    ctx.weight_of = weight_of


def _moe_backward(ctx, grad: Tensor, recompute) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """(dx, d topk_weights) of ``y[p] = (x[row(p)] * pqs[e]) @ W[e]^T * w[p]`` (roundings passed
    straight through): dx[row(p)] += (dy[p] * w[p]) @ W[e] * pqs[e], one dense expert weight at a
    time (the loop over experts syncs with the host: the backward is not graph-capturable);
    dw[p] = <dy[p], the unweighted output of pair p> (recomputed by the forward op)."""
    x, topk_ids, topk_weights, pqs = ctx.saved_tensors
    row_div = ref.moe_row_div(x, topk_ids)
    flat = topk_ids.reshape(-1)
    dx = dw = None
    if ctx.needs_input_grad[0]:
        g = grad.float()
        if topk_weights is not None:
            g = g * topk_weights.reshape(-1, 1).float()
        acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e in flat.unique().tolist():
            if not 0 <= e < ctx.num_experts:
                continue  # the "no expert" slot: zero rows, no gradient
            idx = (flat == e).nonzero().flatten()
            d = _input_grad(g[idx].to(grad.dtype), ctx.weight_of(e)).float()
            if pqs is not None:
                d = d * pqs[e].float()
            acc.index_add_(0, idx // row_div, d)
        dx = acc.to(x.dtype)
    if topk_weights is not None and ctx.needs_input_grad[2]:
        y0 = recompute()
        dw = (grad.float() * y0.float()).sum(-1).reshape(topk_weights.shape).to(topk_weights.dtype)
    return dx, dw


def _moe_w4a16_setup(ctx, inputs, output):
    x, ids, tw, qweight, scales, gs, pqs, element, scale_kind, group_size, sorted_ids, expert_ids = inputs
    ctx.num_experts = qweight.shape[0]
    ctx.recompute = lambda: ops.moe_w4a16_gemm(x.detach(), ids, None, qweight, scales, gs, pqs, element, scale_kind,
                                               group_size, sorted_ids, expert_ids)
    weight_of = lambda e, dt=x.dtype: ops.dequant_w4(qweight[e], scales[e], None if gs is None else gs.reshape(-1)[e],
                                                     element, scale_kind, group_size, dt)
    _moe_setup(ctx, x, ids, tw, dict(weight=qweight, weight_scale=scales, weight_scale_2=gs), weight_of, pqs,
               "moe_w4a16_gemm")


def _moe_w4a16_backward(ctx, grad):
    dx, dw = _moe_backward(ctx, grad, ctx.recompute)
    return dx, None, dw, None, None, None, None, None, None, None, None, None


def _moe_w8a16_setup(ctx, inputs, output):
    x, ids, tw, qweight, scales, scale_kind, block_size, sorted_ids, expert_ids = inputs
    ctx.num_experts = qweight.shape[0]
    ctx.recompute = lambda: ops.moe_w8a16_gemm(x.detach(), ids, None, qweight, scales, scale_kind, block_size,
                                               sorted_ids, expert_ids)
    weight_of = lambda e: ref.dequant_w8(qweight[e], scales[e], scale_kind=scale_kind, block_size=block_size)
    _moe_setup(ctx, x, ids, tw, dict(weight=qweight, weight_scale=scales), weight_of, None, "moe_w8a16_gemm")


def _moe_w8a16_backward(ctx, grad):
    dx, dw = _moe_backward(ctx, grad, ctx.recompute)
    return dx, None, dw, None, None, None, None, None, None


def _register() -> None:
    ops.moe_w4a16_gemm.register_autograd(_moe_w4a16_backward, setup_context=_moe_w4a16_setup)
    ops.moe_w8a16_gemm.register_autograd(_moe_w8a16_backward, setup_context=_moe_w8a16_setup)
    ops.w4a16_gemm.register_autograd(_w4a16_backward, setup_context=_w4a16_setup)
    ops.w8a16_gemm.register_autograd(_w8a16_backward, setup_context=_w8a16_setup)
    ops.w4a8_gemm.register_autograd(_w4a8_backward, setup_context=_w4a8_setup)
    ops.fp8_linear.register_autograd(_fp8_linear_backward, setup_context=_fp8_linear_setup)
    ops.int8_linear.register_autograd(_int8_linear_backward, setup_context=_int8_linear_setup)
    ops.nvfp4_fake_quant.register_autograd(_pass_through_backward, setup_context=_nvfp4_setup)
    ops.mxfp8_fake_quant.register_autograd(_pass_through_backward, setup_context=_pass_through_setup)
    ops.mxfp4_fake_quant.register_autograd(_pass_through_backward, setup_context=_pass_through_setup)
    ops.fp8_fake_quant.register_autograd(_fp8_fake_quant_backward, setup_context=_fp8_fake_quant_setup)


_register()
