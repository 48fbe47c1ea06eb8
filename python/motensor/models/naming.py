"""Checkpoint names -> the names of the transformers model motensor builds.

ModelOpt writes tensors under the module names the model had when it was exported, and its export
goes through transformers' *reverse* checkpoint conversion: Mixtral comes out under the legacy
``block_sparse_moe.experts.E.{w1,w3,w2}`` names, Qwen3-MoE as per-expert
``mlp.experts.E.{gate,up,down}_proj`` Linears (FORMATS.md section 5), while transformers 5 builds
both with fused 3-D expert containers (``mlp.experts.gate_up_proj [E, 2I, H]``, ``down_proj
[E, H, I]``). transformers renames plain checkpoints through its checkpoint conversion mapping;
here the same *renamings* are applied to every checkpoint name (packed weights and their scales
alike), and the expert *merges* are recognised by :func:`split_expert_name` so that
``motensor.models.moe.QuantExperts`` can take the per-expert modules as they are.
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Optional

from torch import nn

log = logging.getLogger("motensor.models")

# Used when transformers' mapping API is unavailable (it is internal and may move between
# versions): the renamings that matter for the supported architectures.
_FALLBACK_RENAMES: dict[str, list[tuple[str, str]]] = {
    "mixtral": [(".block_sparse_moe.", ".mlp.")],
}

# Per-expert leaf names -> the role they play in a gated expert (FORMATS.md section 5).
EXPERT_LEAVES = {
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "w1": "gate", "w3": "up", "w2": "down",  # Mixtral legacy names
}
_EXPERT_RE = re.compile(r"^(?P<container>.+\.experts)\.(?P<index>\d+)\.(?P<leaf>[A-Za-z0-9_]+)$")


def renamer(model: nn.Module) -> Callable[[str], str]:
    """A function mapping a checkpoint tensor/module name to the model's naming.

    Applies the ``WeightRenaming`` entries of transformers' checkpoint conversion mapping for
    ``model`` (the merges, ``WeightConverter``, are left to the expert containers), then, as
    transformers' loader does, drops the model's ``base_model_prefix`` where the model has no
    module of that name (a text-only class such as ``Llama4ForCausalLM``, prefix
    ``language_model``, reading the ``language_model.model.*`` / ``language_model.lm_head.*``
    tensors of a multimodal checkpoint). Names that nothing matches come back unchanged.
    """
    base = _renamer(model)
    prefix = getattr(model, "base_model_prefix", "") or ""
    if not prefix or prefix in dict(model.named_children()):
        return base
    head = prefix + "."

    def rename(name: str) -> str:
        out = base(name)
        return out[len(head):] if out.startswith(head) else out

    return rename


def _renamer(model: nn.Module) -> Callable[[str], str]:
    renamings = _transformers_renamings(model)
    if renamings is not None:
        from transformers.core_model_loading import apply_renamings

        def rename(name: str) -> str:
            return apply_renamings(name, renamings)

        return rename

    pairs = _FALLBACK_RENAMES.get(getattr(model.config, "model_type", ""), [])

    def rename_fallback(name: str) -> str:
        for old, new in pairs:
            name = name.replace(old, new)
        return name

    return rename_fallback


def _transformers_renamings(model: nn.Module) -> Optional[list]:
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, apply_renamings  # noqa: F401
    except ImportError:  # pragma: no cover - older/newer transformers
        log.info("transformers has no checkpoint conversion mapping API; using motensor's own renamings")
        return None
    try:
        transforms = get_model_conversion_mapping(model, add_legacy=True)
    except Exception as e:  # pragma: no cover - internal API changed shape
        log.warning("transformers' checkpoint conversion mapping failed (%s); using motensor's own renamings", e)
        return None
    return [t for t in transforms if isinstance(t, WeightRenaming) and not isinstance(t, WeightConverter)]


def rename_module(rename: Callable[[str], str], module: str) -> str:
    """Renames a *module* name: the patterns are written for tensor names, so a ``.weight``
    suffix is added for the match and removed again."""
    out = rename(module + ".weight")
    return out[: -len(".weight")] if out.endswith(".weight") else rename(module)


def split_expert_name(name: str) -> Optional[tuple[str, int, str]]:
    """``"model.layers.0.mlp.experts.3.w1"`` -> ``("model.layers.0.mlp.experts", 3, "gate")``.

    Returns None for names that are not one projection of one expert.
    """
    m = _EXPERT_RE.match(name)
    if m is None or m.group("leaf") not in EXPERT_LEAVES:
        return None
    return m.group("container"), int(m.group("index")), EXPERT_LEAVES[m.group("leaf")]
