"""safetensors dtype names <-> torch dtypes."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from motensor.errors import ArgumentError, FormatError

if TYPE_CHECKING:  # torch is imported on first use (``import motensor`` stays torch-free)
    import torch


@functools.lru_cache(maxsize=None)
def _by_name() -> dict[str, torch.dtype]:
    import torch

    return {
        "BOOL": torch.bool,
        "U8": torch.uint8,
        "I8": torch.int8,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
        # E8M0 exponents travel as raw bytes: motensor's kernels decode them.
        "F8_E8M0": torch.uint8,
        "I16": torch.int16,
        "U16": torch.uint16,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I32": torch.int32,
        "U32": torch.uint32,
        "F32": torch.float32,
        "I64": torch.int64,
        "U64": torch.uint64,
        "F64": torch.float64,
        "C64": torch.complex64,
    }


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a safetensors dtype name (``"BF16"`` -> ``torch.bfloat16``)."""
    try:
        return _by_name()[name]
    except KeyError:
        raise FormatError(f"no torch dtype for safetensors dtype {name!r}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The name ``Checkpoint.dequantize`` and the Rust core use for an output float dtype."""
    import torch

    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    try:
        return names[dtype]
    except KeyError:
        raise ArgumentError(f"dequantization writes float32, bfloat16 or float16, not {dtype}") from None
