"""Pure-torch quantizers that write ModelOpt's checkpoint layout (FORMATS.md section 4).

They are the inverse of the dequantization in the Rust core: ``quantize_weight(spec, W)`` returns
the tensors ModelOpt's ``export_hf_checkpoint`` would write for a Linear weight ``W`` (names by
role, checkpoint dtypes and shapes). Used by ``QuantLinear.from_float`` (users quantizing their
own layers), by the synthetic checkpoint writer of the benchmarks, and by tests. The per-format
quantizers live in the format's recipe (``motensor.recipes``).

Rounding follows ModelOpt: E2M1 round-to-nearest with ties to the even code
(``nvfp4._cast_fp4``), FP8 by torch's RNE cast, INT4/INT8 by ``torch.round`` (ties to even).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from motensor.errors import ArgumentError
from motensor.formats import FormatSpec, get_format
from motensor.recipes import E2M1_MAX, E4M3_MAX, pack_int4_along_n, recipe_for

__all__ = ["E2M1_MAX", "E4M3_MAX", "pack_int4_along_n", "quantize_weight"]


def quantize_weight(
    spec: Union[FormatSpec, str],
    weight: torch.Tensor,
    *,
    group_size: Optional[int] = None,
    input_amax: Optional[Union[float, torch.Tensor]] = None,
) -> dict[str, torch.Tensor]:
    """Quantizes a ``[N, K]`` weight into the tensors ModelOpt exports for ``spec``.

    ``input_amax`` (the calibrated max of |x|) sets ``input_scale`` for static-activation
    formats; it is required there. Returns ``{role: tensor}`` in checkpoint layout.
    """
    spec = get_format(spec) if isinstance(spec, str) else spec
    recipe = recipe_for(spec)
    w = weight.detach().float()
    if w.dim() != 2:
        raise ArgumentError(f"expected a [N, K] weight, got shape {tuple(weight.shape)}")
    g = group_size or spec.default_group or 0
    out = recipe.quantize(spec, w, g)
    if spec.static_input_scale:
        if input_amax is None:
            raise ArgumentError(f"{spec.name} has static activation scales: pass input_amax")
        out["input_scale"] = (torch.as_tensor(input_amax, dtype=torch.float32) / recipe.input_qmax).reshape(())
    return out
