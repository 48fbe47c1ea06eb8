"""``device_map``: a motensor model spread over several GPUs and the CPU, placed by ``accelerate``.

``motensor.from_pretrained(path, device_map="auto", max_memory={0: "20GiB", "cpu": "64GiB"})`` (or
an explicit ``{module name: device}`` dict) loads the model with motensor's quantized modules
into host memory, lets ``accelerate`` decide (``infer_auto_device_map``, on the *quantized* sizes,
so a 4-bit layer counts as 4-bit) or check the placement, and dispatches it with
``accelerate.dispatch_model``: each module moves to its device and accelerate's hooks carry the
activations from one device to the next. Modules placed on ``"cpu"`` *run* on the CPU, with
motensor's CPU path (the exact torch reference), instead of having their weights streamed to a
GPU at every forward (accelerate's default for CPU entries): that is what ``main_device="cpu"``
asks of ``dispatch_model``. ``"disk"`` offload is refused.

Not done yet: each device's modules are not loaded straight onto it through the pinned ring;
the whole quantized model passes through host memory once (it is the quantized size, not the
bf16 one).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from motensor.errors import ArgumentError

log = logging.getLogger("motensor.parallel")

DeviceMap = Union[str, Mapping[str, Union[str, int, torch.device]]]
_AUTO = ("auto", "balanced", "balanced_low_0", "sequential")
STRATEGIES = _AUTO


def needs_placement(device_map: Any, max_memory: Optional[Mapping] = None) -> bool:
    """Whether ``device_map`` asks accelerate to place modules: a ``{module: device}`` dict (other
    than ``{"": device}``), or a strategy (``"auto"``...) with ``max_memory`` or several GPUs.
    ``"auto"`` on a machine with one GPU (or none) and no ``max_memory`` is that one device."""
    if isinstance(device_map, Mapping):
        return set(device_map) != {""}
    if isinstance(device_map, str) and device_map in _AUTO:
        return max_memory is not None or torch.cuda.device_count() > 1
    return False


def spans_devices(device_map: Any) -> bool:
    """Whether ``device_map`` asks for placement across modules (a strategy name or a dict),
    rather than naming one device."""
    if isinstance(device_map, str):
        return device_map in _AUTO
    return isinstance(device_map, Mapping)


def single_device(device_map: Union[str, int, torch.device]) -> Union[str, int, torch.device]:
    """A ``device_map`` naming one device, checked (``"cuda:0"``, ``0``, ``"cpu"``...)."""
    if isinstance(device_map, (int, torch.device)):
        return device_map
    try:
        torch.device(device_map)
    except (RuntimeError, TypeError):
        raise ArgumentError(f"device_map={device_map!r}: expected one of {_AUTO}, a {{module: device}} dict, "
                            "or a single device (\"cuda:0\", 0, \"cpu\")") from None
    return device_map


def from_pretrained_placed(path: Union[str, os.PathLike], device_map: DeviceMap,
                           max_memory: Optional[Mapping] = None, **kwargs: Any) -> nn.Module:
    """``motensor.from_pretrained`` onto the CPU, then :func:`dispatch` by ``device_map``."""
    from motensor.models.pretrained import from_pretrained

    model = from_pretrained(path, device="cpu", **kwargs)
    return dispatch(model, device_map, max_memory)


def dispatch(model: nn.Module, device_map: DeviceMap = "auto", max_memory: Optional[Mapping] = None) -> nn.Module:
    """Places ``model`` (a motensor model on the CPU) by ``device_map`` with ``accelerate`` and
    returns it; ``model.hf_device_map`` records the placement."""
    try:
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import check_device_map, get_balanced_memory
    except ImportError as e:  # pragma: no cover - accelerate is in the pinned test environment
        raise ArgumentError("device_map across devices needs `accelerate` (pip install accelerate)") from e

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if isinstance(device_map, str):
        if device_map not in _AUTO:
            raise ArgumentError(f"device_map={device_map!r}: expected one of {_AUTO}, a {{module: device}} dict, "
                                "or a single device")
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, max_memory=dict(max_memory) if max_memory else None,
                                             no_split_module_classes=no_split,
                                             low_zero=device_map == "balanced_low_0")
        placement = infer_auto_device_map(model, max_memory=dict(max_memory) if max_memory else None,
                                          no_split_module_classes=no_split)
    else:
        placement = {name: _device_name(dev) for name, dev in device_map.items()}
        modules = dict(model.named_modules())
        unknown = sorted(n for n in placement if n not in modules)
        if unknown:
            raise ArgumentError(f"device_map names module(s) {unknown[:5]} that {type(model).__name__} does not have")
        check_device_map(model, placement)
    if "disk" in placement.values():
        raise ArgumentError(f"device_map places {sorted(n for n, d in placement.items() if d == 'disk')[:5]} on "
                            "'disk'; motensor does not offload to disk (give those modules a device or more max_memory)")
    for name, dev in placement.items():
        if isinstance(dev, int) or str(dev).startswith("cuda"):
            if not torch.cuda.is_available():
                raise ArgumentError(f"device_map puts {name or 'the model'} on {dev!r}, but torch sees no CUDA GPU")
    devices = set(placement.values())
    # CPU entries run on the CPU (motensor's CPU path) rather than being streamed to a GPU.
    main = "cpu" if "cpu" in devices else None
    model = dispatch_model(model, device_map=placement, main_device=main)
    model.hf_device_map = placement
    log.info("placed %s over %s", type(model).__name__, sorted(map(str, devices)))
    return model


def _device_name(dev: Union[str, int, torch.device]) -> Union[str, int]:
    if isinstance(dev, torch.device):
        return dev.index if dev.type == "cuda" and dev.index is not None else str(dev)
    return dev
