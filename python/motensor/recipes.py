"""One recipe per (weight element, scale encoding, scale shape, activation): the registry.

A format's table row (``motensor.formats``, from ``rust/core/src/formats.rs``) says how its
tensors are stored; its :class:`Recipe` says what Python does with them, in one object:

* ``quantize``: ``W`` -> the weight tensors ModelOpt exports (``motensor.quantize``);
* ``dequantize``: a module's kernel-layout tensors -> the logical fp32 weight;
* ``forward``: what ``QuantLinear`` computes (through the ``motensor::`` ops);
* ``kernel``: the element and scale the GEMM kernels are told to decode (4-bit and FP8 weights);
* ``family``: the ``motensor.dispatch`` op family the main product runs on (``kernel_for``);
* ``fuse``: how the weights and scales of parts sharing one input fuse (``motensor.nn.fuse``);
* ``cpu_linear``: the arguments of the prepared CPU layer (``motensor.kernels.cpu.linear_plan``)
  that computes ``forward`` in one Rust call where the op path would run the fused kernel (decode).

Formats that differ only in what the table already says (``pre_quant_scale``, a default group
size, whether ``input_scale`` is required) share a recipe. Adding a format is a Rust row plus at
most one entry in :data:`RECIPES`; nothing else in Python branches on format names.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Sequence

import torch

from motensor import ops
from motensor.errors import ArgumentError, FormatError, UnsupportedFormatError
from motensor.formats import Activation, Element, FormatSpec, GlobalScale, ScaleEncoding, ShapeRule
from motensor.kernels import reference as ref

if TYPE_CHECKING:  # pragma: no cover
    from motensor.nn.base import QuantLinear

log = logging.getLogger("motensor.nn")

E4M3_MAX = 448.0
E2M1_MAX = 6.0
INT8_MAX = 127.0


class QuantTensors(Protocol):
    """What dequantizers read: a module's tensors in the kernel layout (``QuantLinear``)."""

    format: FormatSpec
    group_size: Optional[int]
    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_scale_2: Optional[torch.Tensor]


Quantizer = Callable[[FormatSpec, torch.Tensor, int], "dict[str, torch.Tensor]"]
Dequantizer = Callable[[QuantTensors], torch.Tensor]
Forward = Callable[["QuantLinear", torch.Tensor], torch.Tensor]
#: (parts, fused module name) -> fused ``weight``, ``weight_scale`` (and ``weight_scale_2``).
Fuser = Callable[[Sequence["QuantLinear"], str], "dict[str, torch.Tensor]"]
#: module -> ``linear_plan`` keyword arguments, or None where the op path must run.
CpuLinearArgs = Callable[["QuantLinear"], "Optional[dict]"]


@dataclass(frozen=True)
class KernelIds:
    """What the GEMM kernels decode: the weight element and the scale encoding (their ``.name``
    is what the ``motensor::`` ops carry, their ``.value`` the kernels' ``tl.constexpr``)."""

    element: Element
    scale: ScaleEncoding


@dataclass(frozen=True)
class WeightCodec:
    """How one kind of stored weight is made, read back and fused."""

    element: Element
    scale: ScaleEncoding
    shape: ShapeRule
    quantize: Quantizer
    dequantize: Dequantizer
    fuse: Fuser


@dataclass(frozen=True)
class Recipe:
    """Everything Python does for the formats with one (element, scale, activation)."""

    codec: WeightCodec
    activation: Activation
    forward: Forward
    family: str
    quantize_override: Optional[Quantizer] = None
    cpu_linear: Optional[CpuLinearArgs] = None

    @property
    def key(self) -> tuple[Element, ScaleEncoding, ShapeRule, Activation]:
        return (self.codec.element, self.codec.scale, self.codec.shape, self.activation)

    @property
    def kernel(self) -> KernelIds:
        return KernelIds(self.codec.element, self.codec.scale)

    @property
    def quantize(self) -> Quantizer:
        return self.quantize_override or self.codec.quantize

    @property
    def dequantize(self) -> Dequantizer:
        return self.codec.dequantize

    @property
    def fuse(self) -> Fuser:
        return self.codec.fuse

    @property
    def input_qmax(self) -> float:
        """The largest quantized activation value: ``input_scale = amax / input_qmax``."""
        return {Activation.NVFP4: E2M1_MAX * E4M3_MAX, Activation.INT8_PER_TENSOR: INT8_MAX}.get(
            self.activation, E4M3_MAX)

    def __repr__(self) -> str:
        c = self.codec
        return (f"Recipe({c.element.name} weights, {c.scale.name} {c.shape.name} scales, "
                f"{self.activation.name} activations -> {self.forward.__name__.lstrip('_')} on {self.family})")


