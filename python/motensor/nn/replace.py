"""``replace_linears``: swap a model's ``nn.Linear`` layers for the checkpoint's quantized ones."""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from motensor.errors import FormatError
from motensor.nn.base import QuantLinear
from motensor.nn.fuse import fuse_modules

if TYPE_CHECKING:  # pragma: no cover
    from motensor.checkpoint import Checkpoint
    from motensor.loading import LoadedCheckpoint, LoadedModule

log = logging.getLogger("motensor.nn")

Source = Union["LoadedCheckpoint", "Checkpoint", str, os.PathLike]


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first tensor that has storage (CPU for an empty or meta model)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replaces the submodule at dotted path ``name`` by ``new``."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _as_loaded(source: Source, model: nn.Module, prefix: str) -> "LoadedCheckpoint":
    from motensor.checkpoint import Checkpoint
    from motensor.loading import LoadedCheckpoint, load

    if isinstance(source, LoadedCheckpoint):
        return source
    ckpt = source if isinstance(source, Checkpoint) else Checkpoint(source)
    wanted = [prefix + n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = [n for n in wanted if n in ckpt.modules] or None
    return load(ckpt, device=model_device(model), modules=names, progress=False)


def replace_linears(
    model: nn.Module,
    source: Source,
    prefix: str = "",
    *,
    fused: Optional[Mapping[str, Sequence[str]]] = None,
) -> list[str]:
    """Replaces every ``nn.Linear`` of ``model`` that the checkpoint quantizes by a
    :class:`~motensor.nn.QuantLinear` holding the checkpoint's tensors.

    ``source`` is a ``motensor.load(...)`` result, a ``motensor.open(...)`` checkpoint or a path
    (then only the needed modules are loaded, onto the model's device). ``prefix`` is prepended
    to the model's module names to find them in the checkpoint (e.g. ``"model."`` for a bare
    decoder). Linears the checkpoint leaves unquantized (``exclude_modules``, or absent from a
    MIXED_PRECISION ``quantized_layers``) are left alone.

    ``fused`` maps a fused linear's name suffix to the checkpoint's separate modules it stands
    for, e.g. ``{"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj",
    "up_proj"]}``; the parts are concatenated along the output dimension (FORMATS 3.4: FP8 parts
    with different scales are requantized to the largest one).

    Returns the names (without ``prefix``) of the replaced modules.
    """
    return replace_linears_from(model, _as_loaded(source, model, prefix).modules, prefix, fused=fused)


def replace_linears_from(
    model: nn.Module,
    modules: Mapping[str, "LoadedModule"],
    prefix: str = "",
    *,
    fused: Optional[Mapping[str, Sequence[str]]] = None,
) -> list[str]:
    """:func:`replace_linears` from loaded modules keyed by the model's module names (``prefix``
    + name), e.g. a subset of ``motensor.load(...).modules`` under transformers' renamings."""
    replaced: list[str] = []
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear)]
    for name, linear in targets:
        full = prefix + name
        q = None
        if full in modules:
            q = QuantLinear.from_loaded(modules[full])
        elif fused:
            q = _fused_from_parts(full, modules, fused)
        if q is None:
            continue
        if (q.in_features, q.out_features) != (linear.in_features, linear.out_features):
            raise FormatError(
                f"{full}: checkpoint weight is [{q.out_features}, {q.in_features}] but the model's Linear is "
                f"[{linear.out_features}, {linear.in_features}]"
            )
        if linear.bias is not None and q.bias is None:
            raise FormatError(f"{full}: the model's Linear has a bias but the checkpoint stores none")
        set_submodule(model, name, q)
        replaced.append(name)
    log.info("replaced %d Linear layers with motensor quantized modules", len(replaced))
    return replaced


def _fused_from_parts(full: str, modules: Mapping[str, "LoadedModule"],
                      fused: Mapping[str, Sequence[str]]) -> Optional[QuantLinear]:
    parent, _, leaf = full.rpartition(".")
    parts = fused.get(leaf)
    if not parts:
        return None
    names = [f"{parent}.{p}" if parent else p for p in parts]
    present = [n for n in names if n in modules]
    if not present:
        return None
    if len(present) != len(names):
        missing = sorted(set(names) - set(present))
        raise FormatError(f"{full}: fused from {names}, but {missing} are not quantized in the checkpoint")
    return fuse_modules(full, [QuantLinear.from_loaded(modules[n]) for n in names])
