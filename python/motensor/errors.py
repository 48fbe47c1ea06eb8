"""The motensor exception hierarchy.

Every error motensor raises about a checkpoint or an argument is a :class:`MotensorError`; the
subclass says what kind of problem it is, and the instance carries ``file``, ``tensor`` and
``module`` attributes (``None`` where not applicable) so callers can report exactly where a
checkpoint is broken::

    MotensorError
    ├── HeaderError             invalid safetensors header (length, JSON, dtype, shape, offsets)  + ValueError
    ├── ShardError              missing / unreadable / truncated shard, index disagreement        + OSError
    ├── ConfigError             invalid config.json, hf_quant_config.json or index JSON           + ValueError
    │   └── UnsupportedArchitectureError   config.json names an architecture motensor does not build
    ├── FormatError             tensors that do not match their format, poisoned scales          + ValueError
    │   └── UnsupportedFormatError   unknown or refused quant_algo
    └── ArgumentError           inconsistent arguments (device, dtype, buffer sizes, names)       + ValueError

Each class also derives from the built-in exception Python code would catch for that kind of
problem (``except OSError`` catches a vanished or truncated shard, ``except ValueError`` bad
data or a bad argument). The classes live here, in Python, and the Rust extension raises these
very classes, so tracebacks print ``motensor.errors.ShardError``.
"""
from __future__ import annotations

import os
from typing import Optional

__all__ = [
    "MotensorError",
    "HeaderError",
    "ShardError",
    "ConfigError",
    "FormatError",
    "UnsupportedFormatError",
    "ArgumentError",
    "UnsupportedArchitectureError",
]


class MotensorError(Exception):
    """Base class of every motensor error.

    Attributes:
        file: the file the problem is in (``None`` if none, e.g. a bad argument).
        tensor: the tensor concerned, if any.
        module: the quantized (or attention) module concerned, if any.
    """

    file: Optional[str] = None
    tensor: Optional[str] = None
    module: Optional[str] = None

    def __init__(self, message: str = "", *, file: "str | os.PathLike[str] | None" = None,
                 tensor: Optional[str] = None, module: Optional[str] = None):
        super().__init__(message)
        self.file = None if file is None else os.fspath(file)
        self.tensor = tensor
        self.module = module


class HeaderError(MotensorError, ValueError):
    """A safetensors header is invalid (length, JSON, dtype, shape or offsets), or the file is
    not a safetensors file at all."""


class ShardError(MotensorError, OSError):
    """A shard is missing, unreadable, inconsistent with the index, or was truncated."""


class ConfigError(MotensorError, ValueError):
    """config.json / hf_quant_config.json / the index JSON is invalid, too large or inconsistent."""


class FormatError(MotensorError, ValueError):
    """A module's tensors do not match its quantization format, or a scale is poisoned
    (NaN / Inf / negative, or a non-positive per-tensor scale)."""


class UnsupportedFormatError(FormatError):
    """A quant_algo motensor does not know or cannot load."""


class ArgumentError(MotensorError, ValueError):
    """An argument is invalid or inconsistent with the checkpoint (device, dtype, buffer, name)."""



class UnsupportedArchitectureError(ConfigError):
    """The checkpoint's ``config.json`` names an architecture motensor does not build."""
