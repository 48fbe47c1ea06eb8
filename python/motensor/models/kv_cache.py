"""FP8 KV-cache scales (FORMATS.md section 6), applied the way ModelOpt's fake-quant model does.

ModelOpt quantizes K and V where they enter the attention function (its ``_QuantAttention``
wraps transformers' attention interface and runs ``k_bmm_quantizer(key_states)`` /
``v_bmm_quantizer(value_states)``, after RoPE and after the cache update). The checkpoint keeps
the scales as ``<attn>.k_proj.k_scale`` / ``<attn>.v_proj.v_scale`` (``amax / 448``).

motensor does the same: each attention module gets ``k_scale`` / ``v_scale`` buffers, and the
model's attention implementation is wrapped (registered with transformers as
``motensor_fp8kv_<base>``) so that K and V are rounded through E4M3 with those scales before the
base implementation (sdpa, eager...) runs. The cache itself stays in the model dtype: this
reproduces the checkpoint's numerics, it does not save cache memory.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Optional

import torch
from torch import nn

from motensor.errors import FormatError

log = logging.getLogger("motensor.models")

PREFIX = "motensor_fp8kv_"


def fp8_fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``e4m3(clamp(x / scale, +-448)) * scale`` (fp32 math), in ``x``'s dtype: the ``motensor::``
    custom op, so it traces under ``torch.compile``."""
    from motensor import ops

    return ops.fp8_fake_quant(x.contiguous(), scale)


def _base_function(module: nn.Module, base: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[base]
    # "eager" is not in the global mapping: every modeling file has its own eager function.
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(f"cannot find the {base!r} attention function of {type(module).__name__}")
    return fn


def _make_wrapper(base: str) -> Callable:
    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        k_scale: Optional[torch.Tensor] = getattr(module, "k_scale", None)
        v_scale: Optional[torch.Tensor] = getattr(module, "v_scale", None)
        if k_scale is not None:
            key = fp8_fake_quant(key, k_scale)
        if v_scale is not None:
            value = fp8_fake_quant(value, v_scale)
        return _base_function(module, base)(module, query, key, value, attention_mask, *args, **kwargs)

    attention.__name__ = f"{PREFIX}{base}"
    return attention


def register(base: str) -> str:
    """Registers (once) the FP8-KV wrapper of attention implementation ``base``; returns its name."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = f"{PREFIX}{base}"
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _make_wrapper(base))
    if name not in AttentionMaskInterface._global_mapping:
        mask_base = base if base in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping else "sdpa"
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[mask_base])
    return name


def install(model: nn.Module, scales: dict[str, dict[str, torch.Tensor]], algo: Optional[str]) -> int:
    """Attaches ``{attention module: {"k_scale": t, "v_scale": t}}`` and switches the model's
    attention implementation to the FP8-KV wrapper. Returns the number of attention modules."""
    if not scales:
        return 0
    if (algo or "").upper() != "FP8":
        log.warning("kv_cache_quant_algo %s: its runtime semantics are not settled (FORMATS.md section 6); "
                    "K/V stay in the model dtype and the checkpoint's KV scales are ignored", algo)
        return 0
    for attn_name, roles in scales.items():
        try:
            attn = model.get_submodule(attn_name)
        except AttributeError:
            raise FormatError(f"KV-cache scales name the attention module {attn_name!r}, which the model lacks") from None
        for role, t in roles.items():
            attn.register_buffer(role, t.float().reshape(()), persistent=False)
    config: Any = model.config
    base = config._attn_implementation or "sdpa"
    if not base.startswith(PREFIX):
        name = register(base)
        for sub in model.modules():  # the config object is shared, but sub-configs may differ
            cfg = getattr(sub, "config", None)
            if cfg is not None and getattr(cfg, "_attn_implementation", None) == base:
                cfg._attn_implementation = name
        config._attn_implementation = name
    return len(scales)
