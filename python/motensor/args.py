"""Arguments as transformers users pass them: ``dtype`` / ``torch_dtype``, ``device``, ``device_map``.

One place turns what a user may write (``torch.float16``, ``"float16"``, ``"auto"``, ``"cuda:1"``,
``0``, ``{"": "cpu"}``...) into what motensor's loader takes (a ``torch.dtype``, one
``torch.device``), so that ``motensor.from_pretrained``, the transformers quantizer
(``AutoModelForCausalLM.from_pretrained``) and the CLI accept the same things and refuse the same
things with the same :class:`~motensor.errors.ArgumentError`.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Union

import torch

from motensor.errors import ArgumentError

log = logging.getLogger("motensor")

#: The dtypes activations and unquantized weights can take, by every name a user may write.
DTYPE_NAMES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
#: What ``"auto"`` means when the checkpoint names no dtype (ModelOpt exports are bf16).
FALLBACK_DTYPE = torch.bfloat16

DtypeLike = Union[str, torch.dtype, None]
DeviceLike = Union[str, int, torch.device]
DeviceMapLike = Union[str, int, torch.device, Mapping[str, Any], None]


def resolve_dtype(dtype: DtypeLike = "auto", torch_dtype: DtypeLike = None,
                  config: Optional[Mapping[str, Any]] = None) -> torch.dtype:
    """``dtype`` (or its older name ``torch_dtype``) as a ``torch.dtype``.

    Accepts a ``torch.dtype``, a name (``"bfloat16"``, ``"float16"``, ``"torch.float16"``, ``"bf16"``...)
    or ``"auto"`` / ``None`` = the checkpoint's (``config.json``'s ``dtype`` / ``torch_dtype``,
    else bfloat16). Anything else raises :class:`ArgumentError` listing the choices.
    """
    if torch_dtype is not None:
        if dtype not in (None, "auto") and _as_dtype(dtype) != _as_dtype(torch_dtype):
            raise ArgumentError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them")
        dtype = torch_dtype
    if dtype is None or dtype == "auto":
        named = None
        if config:
            named = config.get("dtype") or config.get("torch_dtype")
            text = config.get("text_config")
            if named is None and isinstance(text, Mapping):
                named = text.get("dtype") or text.get("torch_dtype")
        if named is None:
            return FALLBACK_DTYPE
        try:
            return _as_dtype(named)
        except ArgumentError:
            log.warning("config.json names dtype %r, which motensor does not run in; using %s", named, FALLBACK_DTYPE)
            return FALLBACK_DTYPE
    return _as_dtype(dtype)


def _as_dtype(value: Any) -> torch.dtype:
    choices = sorted({str(d).removeprefix("torch.") for d in DTYPE_NAMES.values()})
    if isinstance(value, torch.dtype):
        if value in DTYPE_NAMES.values():
            return value
        raise ArgumentError(f"dtype {value} is not one motensor runs in; choose one of {choices} or 'auto'")
    if isinstance(value, str):
        key = value.lower().removeprefix("torch.")
        if key in DTYPE_NAMES:
            return DTYPE_NAMES[key]
    raise ArgumentError(
        f"unknown dtype {value!r}: choose one of {choices} (as a torch.dtype or a string, aliases "
        f"{sorted(k for k in DTYPE_NAMES if k not in choices)}) or 'auto' (the checkpoint's)"
    )


def default_device() -> torch.device:
    """CUDA if torch sees a GPU, else the CPU (logged, so that a slow CPU run is not a surprise)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    log.info("no CUDA GPU visible to torch: loading onto the CPU")
    return torch.device("cpu")


def resolve_device(device: Optional[DeviceLike] = None, device_map: DeviceMapLike = None) -> torch.device:
    """The one device a model goes to, from ``device`` and/or ``device_map``.

    ``device_map`` takes transformers' forms: ``"auto"`` (the default device), a device (``"cuda:1"``,
    ``1``, ``torch.device``) or a dict of module name -> device. Everything here lands on ONE device;
    a dict naming several devices (multi-GPU, CPU/disk offload) raises :class:`ArgumentError`.
    (The multi-device issue extends :func:`parse_device_map`, not its callers.)
    """
    placement = parse_device_map(device_map)
    if device is not None:
        dev = _as_device(device)
        if placement is not None and placement != dev:
            raise ArgumentError(f"device={str(device)!r} and device_map={device_map!r} disagree; pass one of them")
        return dev
    return placement if placement is not None else default_device()


def parse_device_map(device_map: DeviceMapLike) -> Optional[torch.device]:
    """``device_map`` -> the one device it places the whole model on (``None``: not given)."""
    if device_map is None:
        return None
    if isinstance(device_map, str) and device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return default_device()
    if isinstance(device_map, Mapping):
        devices = {_as_device(v) for v in device_map.values()} if device_map else set()
        if len(devices) != 1:
            raise ArgumentError(
                f"device_map {dict(device_map)!r} places the model on {len(devices)} devices; motensor loads onto one "
                "device (pass a single device, or a dict whose values all name the same device)"
            )
        return devices.pop()
    return _as_device(device_map)


def _as_device(device: Any) -> torch.device:
    if isinstance(device, str) and device in ("disk", "meta"):
        raise ArgumentError(f"device {device!r}: motensor loads tensors onto a CPU or a GPU")
    try:
        dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, TypeError):
        raise ArgumentError(
            f"unknown device {device!r}: pass 'cpu', 'cuda', 'cuda:N', a GPU index, a torch.device or 'auto'"
        ) from None
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev
