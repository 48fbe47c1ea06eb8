"""Checkpoint layout -> kernel layout, in torch.

The Rust loader performs these re-layouts while it copies into pinned staging
(``rust/core/src/plan.rs`` + ``fill.rs``); this module is the same mapping for tensors that are
already in memory (``from_float``, tests). Which transform applies to which tensor is decided
by the format table's ``weight_layout`` / ``scale_layout``, never by the format's name.
"""
from __future__ import annotations

import torch

from motensor.formats import FormatSpec, ScaleLayout, ShapeRule, WeightLayout


def int4_to_k_packed(w: torch.Tensor) -> torch.Tensor:
    """INT4 ``[*, N/2, K]`` (signed nibbles, output row 2r low) -> ``[*, N, K/2]`` uint8 with
    element k=2j in the low nibble and offset-binary codes (``q + 8``)."""
    b = w.view(torch.uint8)
    lo, hi = b & 0xF, b >> 4
    rows = torch.stack([lo, hi], dim=-2).flatten(-3, -2)  # [*, N, K]: row 2r <- lo, 2r+1 <- hi
    codes = rows ^ 8  # two's complement nibble -> q + 8
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def transpose_groups(s: torch.Tensor) -> torch.Tensor:
    """Per-group scales ``[*, N, K/G]`` -> ``[*, K/G, N]`` (E8M0 bytes stay uint8)."""
    if s.dtype == getattr(torch, "float8_e8m0fnu", None):
        s = s.view(torch.uint8)
    return s.transpose(-1, -2).contiguous()


def squeeze_blocks(s: torch.Tensor) -> torch.Tensor:
    """2-D block scales ``[*, NB, 1, KB, 1]`` -> ``[*, NB, KB]``; ModelOpt's 0-d single-block
    scale (a weight of at most 128x128) -> ``[1, 1]``."""
    if s.dim() <= 1 and s.numel() == 1:
        return s.reshape(1, 1).contiguous()
    if s.dim() >= 4 and s.shape[-1] == 1 and s.shape[-3] == 1:
        return s.squeeze(-1).squeeze(-2).contiguous()
    return s.contiguous()


def scalar_f32(t: torch.Tensor) -> torch.Tensor:
    """A ``[]`` or ``[1]`` scale of any float dtype -> 0-d float32 (FORMATS 3.3)."""
    return t.reshape(()).to(torch.float32)


def to_kernel_layout(spec: FormatSpec, role: str, t: torch.Tensor) -> torch.Tensor:
    """Applies the format table's layout for ``role`` to a checkpoint-layout tensor."""
    rule = spec.rule(role)
    if role == "weight":
        return int4_to_k_packed(t) if spec.weight_layout is WeightLayout.INT4_TO_K_PACKED else t
    if rule is not None and rule.shape is ShapeRule.SCALAR:
        return scalar_f32(t)
    if role == "weight_scale":
        if spec.scale_layout is ScaleLayout.GROUPS_TRANSPOSED:
            return transpose_groups(t)
        if spec.scale_layout is ScaleLayout.BLOCKS2D_SQUEEZED:
            return squeeze_blocks(t)
    return t
