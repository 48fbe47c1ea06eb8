"""PEFT LoRA on frozen ModelOpt weights (QLoRA-style fine-tuning of motensor models).

PEFT attaches LoRA to layer types it knows (``nn.Linear``, bitsandbytes, GPTQ, HQQ, torchao...)
through a list of ``dispatch_*`` functions; for other layer types its supported extension point
is the custom-module mapping of the config, ``LoraConfig._register_custom_module({type: lora
class})`` (PEFT's "custom models" developer guide). :func:`register` puts
``QuantLinear -> QuantLoraLinear`` into a config; :func:`get_peft_model` and
:func:`load_adapter` are ``peft.get_peft_model`` / ``PeftModel.from_pretrained`` with that done::

    import motensor, motensor.lora
    from peft import LoraConfig

    model = motensor.from_pretrained("path/to/modelopt-nvfp4", dtype=torch.bfloat16)
    model = motensor.lora.get_peft_model(model, LoraConfig(r=16, target_modules="all-linear"))
    ...train...
    model.save_pretrained("adapter")                               # the adapter only
    model = motensor.lora.load_adapter(motensor.from_pretrained(...), "adapter")

``QuantLoraLinear`` is PEFT's own LoRA ``Linear`` (same forward, dropout, scaling, rsLoRA,
multiple adapters, ``adapter_names`` mixed batches, saving) around a frozen ``QuantLinear``: the
base output comes from the motensor kernels, gradients flow to the input through
``motensor.autograd`` (straight-through activation quantizers), and the quantized bytes never
change. The quantized experts of MoE models (``QuantExperts``) hold one ``QuantLinear`` per
expert and projection, so LoRA attaches to experts by name (``...mlp.experts.gate.3``; pass the
names, or ``"all-linear"``, which :func:`get_peft_model` expands to every quantized Linear).

Refused, with a :class:`LoraMergeError` / ``ValueError`` that says why: merging an adapter into
the quantized weight (the sum is not representable in the checkpoint's format; keep the adapter
separate, or serve base + adapter unmerged), and LoRA variants or initialisations that need or
rewrite the full-precision base weight (DoRA, PiSSA, OLoRA, CorDA, LoftQ, EVA...). Other PEFT
methods (IA3, LoHa, LoKr, OFT...) have no custom-module extension point in PEFT and do not
attach to ``QuantLinear``.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from torch import nn

try:
    import peft
    from peft.tuners.lora.layer import Linear as _PeftLoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer
except ImportError as e:  # pragma: no cover - exercised only without the `train` extra
    raise ImportError("motensor.lora needs PEFT: pip install 'motensor[train]'") from e

from motensor.errors import ArgumentError
from motensor.nn import QuantLinear

log = logging.getLogger("motensor.lora")

__all__ = ["QuantLoraLinear", "LoraMergeError", "register", "get_peft_model", "load_adapter", "all_linear_names",
           "trainable_parameters"]

# init_lora_weights values that only initialise the adapter's own A / B matrices.
_ADAPTER_ONLY_INITS = (True, False, "gaussian", "orthogonal")


class LoraMergeError(ArgumentError):
    """Merging a LoRA adapter into a quantized ModelOpt weight was asked for (refused)."""


def _base(layer: nn.Module) -> Any:  # a QuantLinear (or whatever PEFT wrapped)
    return layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer


class QuantLoraLinear(_PeftLoraLinear):
    """PEFT LoRA adapter(s) around a frozen :class:`~motensor.nn.QuantLinear`.

    ``y = QuantLinear(x) + lora_B(lora_A(dropout(x))) * scaling``; the adapters are ordinary
    float parameters (fp32 unless PEFT is told otherwise), the base module's buffers are frozen.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs):
        base = _base(base_layer)
        label = getattr(base, "name", "") or type(base).__name__
        init = getattr(config, "init_lora_weights", True)
        if init not in _ADAPTER_ONLY_INITS:
            raise ValueError(
                f"{label}: init_lora_weights={init!r} reads or rewrites the full-precision base weight, which a "
                f"quantized ModelOpt layer does not have; use one of {_ADAPTER_ONLY_INITS}"
            )
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    # -- what PEFT needs to know about the base layer ---------------------------------------------
    def _get_in_out_features(self, module: nn.Module):
        module = _base(module)
        return module.in_features, module.out_features

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
        # The packed weight's dtype (uint8, float8_e4m3fn, int8) is storage, not a compute dtype:
        # adapters keep their own dtype and only follow the device.
        return _base(base_layer).weight.device, None

    def resolve_lora_variant(self, *, config: Any, **kwargs):
        variant = super().resolve_lora_variant(config=config, **kwargs)
        if variant is not None:
            raise ValueError(
                f"{type(variant).__name__} (e.g. DoRA) needs the full-precision base weight of "
                f"{getattr(_base(self), 'name', '') or 'this QuantLinear'}; only plain LoRA / rsLoRA attach to "
                "quantized ModelOpt layers"
            )
        return None

    # -- merging is refused -------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        base = _base(self)
        raise LoraMergeError(
            f"{getattr(base, 'name', '') or 'QuantLinear'} ({base.format.name}): merging a LoRA adapter into a "
            "quantized ModelOpt weight is not supported: W + B @ A is not representable in the checkpoint's "
            "format without re-quantizing every weight of the layer. Keep the adapter unmerged (PeftModel runs "
            "base + adapter), or save the adapter and merge it into the unquantized base model instead."
        )

    def __repr__(self) -> str:
        return "motensor." + super().__repr__()


def register(config: Any) -> Any:
    """Adds ``QuantLinear -> QuantLoraLinear`` to a PEFT ``LoraConfig`` (in place); returns it."""
    if not isinstance(config, peft.LoraConfig):
        raise TypeError(
            f"motensor attaches PEFT LoRA (LoraConfig) to quantized layers; got {type(config).__name__}. "
            "Other PEFT methods have no extension point for custom layers in PEFT."
        )
    config._register_custom_module({QuantLinear: QuantLoraLinear})
    return config


def all_linear_names(model: nn.Module) -> set[str]:
    """PEFT's ``target_modules="all-linear"`` for a motensor model: every ``QuantLinear`` and
    ``nn.Linear`` except the output embedding (PEFT's own expansion sees ``nn.Linear`` only)."""
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    return {name for name, m in model.named_modules()
            if isinstance(m, (QuantLinear, nn.Linear)) and m is not out_emb and not isinstance(m, BaseTunerLayer)
            and ".lora_" not in f".{name}"}


def get_peft_model(model: nn.Module, config: Any, **kwargs) -> Any:
    """``peft.get_peft_model`` for a motensor model: registers the quantized layers first, and
    expands ``target_modules="all-linear"`` to the quantized Linears too.

    Only the adapters require grad afterwards; the quantized weights are frozen buffers.
    """
    target = getattr(config, "target_modules", None)
    if isinstance(target, str) and target.lower() == "all-linear":
        config.target_modules = all_linear_names(model)
    return peft.get_peft_model(model, register(config), **kwargs)


def load_adapter(model: nn.Module, adapter: str, *, is_trainable: bool = False, adapter_name: str = "default",
                 **kwargs) -> Any:
    """``PeftModel.from_pretrained`` for a motensor model (a LoRA adapter saved by ``save_pretrained``)."""
    config = peft.PeftConfig.from_pretrained(adapter)
    return peft.PeftModel.from_pretrained(model, adapter, adapter_name=adapter_name, is_trainable=is_trainable,
                                          config=register(config), **kwargs)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, counting a packed weight's logical elements as PEFT does not."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += m.in_features * m.out_features
    return trainable, total