# ============================================================================ quantizers
def _e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def _nonzero(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s == 0, torch.ones_like(s), s)


def _groups(w: torch.Tensor, g: int) -> torch.Tensor:
    if w.shape[-1] % g:
        raise ArgumentError(f"K={w.shape[-1]} is not a multiple of the group size {g}")
    return w.unflatten(-1, (-1, g))


def _mx_exponent(amax: torch.Tensor, element_max: float) -> torch.Tensor:
    """E8M0 exponent ``ceil(log2(amax / element_max))`` clamped to [-127, 127] (FORMATS 4.10)."""
    e = torch.ceil(torch.log2(amax.clamp(min=2.0**-127) / element_max))
    return e.clamp(-127, 127)


def pack_int4_along_n(q: torch.Tensor) -> torch.Tensor:
    """Signed int4 values ``[*, N, K]`` -> ``[*, N/2, K]`` uint8, row 2r in the low nibble."""
    b = q.to(torch.int16) & 0xF
    return (b[..., 0::2, :] | (b[..., 1::2, :] << 4)).to(torch.uint8).contiguous()


def _quantize_fp8_scalar(spec: FormatSpec, w: torch.Tensor, g: int) -> dict[str, torch.Tensor]:
    s = w.abs().amax() / E4M3_MAX
    return {"weight": (w / s).to(torch.float8_e4m3fn), "weight_scale": s.reshape(())}


def _quantize_fp8_channel(spec: FormatSpec, w: torch.Tensor, g: int) -> dict[str, torch.Tensor]:
    s = w.abs().amax(-1) / E4M3_MAX
    return {"weight": (w / _nonzero(s)[:, None]).to(torch.float8_e4m3fn), "weight_scale": s}


