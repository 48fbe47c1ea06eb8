"""Fusing separately stored projections (q/k/v, gate/up) into one QuantLinear (FORMATS 3.4).

ModelOpt stores every HF module separately. For the formats whose export unifies a group that
shares an input (NVFP4, AWQ, SmoothQuant: one ``weight_scale_2``, ``input_scale`` and
``pre_quant_scale``), fusing is concatenation along the output dimension. FP8 per-tensor is not
unified at export: parts with different ``weight_scale`` are requantized to the largest (as vLLM
``requantize_with_max_scale`` does), and ``input_scale`` takes the max. How the weights and scales
of a format combine is its recipe's ``fuse`` rule (``motensor.recipes``); this module handles
what every format shares (``pre_quant_scale``, ``input_scale``, bias).
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

    # Weights and their scales: the format's recipe knows how its scales combine.
    t: dict[str, torch.Tensor] = dict(first.recipe.fuse(parts, name))

    pqs = [p.pre_quant_scale for p in parts]
    if any(x is not None for x in pqs):
        present = [x for x in pqs if x is not None]
        if len(present) != len(pqs) or not _same(present):
            raise FormatError(f"{name}: parts carry different pre_quant_scale; they cannot share one input")
        t["pre_quant_scale"] = present[0]

    ins = [p.input_scale for p in parts]
    if any(x is not None for x in ins):
        present = [x for x in ins if x is not None]
        if len(present) != len(ins):
            raise FormatError(f"{name}: only some parts carry input_scale")
        if not _same(present):
            log.warning("%s: parts have different input_scale; using the max", name)
        t["input_scale"] = torch.stack([x.float().reshape(()) for x in present]).max()

    biases = [p.bias for p in parts]
    if any(b is not None for b in biases):
        dtype = next(b.dtype for b in biases if b is not None)
        t["bias"] = torch.cat([b if b is not None else torch.zeros(n, dtype=dtype, device=first.weight.device)
                               for b, n in zip(biases, ns)])
    return QuantLinear(first.in_features, sum(ns), spec, first.group_size, t, name)
