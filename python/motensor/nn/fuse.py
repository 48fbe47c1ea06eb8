"""Fusing separately stored projections (q/k/v, gate/up) into one QuantLinear (FORMATS 3.4).

ModelOpt stores every HF module separately. For the formats whose export unifies a group that
shares an input (NVFP4, AWQ, SmoothQuant: one ``weight_scale_2``, ``input_scale`` and
``pre_quant_scale``), fusing is concatenation along the output dimension. FP8 per-tensor is not
unified at export: parts with different ``weight_scale`` are requantized to the largest (as vLLM
``requantize_with_max_scale`` does), and ``input_scale`` takes the max.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from motensor.errors import FormatError
from motensor.nn.base import QuantLinear

log = logging.getLogger("motensor.nn")


def _same(ts: Sequence[torch.Tensor]) -> bool:
    return all(torch.equal(ts[0], t) for t in ts[1:])


def _cat_scales(spec_shape: str, scales: list[torch.Tensor], ns: list[int], group: int, name: str) -> torch.Tensor:
    if spec_shape == "groups":  # kernel layout [K/G, N]
        return torch.cat(scales, dim=1)
    if spec_shape == "per_output":
        return torch.cat(scales, dim=0)
    if spec_shape == "blocks2d":
        if any(n % group for n in ns[:-1]):
            raise FormatError(f"{name}: cannot fuse 2-D block scales of parts with N={ns} (not multiples of {group})")
        return torch.cat(scales, dim=0)
    raise FormatError(f"{name}: cannot concatenate {spec_shape} scales")


def fuse_modules(name: str, parts: Sequence[QuantLinear]) -> QuantLinear:
    """One QuantLinear computing ``cat([p(x) for p in parts], -1)``."""
    first = parts[0]
    spec = first.format
    for p in parts[1:]:
        if p.format is not spec and p.format.name != spec.name:
            raise FormatError(f"{name}: parts have different formats ({first.format.name}, {p.format.name})")
        if p.in_features != first.in_features or p.group_size != first.group_size:
            raise FormatError(f"{name}: parts disagree on in_features/group_size")
    ns = [p.out_features for p in parts]
    t: dict[str, torch.Tensor] = {}

    pqs = [p.pre_quant_scale for p in parts]
    if any(x is not None for x in pqs):
        if any(x is None for x in pqs) or not _same(pqs):
            raise FormatError(f"{name}: parts carry different pre_quant_scale; they cannot share one input")
        t["pre_quant_scale"] = pqs[0]

    if spec.scale_shape == "scalar":
        # FP8 per-tensor: one scale for the fused weight, the largest, with the other parts
        # requantized onto it (exact for the part that had it).
        s = torch.stack([p.weight_scale.float().reshape(()) for p in parts])
        smax = s.max()
        if not _same(list(s)):
            log.warning("%s: FP8 parts have different weight_scale; requantizing to the max", name)
        ws = [(p.weight.float() * (si / smax)).clamp(-448, 448).to(p.weight.dtype) for p, si in zip(parts, s)]
        t["weight"] = torch.cat(ws, dim=0)
        t["weight_scale"] = smax
    else:
        t["weight"] = torch.cat([p.weight for p in parts], dim=0)
        ws2 = [p.weight_scale_2 for p in parts]
        scales = [p.weight_scale for p in parts]
        if ws2[0] is not None and not _same(ws2):
            g = torch.stack([x.float().reshape(()) for x in ws2])
            gmax = g.max()
            log.warning("%s: parts have different weight_scale_2; rescaling to the max", name)
            if spec.global_scale == "multiplies":
                # NVFP4: fold the ratio into the E4M3 block scales (rounds them once more).
                scales = [(sc.float() * (gi / gmax)).to(sc.dtype) for sc, gi in zip(scales, g)]
            ws2 = [gmax]
        if ws2[0] is not None:
            t["weight_scale_2"] = ws2[0].float().reshape(())
        t["weight_scale"] = _cat_scales(spec.scale_shape, scales, ns, first.group_size or 1, name)

    ins = [p.input_scale for p in parts]
    if ins[0] is not None:
        if not _same(ins):
            log.warning("%s: parts have different input_scale; using the max", name)
        t["input_scale"] = torch.stack([x.float().reshape(()) for x in ins]).max()

    biases = [p.bias for p in parts]
    if any(b is not None for b in biases):
        dtype = next(b.dtype for b in biases if b is not None)
        t["bias"] = torch.cat([b if b is not None else torch.zeros(n, dtype=dtype, device=first.weight.device)
                               for b, n in zip(biases, ns)])
    return QuantLinear(first.in_features, sum(ns), spec, first.group_size, t, name)
