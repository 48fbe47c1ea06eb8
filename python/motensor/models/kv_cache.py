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

Given ModelOpt's own q/k/v projections, this path reproduces ModelOpt's attention output bit for
bit (``tests/test_models.py::test_fp8_kv_cache_reproduces_modelopt_attention``). One export
difference remains that no loader can undo: ModelOpt releases before 0.43 wrote FP8 KV scales as
``max(amax / 448, 1.0)`` (``postprocess_state_dict`` in ``modelopt/torch/export/quant_utils.py``,
``value.clamp_(min=1.0)``, removed by NVIDIA/Model-Optimizer commit bc96f1ce3, first released in
0.43.0), while their fake-quant model rounds K/V with the calibrated ``amax / 448``. Activations
small enough to calibrate below 448 (nearly every model) therefore get scale 1.0 in the file and
the amax is lost. motensor uses the file's scale, as vLLM and TensorRT-LLM do, and says so
(:func:`clamped_scales`, a logged warning): logits then differ from ModelOpt's fake-quant model
by about the KV quantization error itself, on top of the weight-export differences.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Any, Callable, Optional

import torch
from torch import nn

from motensor.errors import FormatError

log = logging.getLogger("motensor.models")

PREFIX = "motensor_fp8kv_"
#: The first ModelOpt release that exports calibrated FP8 KV scales as they are (not clamped to 1).
UNCLAMPED_SINCE = (0, 43)


def clamped_scales(scales: dict[str, dict[str, torch.Tensor]], producer_version: Optional[str]) -> list[str]:
    """The ``<attention>.<k_scale|v_scale>`` whose value is exactly 1.0 in an export of a ModelOpt
    release before 0.43, which clamped FP8 KV scales to at least 1 (module docstring): for those
    the file holds 1.0 instead of the ``amax / 448`` ModelOpt's fake-quant model used. Empty for
    other producers, unknown versions and later releases."""
    m = re.match(r"\s*(\d+)\.(\d+)", producer_version or "")
    if m is None or (int(m.group(1)), int(m.group(2))) >= UNCLAMPED_SINCE:
        return []
    return [f"{attn}.{role}" for attn, roles in scales.items() for role, t in roles.items()
            if t.numel() == 1 and t.item() == 1.0]


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


def install(model: nn.Module, scales: dict[str, dict[str, torch.Tensor]], algo: Optional[str],
            producer_version: Optional[str] = None) -> int:
    """Attaches ``{attention module: {"k_scale": t, "v_scale": t}}`` and switches the model's
    attention implementation to the FP8-KV wrapper. Returns the number of attention modules.
    ``producer_version``: the ModelOpt release that wrote the checkpoint; a warning names scales
    that release clamped to 1 (:func:`clamped_scales`)."""
    if not scales:
        return 0
    if (algo or "").upper() != "FP8":
        log.warning("kv_cache_quant_algo %s: its runtime semantics are not settled (FORMATS.md section 6); "
                    "K/V stay in the model dtype and the checkpoint's KV scales are ignored", algo)
        return 0
    clamped = clamped_scales(scales, producer_version)
    if clamped:
        log.warning("%d of %d FP8 KV-cache scales are exactly 1.0 (%s...): ModelOpt %s (before 0.43) exports "
                    "max(amax / 448, 1), so the calibrated amax is lost. motensor applies the file's scale 1.0, "
                    "as vLLM and TensorRT-LLM do; ModelOpt's own fake-quant model used amax / 448, so logits "
                    "differ from it by about the KV quantization error (re-export with ModelOpt >= 0.43 to "
                    "keep the calibrated scales)", len(clamped), sum(len(r) for r in scales.values()),
                    clamped[0], producer_version)
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