def _quantize_fp8_blocks(spec: FormatSpec, w: torch.Tensor, g: int) -> dict[str, torch.Tensor]:
    n, k = w.shape
    nb, kb = -(-n // g), -(-k // g)
    padded = w.new_zeros(nb * g, kb * g)
    padded[:n, :k] = w
    s = _nonzero(padded.view(nb, g, kb, g).abs().amax(dim=(1, 3)) / E4M3_MAX)
    full = s.repeat_interleave(g, 0)[:n].repeat_interleave(g, 1)[:, :k]
    return {"weight": _e4m3(w / full), "weight_scale": s.view(nb, 1, kb, 1)}


def _quantize_mxfp8(spec: FormatSpec, w: torch.Tensor, g: int) -> dict[str, torch.Tensor]:
    blocks = _groups(w, g)
    e = _mx_exponent(blocks.abs().amax(-1), E4M3_MAX)
    q = _e4m3(blocks * torch.exp2(-e).unsqueeze(-1)).flatten(-2)
    return {"weight": q, "weight_scale": (e + 127).to(torch.uint8)}


def _quantize_nvfp4(spec: FormatSpec, w: torch.Tensor, g: int, *,
                    ws2_divisor: float = E2M1_MAX * E4M3_MAX) -> dict[str, torch.Tensor]:
    amax = w.abs().amax().float()
    ws2 = amax / ws2_divisor
    blocks = _groups(w.float(), g)
    bamax = blocks.abs().amax(-1)
    # FORMATS 4.4: scale = e4m3(clamp(block_amax / (6 * ws2), 2^-9, 448)); all-zero blocks -> 1.
    per_block = torch.where(bamax == 0, torch.ones_like(bamax), bamax / (E2M1_MAX * ws2))
    scale = _e4m3(per_block.clamp(min=2.0**-9))
    denom = scale.float() * ws2
    codes = ref.e2m1_codes(blocks / denom.unsqueeze(-1)).flatten(-2)
    return {"weight": ref.pack_4bit(codes), "weight_scale": scale, "weight_scale_2": ws2.reshape(())}


def _quantize_mxfp4(spec: FormatSpec, w: torch.Tensor, g: int) -> dict[str, torch.Tensor]:
    blocks = _groups(w, g)
    e = _mx_exponent(blocks.abs().amax(-1), E2M1_MAX)
    codes = ref.e2m1_codes(blocks * torch.exp2(-e).unsqueeze(-1)).flatten(-2)
    return {"weight": ref.pack_4bit(codes), "weight_scale": (e + 127).to(torch.uint8)}


def _quantize_int4(spec: FormatSpec, w: torch.Tensor, g: int) -> dict[str, torch.Tensor]:
    blocks = _groups(w.float(), g)
    s = blocks.abs().amax(-1) / 7.0
    q = torch.round(blocks / _nonzero(s).unsqueeze(-1)).clamp(-8, 7).flatten(-2)
    out = {"weight": pack_int4_along_n(q), "weight_scale": s}
    if spec.global_scale is GlobalScale.FP8_REQUANT:
        deq = q * s.repeat_interleave(g, -1)
        out["weight_scale_2"] = (deq.abs().amax() / E4M3_MAX).reshape(())
    return out


def _quantize_int8(spec: FormatSpec, w: torch.Tensor, g: int) -> dict[str, torch.Tensor]:
    s = w.abs().amax(-1) / INT8_MAX
    q = torch.round(w / _nonzero(s)[:, None]).clamp(-128, 127).to(torch.int8)
    return {"weight": q, "weight_scale": s}


# ============================================================================ dequantizers (kernel layout)
def _global(m: QuantTensors) -> Optional[torch.Tensor]:
    return m.weight_scale_2 if m.format.global_scale is GlobalScale.MULTIPLIES else None


def _required(t: Optional[torch.Tensor], role: str, m: QuantTensors) -> torch.Tensor:
    if t is None:
        raise FormatError(f"{m.format.name}: {role} is required")
    return t


def _group(m: QuantTensors) -> int:
    if m.group_size is None:
        raise FormatError(f"{m.format.name}: a group size is required")
    return m.group_size


def _dequantize_w4(m: QuantTensors) -> torch.Tensor:
    kernel, g = recipe_for(m.format).kernel, _group(m)
    if m.format.global_scale is GlobalScale.FP8_REQUANT:
        # ModelOpt's FP8 stage quantizes the bf16 INT4-dequantized weight (as the Rust core).
        ws2 = ref.scalar(_required(m.weight_scale_2, "weight_scale_2", m))
        w4 = ref.dequant_w4(m.weight, m.weight_scale, None, element=kernel.element, scale_kind=kernel.scale,
                            group_size=g).bfloat16().float()
        return ref.round_e4m3(w4 / ws2) * ws2
    return ref.dequant_w4(m.weight, m.weight_scale, _global(m), element=kernel.element, scale_kind=kernel.scale,
                          group_size=g)


def _dequantize_fp8_blocks(m: QuantTensors) -> torch.Tensor:
    return ref.dequant_fp8_block(m.weight, m.weight_scale, _group(m))


def _dequantize_mxfp8(m: QuantTensors) -> torch.Tensor:
    return ref.dequant_mxfp8(m.weight, m.weight_scale, _group(m))


def _dequantize_per_tensor_or_channel(m: QuantTensors) -> torch.Tensor:
    scale = m.weight_scale.float()
    return m.weight.float() * (scale.reshape(()) if scale.numel() == 1 else scale[:, None])


# ============================================================================ fusing (FORMATS 3.4)
def _same(ts: Sequence[torch.Tensor]) -> bool:
    return all(torch.equal(ts[0], t) for t in ts[1:])


def _fuse_requant_to_max(parts: Sequence["QuantLinear"], name: str) -> dict[str, torch.Tensor]:
    """FP8 per-tensor: one scale for the fused weight, the largest, with the other parts
    requantized onto it (exact for the part that had it; vLLM ``requantize_with_max_scale``)."""
    s = torch.stack([p.weight_scale.float().reshape(()) for p in parts])
    smax = s.max()
    if not _same(list(s)):
        log.warning("%s: FP8 parts have different weight_scale; requantizing to the max", name)
    ws = [(p.weight.float() * (si / smax)).clamp(-E4M3_MAX, E4M3_MAX).to(p.weight.dtype) for p, si in zip(parts, s)]
    return {"weight": torch.cat(ws, dim=0), "weight_scale": smax}


def _concat(scale_dim: int, check_blocks: bool = False) -> Fuser:
    """Parts concatenated along N: the weights along dim 0, the scales along ``scale_dim`` of
    their kernel layout (``[K/G, N]`` group scales: 1; per-channel and 2-D block scales: 0). A
    differing ``weight_scale_2`` is rescaled to the max (folded into E4M3 block scales where the
    global scale multiplies them)."""

    def fuse(parts: Sequence["QuantLinear"], name: str) -> dict[str, torch.Tensor]:
        first = parts[0]
        spec = first.format
        if check_blocks:
            block = first.group_size or 1
            ns = [p.out_features for p in parts]
            if any(n % block for n in ns[:-1]):
                raise FormatError(f"{name}: cannot fuse 2-D block scales of parts with N={ns} (not multiples of {block})")
        t = {"weight": torch.cat([p.weight for p in parts], dim=0)}
        scales = [p.weight_scale for p in parts]
        ws2 = [p.weight_scale_2 for p in parts]
        present = [x for x in ws2 if x is not None]
        if present and len(present) != len(ws2):
            raise FormatError(f"{name}: only some parts carry weight_scale_2")
        if present and not _same(present):
            g = torch.stack([x.float().reshape(()) for x in present])
            gmax = g.max()
            log.warning("%s: parts have different weight_scale_2; rescaling to the max", name)
            if spec.global_scale is GlobalScale.MULTIPLIES:
                # NVFP4: fold the ratio into the E4M3 block scales (rounds them once more).
                scales = [(sc.float() * (gi / gmax)).to(sc.dtype) for sc, gi in zip(scales, g)]
            present = [gmax]
        if present:
            t["weight_scale_2"] = present[0].float().reshape(())
        t["weight_scale"] = torch.cat(scales, dim=scale_dim)
        return t

    return fuse


# ============================================================================ forwards
def _w4_kernel_args(m: "QuantLinear") -> dict:
    kernel = recipe_for(m.format).kernel
    return dict(element=kernel.element.name, scale_kind=kernel.scale.name, group_size=m.group_size)


def _w4a16(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.w4a16_gemm(x, m.weight, m.weight_scale, _global(m), bias=m.bias, **_w4_kernel_args(m))


def _w4a4_nvfp4(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    # No FP4 tensor cores before Blackwell: the activation is quantized to NVFP4 and dequantized
    # in one pass (exactly ModelOpt's fake quant), then multiplied with the W4A16 kernel.
    return _w4a16(m, ops.nvfp4_fake_quant(x, m.input_scale))


def _w4a4_mxfp4(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return _w4a16(m, ops.mxfp4_fake_quant(x))


def _w4a8(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    # FP8 activations times the 4-bit weight expanded to FP8 in registers (FP8 tensor cores).
    return ops.w4a8_gemm(x, m.weight, m.weight_scale, m.weight_scale_2, m.input_scale, bias=m.bias,
                         **_w4_kernel_args(m))


def _w4a8_mx(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    # W4A8_MXFP4_FP8: E8M0 block scales do not fold into one FP8 operand per tensor, so the FP8
    # activation is fake-quantized per tensor (static if the checkpoint has input_scale; ModelOpt
    # exports none and quantizes dynamically) and the weight runs through the W4A16 kernel.
    return _w4a16(m, ops.fp8_fake_quant(x, m.input_scale))


def _fp8_per_tensor(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.fp8_linear(x, m.weight, m.weight_scale, m.input_scale, m.bias)


def _fp8_per_token(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.fp8_linear(x, m.weight, m.weight_scale, None, m.bias)


def _w8a16(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    scale = recipe_for(m.format).kernel.scale
    return ops.w8a16_gemm(x, m.weight, m.weight_scale, scale_kind=scale.name, block_size=m.group_size, bias=m.bias)


def _fp8_blocks(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return _w8a16(m, x)


def _mxfp8(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return _w8a16(m, ops.mxfp8_fake_quant(x))


def _int8_static(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.int8_linear(x, m.weight, m.weight_scale, m.input_scale, m.bias)


def _int8_weight_only(m: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
    return ops.int8_linear(x, m.weight, m.weight_scale, None, m.bias)


# ============================================================================ the CPU layer
# Each builder gives the arguments with which the prepared CPU layer computes exactly what the
# forward above computes through the ops' CPU implementations (motensor/kernels/cpu.py): the same
# tensors converted the same way, the same quantizer and epilogue. None where the ops would not
# run the fused Rust kernel (an unexpected dtype or shape: the op path decides, or raises).
def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float().reshape(-1).contiguous()


def _value(t: Optional[torch.Tensor]) -> Optional[float]:
    return None if t is None or t.numel() != 1 else float(ref.scalar(t))


def _w4_cpu(m: "QuantLinear", act: str = "none", act_scale: Optional[float] = None, operand: Optional[str] = None,
            scale_div: Optional[float] = None, b: Optional[torch.Tensor] = None) -> Optional[dict]:
    kernel = recipe_for(m.format).kernel
    scales = m.weight_scale
    if kernel.scale is ScaleEncoding.F32:
        scales = scales.float()
    elif scales.dtype != {ScaleEncoding.E4M3: torch.float8_e4m3fn, ScaleEncoding.E8M0: torch.uint8}.get(kernel.scale):
        return None
    if m.weight.dtype != torch.uint8 or m.group_size is None:
        return None
    return dict(kind="w4", qweight=m.weight, scales=scales, element=kernel.element.name, scale_kind=kernel.scale.name,
                group=m.group_size, scale_mul=_value(_global(m)), scale_div=scale_div, act=act, act_scale=act_scale,
                operand=operand, b=b, bias=_f32(m.bias))


def _w4a16_cpu(m: "QuantLinear") -> Optional[dict]:
    gs = _global(m)
    if gs is not None and gs.numel() != 1:
        return None
    return _w4_cpu(m)


def _w4a4_nvfp4_cpu(m: "QuantLinear") -> Optional[dict]:
    # The Rust quantizer takes K % 16 == 0 and one input scale (the op falls back otherwise).
    if m.input_scale is None or m.input_scale.numel() != 1 or m.in_features % 16:
        return None
    return _w4a16_cpu(m) and _w4_cpu(m, act="nvfp4", act_scale=_value(m.input_scale))


def _w4a8_cpu(m: "QuantLinear") -> Optional[dict]:
    kernel = recipe_for(m.format).kernel
    if m.input_scale is None or m.weight_scale_2 is None or m.input_scale.numel() != 1 or m.weight_scale_2.numel() != 1:
        return None
    post = (ref.scalar(m.input_scale) * ref.scalar(m.weight_scale_2)).reshape(1).contiguous()
    div = _value(m.weight_scale_2) if kernel.element is Element.INT4 else None
    args = _w4_cpu(m, act="fp8_static", act_scale=_value(m.input_scale), operand="e4m3", scale_div=div, b=post)
    if args is not None:
        args["scale_mul"] = None  # W4A8: weight_scale_2 divides (INT4) or comes after the sums (b)
    return args


def _fp8_cpu(m: "QuantLinear", static: bool) -> Optional[dict]:
    if m.weight.dtype != torch.float8_e4m3fn or m.weight_scale.numel() not in (1, m.out_features):
        return None
    if static and (m.input_scale is None or m.input_scale.numel() != 1):
        return None
    return dict(kind="fp8", qweight=m.weight, scales=None, element="", scale_kind="NONE", group=0,
                act="fp8_static" if static else "fp8_per_token", act_scale=_value(m.input_scale) if static else None,
                operand="float32", a=_f32(m.input_scale) if static else None, b=_f32(m.weight_scale), bias=_f32(m.bias))


def _fp8_blocks_cpu(m: "QuantLinear") -> Optional[dict]:
    n, k, g = m.out_features, m.in_features, m.group_size
    if m.weight.dtype != torch.float8_e4m3fn or not g or m.weight_scale.numel() != -(-n // g) * -(-k // g):
        return None
    return dict(kind="fp8", qweight=m.weight, scales=_f32(m.weight_scale), element="", scale_kind="F32_BLOCK", group=g,
                bias=_f32(m.bias))


def _int8_weight_only_cpu(m: "QuantLinear") -> Optional[dict]:
    if m.weight.dtype != torch.int8 or m.weight_scale.numel() != m.out_features:
        return None
    return dict(kind="int8", qweight=m.weight, scales=_f32(m.weight_scale), element="", scale_kind="F32", group=0,
                bias=_f32(m.bias))


# ============================================================================ the registry
_GROUPS_CAT = _concat(scale_dim=1)   # [K/G, N] group scales
_ROWS_CAT = _concat(scale_dim=0)     # [N] per-channel scales

FP8_SCALAR = WeightCodec(Element.E4M3, ScaleEncoding.F32, ShapeRule.SCALAR, _quantize_fp8_scalar,
                         _dequantize_per_tensor_or_channel, _fuse_requant_to_max)
FP8_CHANNEL = WeightCodec(Element.E4M3, ScaleEncoding.F32, ShapeRule.PER_OUTPUT, _quantize_fp8_channel,
                          _dequantize_per_tensor_or_channel, _ROWS_CAT)
FP8_BLOCKS = WeightCodec(Element.E4M3, ScaleEncoding.F32, ShapeRule.BLOCKS2D, _quantize_fp8_blocks,
                         _dequantize_fp8_blocks, _concat(scale_dim=0, check_blocks=True))
MXFP8 = WeightCodec(Element.E4M3, ScaleEncoding.E8M0, ShapeRule.GROUPS, _quantize_mxfp8, _dequantize_mxfp8,
                    _GROUPS_CAT)
NVFP4 = WeightCodec(Element.E2M1, ScaleEncoding.E4M3, ShapeRule.GROUPS, _quantize_nvfp4, _dequantize_w4, _GROUPS_CAT)
MXFP4 = WeightCodec(Element.E2M1, ScaleEncoding.E8M0, ShapeRule.GROUPS, _quantize_mxfp4, _dequantize_w4, _GROUPS_CAT)
INT4 = WeightCodec(Element.INT4, ScaleEncoding.F32, ShapeRule.GROUPS, _quantize_int4, _dequantize_w4, _GROUPS_CAT)
INT8 = WeightCodec(Element.INT8, ScaleEncoding.F32, ShapeRule.PER_OUTPUT, _quantize_int8,
                   _dequantize_per_tensor_or_channel, _ROWS_CAT)

RECIPES: tuple[Recipe, ...] = (
    Recipe(FP8_SCALAR, Activation.FP8_PER_TENSOR, _fp8_per_tensor, "fp8_linear",
           cpu_linear=functools.partial(_fp8_cpu, static=True)),
    Recipe(FP8_CHANNEL, Activation.FP8_PER_TOKEN, _fp8_per_token, "fp8_linear",
           cpu_linear=functools.partial(_fp8_cpu, static=False)),
    Recipe(FP8_BLOCKS, Activation.NONE, _fp8_blocks, "w8a16", cpu_linear=_fp8_blocks_cpu),
    Recipe(MXFP8, Activation.MXFP8, _mxfp8, "w8a16"),
    Recipe(NVFP4, Activation.NONE, _w4a16, "w4a16", cpu_linear=_w4a16_cpu),
    Recipe(NVFP4, Activation.NVFP4, _w4a4_nvfp4, "w4a16", cpu_linear=_w4a4_nvfp4_cpu),
    # W4A8_NVFP4_FP8: weight_scale_2 = amax / 448, so that the E4M3 block scales times the E2M1
    # values are themselves an FP8 weight (FORMATS 4.6b).
    Recipe(NVFP4, Activation.FP8_PER_TENSOR, _w4a8, "w4a8",
           quantize_override=functools.partial(_quantize_nvfp4, ws2_divisor=E4M3_MAX), cpu_linear=_w4a8_cpu),
    Recipe(MXFP4, Activation.MXFP4, _w4a4_mxfp4, "w4a16"),
    Recipe(MXFP4, Activation.FP8_PER_TENSOR, _w4a8_mx, "w4a16"),
    Recipe(INT4, Activation.NONE, _w4a16, "w4a16", cpu_linear=_w4a16_cpu),
    Recipe(INT4, Activation.FP8_PER_TENSOR, _w4a8, "w4a8", cpu_linear=_w4a8_cpu),
    Recipe(INT8, Activation.INT8_PER_TENSOR, _int8_static, "int8_linear"),
    Recipe(INT8, Activation.NONE, _int8_weight_only, "int8_weight_only", cpu_linear=_int8_weight_only_cpu),
)

_BY_KEY: dict[tuple[Element, ScaleEncoding, ShapeRule, Activation], Recipe] = {r.key: r for r in RECIPES}
assert len(_BY_KEY) == len(RECIPES), "two recipes share a key"


@functools.lru_cache(maxsize=None)
def recipe_for(spec: FormatSpec) -> Recipe:
    """The recipe of a format, from its table row (raises for a row no recipe covers)."""
    key = (spec.element, spec.scale_encoding, spec.scale_shape, spec.activation)
    try:
        return _BY_KEY[key]
    except KeyError:
        raise UnsupportedFormatError(
            f"{spec.name}: no recipe for {spec.element.name} weights with {spec.scale_encoding.name} "
            f"{spec.scale_shape.name} scales and {spec.activation.name} activations (motensor/recipes.py)"
        ) from None
