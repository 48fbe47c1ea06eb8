"""motensor: NVIDIA ModelOpt-quantized Hugging Face checkpoints on the GPU, fast, in plain PyTorch.

Data flow (one subpackage per step)::

    files -> headers/metadata      motensor.open            (Rust core: mmap, validation, formats)
          -> pinned staging        motensor.load            (Rust fills pinned buffers, async H2D)
          -> device tensors        motensor.LoadedCheckpoint
          -> quantized modules     motensor.nn, motensor.replace_linears
          -> models                motensor.from_pretrained
"""
from __future__ import annotations

from motensor import _core
from motensor.checkpoint import Checkpoint, ModuleInfo, QuantConfig, TensorInfo, open
from motensor.errors import (
    ArgumentError,
    ConfigError,
    FormatError,
    HeaderError,
    MotensorError,
    ShardError,
    UnsupportedFormatError,
)
from motensor.formats import FORMAT_NAMES, FormatSpec, all_formats, get_format

__version__ = _core.__version__

__all__ = [
    "__version__",
    "open",
    "Checkpoint",
    "ModuleInfo",
    "QuantConfig",
    "TensorInfo",
    "FormatSpec",
    "FORMAT_NAMES",
    "all_formats",
    "get_format",
    "MotensorError",
    "HeaderError",
    "ShardError",
    "ConfigError",
    "FormatError",
    "UnsupportedFormatError",
    "ArgumentError",
]
