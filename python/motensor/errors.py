"""The motensor exception hierarchy.

Every error raised while reading a checkpoint is a :class:`MotensorError`; the subclass says what
kind of problem it is, and the instance carries ``file``, ``tensor`` and ``module`` attributes
(``None`` where not applicable) so callers can report exactly where a checkpoint is broken::

    MotensorError
    ├── HeaderError             invalid safetensors header (length, JSON, dtype, shape, offsets)
    ├── ShardError              missing / unreadable / truncated shard, index disagreement
    ├── ConfigError             invalid config.json, hf_quant_config.json or index JSON
    ├── FormatError             tensors that do not match their quantization format
    │   └── UnsupportedFormatError   unknown or refused quant_algo
    └── ArgumentError           inconsistent arguments (buffer sizes, unknown module names)

The classes are defined in the Rust extension (so Rust can raise them) and re-exported here.
"""
from motensor._core import (
    ArgumentError,
    ConfigError,
    FormatError,
    HeaderError,
    MotensorError,
    ShardError,
    UnsupportedFormatError,
)

__all__ = [
    "MotensorError",
    "HeaderError",
    "ShardError",
    "ConfigError",
    "FormatError",
    "UnsupportedFormatError",
    "ArgumentError",
]

# Errors raised without a location (bad arguments, formats refused by name) still answer
# `.file` / `.tensor` / `.module`, so handlers can read them unconditionally.
for _cls in (MotensorError,):
    for _attr in ("file", "tensor", "module"):
        setattr(_cls, _attr, None)
del _cls, _attr
