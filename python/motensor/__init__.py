"""motensor: NVIDIA ModelOpt-quantized Hugging Face checkpoints on the GPU, fast, in plain PyTorch.

Data flow (one subpackage per step)::

    files -> headers/metadata      motensor.open            (Rust core: pread, validation, formats)
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

# Heavier parts (the loader, nn modules with their kernels, transformers integration) are
# imported on first use, so `import motensor` stays cheap for inspecting checkpoints.
_LAZY = {
    "load": "motensor.loading",
    "LoadedCheckpoint": "motensor.loading",
    "LoadedModule": "motensor.loading",
    "replace_linears": "motensor.nn",
    "QuantLinear": "motensor.nn",
    "from_pretrained": "motensor.models",
    "load_tokenizer": "motensor.models",
    "ModelOptConfig": "motensor.integrations.hf_quantizer",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'motensor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

# transformers' quantizer for quant_method "modelopt": AutoModelForCausalLM.from_pretrained on
# ModelOpt checkpoints goes through motensor (motensor/integrations/hf_quantizer.py).
from motensor.integrations import register_transformers as _register_transformers  # noqa: E402

_register_transformers()

__all__ = [
    "__version__",
    "ModelOptConfig",
    "load",
    "LoadedCheckpoint",
    "LoadedModule",
    "replace_linears",
    "QuantLinear",
    "from_pretrained",
    "load_tokenizer",
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
