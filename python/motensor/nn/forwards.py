"""What a ``QuantLinear`` computes, chosen once per format from the format table.

A format is reduced to two facts of its table row: how its weight is stored (4-bit with E4M3,
E8M0 or float group scales; FP8 with a scalar, per-channel, 2-D block or E8M0 group scale; INT8
per channel) and how its activations are quantized. ``_FORWARDS`` maps that pair to one
function; the functions call the ``motensor::`` custom ops, which pick a kernel per call through
``motensor.dispatch`` (Triton on CUDA, the exact torch reference elsewhere).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from motensor import ops
from motensor.formats import FormatSpec
from motensor.kernels import reference as ref

if TYPE_CHECKING:  # pragma: no cover
    from motensor.nn.base import QuantLinear

Forward = Callable[["QuantLinear", torch.Tensor], torch.Tensor]

# Format table encodings -> the kernels' names for them.
_SCALE_KIND = {"e4m3": "E4M3", "e8m0": "E8M0", "float": "F32"}


def weight_kind(spec: FormatSpec) -> str:
    """``"4bit/e4m3"``, ``"fp8/blocks2d"``, ``"int8/per_output"``... from the table row."""
    if spec.element in ("e2m1", "int4"):
        return f"4bit/{spec.scale_encoding}"
    if spec.element == "e4m3":
        return f"fp8/{spec.scale_shape}"
    return f"{spec.element}/{spec.scale_shape}"


def _w4_args(m: "QuantLinear") -> dict:
    spec = m.format
    return dict(element=spec.element.upper(), scale_kind=_SCALE_KIND[spec.scale_encoding], group_size=m.group_size)


def _global(m: "QuantLinear"):
    return m.weight_scale_2 if m.format.global_scale == "multiplies" else None


# -- 4-bit weights -----------------------------------------------------------------------------
def _w4a16(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.w4a16_gemm(x, m.weight, m.weight_scale, _global(m), bias=m.bias, **_w4_args(m))


def _w4a4_nvfp4(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    # No FP4 tensor cores before Blackwell: the activation is quantized to NVFP4 and dequantized
    # in one pass (exactly ModelOpt's fake quant), then multiplied with the W4A16 kernel.
    return _w4a16(m, ops.nvfp4_fake_quant(x, m.input_scale))


def _w4a4_mxfp4(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return _w4a16(m, ops.mxfp4_fake_quant(x))


def _w4a8(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    # FP8 activations times the 4-bit weight expanded to FP8 in registers (FP8 tensor cores).
    return ops.w4a8_gemm(x, m.weight, m.weight_scale, m.weight_scale_2, m.input_scale, bias=m.bias, **_w4_args(m))


def _w4a8_mx(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    # W4A8_MXFP4_FP8: E8M0 block scales do not fold into one FP8 operand per tensor, so the FP8
    # activation is fake-quantized per tensor (static if the checkpoint has input_scale; ModelOpt
    # exports none and quantizes dynamically) and the weight runs through the W4A16 kernel.
    return _w4a16(m, ops.fp8_fake_quant(x, m.input_scale))


# -- FP8 weights -------------------------------------------------------------------------------
def _fp8_per_tensor(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.fp8_linear(x, m.weight, m.weight_scale, m.input_scale, m.bias)


def _fp8_per_token(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.fp8_linear(x, m.weight, m.weight_scale, None, m.bias)


def _fp8_blocks(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.w8a16_gemm(x, m.weight, m.weight_scale, scale_kind="F32_BLOCK", block_size=m.group_size, bias=m.bias)


def _mxfp8(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    xq = ops.mxfp8_fake_quant(x)
    return ops.w8a16_gemm(xq, m.weight, m.weight_scale, scale_kind="E8M0", block_size=m.group_size, bias=m.bias)


# -- INT8 weights ------------------------------------------------------------------------------
def _int8_static(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.int8_linear(x, m.weight, m.weight_scale, m.input_scale, m.bias)


def _int8_weight_only(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.int8_linear(x, m.weight, m.weight_scale, None, m.bias)


_FORWARDS: dict[tuple[str, str], Forward] = {
    ("4bit/e4m3", "none"): _w4a16,
    ("4bit/float", "none"): _w4a16,
    ("4bit/e8m0", "none"): _w4a16,
    ("4bit/e4m3", "nvfp4"): _w4a4_nvfp4,
    ("4bit/e8m0", "mxfp4"): _w4a4_mxfp4,
    ("4bit/e4m3", "fp8_per_tensor"): _w4a8,
    ("4bit/float", "fp8_per_tensor"): _w4a8,
    ("4bit/e8m0", "fp8_per_tensor"): _w4a8_mx,
    ("fp8/scalar", "fp8_per_tensor"): _fp8_per_tensor,
    ("fp8/per_output", "fp8_per_token"): _fp8_per_token,
    ("fp8/blocks2d", "none"): _fp8_blocks,
    ("fp8/groups", "mxfp8"): _mxfp8,
    ("int8/per_output", "int8_per_tensor"): _int8_static,
    ("int8/per_output", "none"): _int8_weight_only,
}

# The op family (motensor.dispatch) each forward's main product runs on.
_FAMILY = {
    _w4a16: "w4a16", _w4a4_nvfp4: "w4a16", _w4a4_mxfp4: "w4a16", _w4a8_mx: "w4a16",
    _w4a8: "w4a8", _fp8_blocks: "w8a16", _mxfp8: "w8a16",
}


def forward_for(spec: FormatSpec) -> Forward:
    """The forward function of a format (raises for a combination the table cannot produce)."""
    key = (weight_kind(spec), spec.activation)
    try:
        return _FORWARDS[key]
    except KeyError:
        raise NotImplementedError(f"{spec.name}: no forward for weights {key[0]} with activations {key[1]}") from None


def describe(m: "QuantLinear", M: int, dtype: torch.dtype) -> str:
    """Human-readable kernel choice for a forward of ``M`` rows."""
    from motensor import dispatch

    fwd = forward_for(m.format)
    family = _FAMILY.get(fwd)
    if family is None or m.weight.device.type == "cpu":
        return ops.native_choice(fwd.__name__.lstrip("_"), m.weight.device, M)
    return repr(dispatch.choose(family, device=m.weight.device, dtype=dtype, M=M))


def dequantize(m: "QuantLinear") -> torch.Tensor:
    """The logical fp32 weight ``[N, K]`` (ModelOpt's fake-quant weight) of a module."""
    spec, kind = m.format, weight_kind(m.format)
    if kind.startswith("4bit/"):
        args = _w4_args(m)
        if spec.global_scale == "fp8_requant":
            # ModelOpt's FP8 stage quantizes the bf16 INT4-dequantized weight (as the Rust core).
            ws2 = ref.scalar(m.weight_scale_2)
            w4 = ref.dequant_w4(m.weight, m.weight_scale, None, **args).bfloat16().float()
            return ref.round_e4m3(w4 / ws2) * ws2
        return ref.dequant_w4(m.weight, m.weight_scale, _global(m), **args)
    if kind == "fp8/blocks2d":
        return ref.dequant_fp8_block(m.weight, m.weight_scale, m.group_size)
    if kind == "fp8/groups":
        return ref.dequant_mxfp8(m.weight, m.weight_scale, m.group_size)
    scale = m.weight_scale.float()
    return m.weight.float() * (scale.reshape(()) if scale.numel() == 1 else scale[:, None])
