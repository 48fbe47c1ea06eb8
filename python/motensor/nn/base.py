"""``QuantLinear``: one ModelOpt-quantized Linear, a drop-in for ``nn.Linear``.

The module holds the checkpoint's tensors in the kernel layout (see ``motensor.layout``) as
buffers named by their ModelOpt role, so ``state_dict()`` keys read like the checkpoint's
(``weight``, ``weight_scale``, ``weight_scale_2``, ``input_scale``, ``pre_quant_scale``,
``bias``). What the forward computes is the format's recipe (``motensor.recipes``), picked once
from the format table; kernels are chosen per call by ``motensor.dispatch``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Union

import torch
from torch import nn

from motensor import dispatch
from motensor.errors import ArgumentError, FormatError
from motensor.formats import Activation, FormatSpec, get_format
from motensor.kernels import cpu as cpu_kernels
from motensor.recipes import Recipe, recipe_for

if TYPE_CHECKING:  # pragma: no cover
    from motensor.loading import LoadedModule

ROLES = ("weight", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale", "bias")


class QuantLinear(nn.Module):
    """A Linear whose weight is stored in a ModelOpt format and multiplied by motensor kernels.

    Computes what ModelOpt's fake-quant model computes for the same layer: ``x * pre_quant_scale``
    when the checkpoint has one, the format's activation quantization (none, FP8 static or per
    token, NVFP4 / MXFP8 / MXFP4 per block, INT8 static), then the product with the dequantized
    weight, plus bias. Accepts any leading batch shape; the output has ``x``'s dtype.

    Build one with :meth:`from_loaded` (from ``motensor.load``), :meth:`from_tensors` (role ->
    tensor in kernel layout) or :meth:`from_float` (quantize your own ``nn.Linear``).
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_scale_2: Optional[torch.Tensor]
    input_scale: Optional[torch.Tensor]
    pre_quant_scale: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]

    def __init__(self, in_features: int, out_features: int, spec: Union[FormatSpec, str], group_size: Optional[int],
                 tensors: Mapping[str, torch.Tensor], name: str = ""):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.format = get_format(spec) if isinstance(spec, str) else spec
        self.group_size = group_size
        self.name = name
        for role, t in tensors.items():
            if role not in ROLES:
                raise ArgumentError(f"{name or 'QuantLinear'}: unknown tensor role {role!r}")
            self.register_buffer(role, t)
        for role in ROLES:
            if role not in tensors:
                self.register_buffer(role, None)
        missing = [r.role for r in self.format.tensors if r.required and getattr(self, r.role) is None]
        if missing:
            raise FormatError(f"{name or 'QuantLinear'} ({self.format.name}): missing {missing}")
        self.recipe: Recipe = recipe_for(self.format)
        if self.format.activation is not Activation.NONE:
            # Quantizers amplify a one-ulp change of their input: keep inductor's roundings eager's.
            from motensor.compile_numerics import match_eager_casts

            match_eager_casts()

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_tensors(cls, spec: Union[FormatSpec, str], in_features: int, out_features: int,
                     tensors: Mapping[str, torch.Tensor], group_size: Optional[int] = None,
                     name: str = "") -> "QuantLinear":
        """From tensors already in the kernel layout, keyed by role."""
        spec = get_format(spec) if isinstance(spec, str) else spec
        return cls(in_features, out_features, spec, group_size or spec.default_group, tensors, name)

    @classmethod
    def from_loaded(cls, loaded: "LoadedModule") -> "QuantLinear":
        """From one module of ``motensor.load(...)`` (tensors are used in place, not copied)."""
        info = loaded.info
        if info.lead:
            raise FormatError(f"{info.name} stacks {list(info.lead)} weights; use a quantized experts module")
        return cls(info.k, info.n, info.format, info.group_size, dict(loaded.tensors), info.name)

    @classmethod
    def from_float(cls, linear: nn.Linear, quant_algo: str, *, group_size: Optional[int] = None,
                   input_amax: Optional[float] = None, pre_quant_scale: Optional[torch.Tensor] = None,
                   name: str = "") -> "QuantLinear":
        """Quantizes ``linear`` the way ModelOpt's export would, into the kernel layout.

        ``input_amax`` (the calibrated max of |x| seen by the layer) is required by formats with
        static activation scales (FP8, NVFP4, W4A8_*, W8A8_SQ_PER_CHANNEL). ``pre_quant_scale``
        (AWQ / SmoothQuant, shape [K]) is divided out of the weight before quantization and
        multiplied into the activation at run time, as ModelOpt does.
        """
        from motensor.layout import to_kernel_layout
        from motensor.quantize import quantize_weight

        spec = get_format(quant_algo)
        weight = linear.weight.detach().float()
        if pre_quant_scale is not None:
            weight = weight / pre_quant_scale.detach().float()[None, :]
        q = quantize_weight(spec, weight, group_size=group_size, input_amax=input_amax)
        dev = linear.weight.device
        tensors = {role: to_kernel_layout(spec, role, t).to(dev) for role, t in q.items()}
        if pre_quant_scale is not None:
            tensors["pre_quant_scale"] = pre_quant_scale.detach().to(dev, linear.weight.dtype)
        if linear.bias is not None:
            tensors["bias"] = linear.bias.detach().clone()
        return cls(linear.in_features, linear.out_features, spec, group_size or spec.default_group, tensors, name)

    # -- running -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ArgumentError(
                f"{self.name or 'QuantLinear'}: input has {x.shape[-1]} features, expected {self.in_features}"
            )
        if not x.is_floating_point() or x.dtype.itemsize == 1:
            raise TypeError(f"{self.name or 'QuantLinear'}: input must be float16/bfloat16/float32, got {x.dtype}")
        on_cpu = x.is_cpu
        if not (on_cpu and self.weight.is_cpu) and x.device != self.weight.device:
            raise ArgumentError(f"{self.name or 'QuantLinear'}: input on {x.device}, weights on {self.weight.device}")
        if torch.is_autocast_enabled(x.device.type):
            # Like nn.Linear under autocast: the product runs in the autocast dtype (the custom ops
            # are not autocast-aware themselves, and must not cast their fp32/FP8 scales).
            x = x.to(torch.get_autocast_dtype(x.device.type))
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if on_cpu:
            # Decode-sized CPU products: the whole forward in one Rust call (same numbers).
            y = cpu_kernels.linear_forward(self, x2)
            if y is not None:
                return y.reshape(*lead, self.out_features)
        if self.pre_quant_scale is not None:
            # ModelOpt multiplies in the activation dtype before quantizing (FORMATS 3.2).
            x2 = x2 * self.pre_quant_scale.to(x2.dtype)
        y = self.recipe.forward(self, x2.contiguous())
        return y.reshape(*lead, self.out_features)

    def kernel_choice(self, M: int, dtype: torch.dtype = torch.bfloat16) -> dispatch.KernelChoice:
        """The kernel the main product of a forward with ``M`` rows of ``dtype`` runs on this
        module's device: the same ``dispatch.choose`` call the op makes."""
        return dispatch.choose(self.recipe.family, device=self.weight.device, dtype=dtype, M=M,
                               N=self.out_features, K=self.in_features)

    def kernel_for(self, M: int, dtype: torch.dtype = torch.bfloat16) -> str:
        """Which kernel a forward with ``M`` rows of ``dtype`` runs on this module's device, and why."""
        return self.kernel_choice(M, dtype).describe()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The logical weight ``[N, K]`` (what ModelOpt's fake-quant computes with)."""
        return self.recipe.dequantize(self).to(dtype)

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}", f"format={self.format.name}"]
        if self.group_size:
            parts.append(f"group_size={self.group_size}")
        if self.format.activation is not Activation.NONE:
            parts.append(f"activations={self.format.activation.name}")
        if self.pre_quant_scale is not None:
            parts.append("pre_quant_scale=True")
        parts.append(f"bias={self.bias is not None}")
        return ", ".join(parts)
